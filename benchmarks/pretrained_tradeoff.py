"""Accuracy against resolution, training minutes and serving speed for the pretrained fine-tunes.

    .venv/bin/python benchmarks/pretrained_tradeoff.py ~/cifar-runs/lite0_96 ~/cifar-runs/lite0_64 \\
        --data ../shared/data/cifar10-jpeg.tar.gz

For each finished run (a ``training.run`` output folder): its model's input resolution, epochs and training
minutes, the test accuracy after each epoch (the curve, from ``metrics.jsonl``), and the final model exported
to ONNX both without and with the recipe's test-time augmentation, each with its int8 copy
(``export.quantize``): accuracy on all 10,000 test images from the ONNX file and single-image speed on one
onnxruntime thread (how the service answers a lone request), i.e. the two axes the default model is chosen
on. Writes ``benchmarks/results/pretrained_tradeoff.json`` and ``.png`` (accuracy against training minutes
per run, and accuracy against single-image speed per exported file).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from common.files import write_json  # noqa: E402
from common.machine import cpu_name  # noqa: E402
from export import ExportError  # noqa: E402
from export.onnx import export_checkpoint  # noqa: E402
from export.quantize import quantize_model  # noqa: E402
from training.checkpoint import CheckpointError, load_checkpoint, recipe_tta  # noqa: E402
from training.data import DataError, load_cifar10  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "pretrained_tradeoff.json"


def run_curve(metrics: list[dict]) -> list[dict]:
    """Test accuracy after each epoch against the training minutes spent so far."""
    curve, seconds = [], 0.0
    for row in metrics:
        seconds += row.get("epoch_seconds", 0.0)
        point = {"epoch": row["epoch"], "minutes": round(seconds / 60, 1), "test_acc": round(row["test_acc"], 4)}
        if "test_acc_tta" in row:
            point["test_acc_tta"] = round(row["test_acc_tta"], 4)
        curve.append(point)
    return curve


def measure_run(run: Path, data: str, work: Path) -> dict:
    last = load_checkpoint(run / "last.pt")
    if last["epoch"] != last["epochs"]:
        raise CheckpointError(f"{run} is not finished ({last['epoch']} of {last['epochs']} epochs): "
                              "a partly trained model is not a trade-off point")
    best = run / "best.pt"
    cifar = load_cifar10(data)
    exports = []
    for tta in dict.fromkeys(("none", recipe_tta(last))):
        onnx_path = work / f"{run.name}-{tta}.onnx"
        export_checkpoint(best, onnx_path, data=data, tta=tta, log=lambda _: None)
        figures = quantize_model(onnx_path, cifar, max_drop=100.0, log=lambda _: None)
        exports.append({
            "tta": tta,
            "fp32": {"test_accuracy": round(figures["fp32_accuracy"], 4),
                     "single_images_per_s": figures["fp32_single_images_per_second"],
                     "batched_images_per_s": figures["fp32_images_per_second"]},
            "int8": {"test_accuracy": round(figures["int8_accuracy"], 4),
                     "single_images_per_s": figures["int8_single_images_per_second"],
                     "batched_images_per_s": figures["int8_images_per_second"]},
        })
    kwargs = last.get("model_kwargs", {})
    return {
        "run": run.name, "arch": last["arch"], "resolution": kwargs.get("resolution"),
        "frozen_blocks": kwargs.get("frozen_blocks", 0), "recipe_name": last.get("args", {}).get("recipe_name"),
        "pretrained": last.get("args", {}).get("pretrained"),
        "precision": last.get("args", {}).get("precision"), "threads": last.get("args", {}).get("threads"),
        "epochs": last["epoch"], "train_minutes": run_curve(last["metrics"])[-1]["minutes"],
        "command": last.get("args", {}).get("command"),
        "curve": run_curve(last["metrics"]), "exports": exports,
    }


def plot(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    for r in results:
        label = f"{r['arch']} {r['resolution']} px"
        left.plot([p["minutes"] for p in r["curve"]], [100 * p["test_acc"] for p in r["curve"]], marker="o",
                  label=label)
        for e in r["exports"]:
            for kind, marker in (("fp32", "o"), ("int8", "s")):
                f = e[kind]
                right.scatter(f["single_images_per_s"], 100 * f["test_accuracy"], marker=marker)
                right.annotate(f"{r['resolution']} px {kind}{'' if e['tta'] == 'none' else ' +' + e['tta']}",
                               (f["single_images_per_s"], 100 * f["test_accuracy"]), fontsize=7,
                               textcoords="offset points", xytext=(4, 2))
    left.set(xlabel="training minutes (2 CPU threads)", ylabel="test accuracy, % (no TTA)",
             title="accuracy against training time")
    left.legend(fontsize=8)
    left.grid(alpha=0.3)
    right.set(xlabel="single images/s, one onnxruntime thread", ylabel="test accuracy, % (ONNX file)",
              title="accuracy against serving speed")
    right.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("runs", nargs="+", type=Path, help="finished training.run output folders")
    p.add_argument("--data", default=os.environ.get("CIFAR10_DATA", "../shared/data/cifar10-jpeg.tar.gz"))
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    results = []
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for run in args.runs:
                results.append(measure_run(run, args.data, Path(tmp)))
                print(json.dumps({k: results[-1][k] for k in ("run", "resolution", "epochs", "train_minutes")}
                                 | {"exports": results[-1]["exports"]}), flush=True)
    except (CheckpointError, DataError, ExportError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    import onnxruntime

    write_json(args.out, {
        "command": "python benchmarks/pretrained_tradeoff.py " + shlex.join(sys.argv[1:] if argv is None else argv),
        "date": datetime.now(UTC).date().isoformat(), "cpu": cpu_name(),
        "cpu_count": os.cpu_count(), "onnxruntime": onnxruntime.__version__,
        "dataset": "CIFAR-10, JPEG-q75 copy, all 10,000 test images", "runs": results})
    plot(results, args.out.with_suffix(".png"))
    print(f"wrote {args.out} and {args.out.with_suffix('.png')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
