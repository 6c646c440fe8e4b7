"""Evaluate a checkpoint on the CIFAR-10 test split: ``python -m training.evaluate CKPT --data PATH``.

Prints test accuracy, per-class accuracy and the confusion matrix (rows: true class, columns:
predicted); ``--json FILE`` also writes them, ``--plot FILE`` draws the confusion matrix.
``--tta flip|flip_translate`` averages the logits over test-time views (``training.tta``: the mirror,
or the mirror and airbench's 1-pixel translations); evaluation is fp32 either way.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn as nn

from common.files import write_json
from common.paths import repo_relative
from training.checkpoint import CheckpointError, load_checkpoint, model_from_checkpoint, recipe_tta
from training.data import DataError, DeviceLoader, load_cifar10
from training.engine import classification_metrics
from training.tta import TTA_MODES, check_tta, with_tta


def per_class_accuracy(confusion: list[list[int]], classes) -> dict[str, float]:
    return {c: row[i] / max(sum(row), 1) for i, (c, row) in enumerate(zip(classes, confusion, strict=True))}


def evaluate_checkpoint(ckpt_path: str | Path, data: str | None, device: str = "cpu",
                        limit: int | None = None, batch_size: int = 500, tta: str | None = None) -> dict:
    """``tta`` None: the checkpoint's recipe's test-time augmentation, as its ONNX export runs it."""
    ckpt = load_checkpoint(ckpt_path)
    if tta is None:
        tta = recipe_tta(ckpt)
    model = with_tta(model_from_checkpoint(ckpt), tta).to(device)
    cifar = load_cifar10(data)
    images, labels = cifar.test_images[:limit], cifar.test_labels[:limit]
    loader = DeviceLoader(images, labels, batch_size, torch.device(device), ckpt["mean"], ckpt["std"])
    result = classification_metrics(model, loader, nn.CrossEntropyLoss(), torch.device(device))
    classes = tuple(ckpt["classes"])
    return {
        "checkpoint": repo_relative(ckpt_path), "arch": ckpt["arch"], "epoch": ckpt["epoch"], "images": len(labels),
        "tta": tta,
        "test_accuracy": result["acc"], "test_loss": result["loss"],
        "per_class_accuracy": per_class_accuracy(result["confusion"], classes),
        "confusion": result["confusion"], "classes": list(classes),
    }


def format_report(r: dict) -> str:
    tta = f", TTA {r['tta']}" if r.get("tta", "none") != "none" else ""
    lines = [f"{r['arch']} (epoch {r['epoch']}{tta}) on {r['images']:,} test images: "
             f"accuracy {r['test_accuracy']:.4f}, loss {r['test_loss']:.4f}", "per-class accuracy:"]
    lines += [f"  {c:<11}{a:.4f}" for c, a in r["per_class_accuracy"].items()]
    width = max(len(c) for c in r["classes"])
    lines.append("confusion (rows true, columns predicted): " + " ".join(c[:4] for c in r["classes"]))
    for c, row in zip(r["classes"], r["confusion"], strict=True):
        lines.append(f"  {c:<{width}} " + " ".join(f"{v:>4}" for v in row))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m training.evaluate", description=__doc__.split("\n\n")[0])
    p.add_argument("checkpoint")
    p.add_argument("--data", help="CIFAR-10 source (default: $CIFAR10_DATA)")
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    p.add_argument("--limit", type=int, help="first N test images only")
    p.add_argument("--json", help="also write the results as JSON here")
    p.add_argument("--plot", help="also draw the confusion matrix as PNG here")
    p.add_argument("--tta", metavar="{" + ",".join(TTA_MODES) + "}",
                   help="test-time augmentation: none, flip (image + mirror), flip_translate (airbench's six "
                        "views: mirror and 1-pixel translations); default: the recipe's, as the export runs it")
    args = p.parse_args(argv)
    try:
        if args.tta is not None:
            check_tta(args.tta, "--tta")
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        if args.device == "cuda" and not torch.cuda.is_available():
            raise DataError("--device cuda asked for, but no CUDA device is available")
        report = evaluate_checkpoint(args.checkpoint, args.data, args.device, args.limit, tta=args.tta)
    except (CheckpointError, DataError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(format_report(report))
    if args.json:
        write_json(args.json, report, sort_keys=False)
    if args.plot:
        from training.plots import plot_confusion

        plot_confusion(report["confusion"], tuple(report["classes"]), Path(args.plot),
                       f"{report['arch']}: test confusion")
    return 0


if __name__ == "__main__":
    sys.exit(main())
