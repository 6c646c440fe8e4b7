"""``python -m export.onnx CKPT``: a checkpoint -> a self-describing ONNX model, kept only if parity holds.

    python -m export.onnx runs/tutorial/best.pt                    # -> weights/tutorial.onnx
    python -m export.onnx CKPT --out weights/x.onnx --data cifar10-jpeg.tar.gz --int8 --triton-repo triton/
    python -m export.onnx CKPT --tta flip_translate                # test-time augmentation inside the graph

Steps: load the checkpoint; trace model + preprocessing into a graph (``export.graph``); check it;
measure parity against PyTorch on real test images (all 10,000 by default) or, without data, random
images, plus edge inputs (``export.parity``); store the description and the parity figures in the
model's metadata (``export.metadata``); write the file atomically. The model never reaches the output
path if any step fails. The parity report is written beside the model as ``NAME.parity.json``.

``--tta flip|flip_translate`` (``training.tta``) puts test-time augmentation into the graph, after
the preprocessing and before the softmax: ``logits`` are the views' weighted average and
``probabilities`` their softmax, so every consumer of the file gets it without code of its own.
Parity is then measured against the same ``TTA`` module in PyTorch, and the mode is stored in the
metadata key ``tta`` (and the parity report). Without ``--tta`` the checkpoint's recipe decides
(its ``tta`` key, if it has one), else ``none``: the graph, metadata and report are then exactly
what they were before TTA existed (no ``tta`` key).

Exit status: 0 ok, 1 parity failed, 2 bad input (unreadable checkpoint, data or arguments).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import onnx
import torch

import training.tta
from common.contract import INT8_MAX_DROP_POINTS, NO_TTA
from common.files import file_sha256, write_bytes, write_json
from export import ExportError, ParityError
from export.graph import DEFAULT_OPSET, check_graph, export_graph
from export.metadata import build_metadata, set_metadata
from export.parity import MAX_PROB_DIFF, MIN_TOP1_AGREEMENT, measure_parity, summary
from export.sample_images import Data, first_test_images, load_data, random_images
from training.checkpoint import CheckpointError, load_checkpoint, model_from_checkpoint, recipe_tta
from training.data import DataError
from training.tta import TTA_MODES, with_tta

RANDOM_PARITY_IMAGES = 1000  # without data: enough random batches to exercise every path, seconds to run
NO_DATA_MESSAGE = ("no CIFAR-10 data (pass --data PATH or set CIFAR10_DATA): "
                   "parity is checked on random images and edge inputs only")


def default_out_path(name: str) -> Path:
    return Path("weights") / f"{name}.onnx"


def report_path(out_path: str | os.PathLike, suffix: str = ".parity.json") -> Path:
    """``weights/x.onnx`` -> ``weights/x.parity.json``."""
    out_path = Path(out_path)
    return out_path.with_name(out_path.name.removesuffix(".onnx") + suffix)


def export_checkpoint(ckpt_path: str | os.PathLike, out_path: str | os.PathLike | None = None, *,
                      opset: int | None = None, parity_images: int | None = None,
                      data: Data = None, max_prob_diff: float = MAX_PROB_DIFF,
                      min_top1_agreement: float = MIN_TOP1_AGREEMENT, int8: bool = False,
                      int8_max_drop: float = INT8_MAX_DROP_POINTS, calibration_images: int = 512,
                      triton_repo: str | os.PathLike | None = None, triton_max_batch: int = 256,
                      tta: str | None = None, log: Callable[[str], None] = print) -> dict:
    """Export ``ckpt_path`` to ``out_path`` (default ``weights/<arch>.onnx``); return the parity report.

    ``parity_images``: how many test images (default all) or, without data, random images (default
    1000) to compare on. ``data``: CIFAR-10 (loaded, or its source), default ``$CIFAR10_DATA``. ``int8``: also write a
    statically quantized ``NAME.int8.onnx``, kept if its accuracy drop is at most ``int8_max_drop``
    points. ``triton_repo``: also write a Triton model repository there. ``tta``: test-time
    augmentation mode put into the graph (``training.tta.TTA_MODES``); None: the checkpoint recipe's
    ``tta`` if present, else "none".

    Raises ``CheckpointError`` / ``DataError`` / ``ExportError`` (bad input; messages are for the
    user as is) and ``ParityError`` (parity failed; nothing is written at ``out_path``).
    """
    if tta is not None:
        check_tta(tta)
    ckpt = load_checkpoint(ckpt_path)
    tta = check_tta(recipe_tta(ckpt)) if tta is None else tta
    model = with_tta(model_from_checkpoint(ckpt), tta)
    out_path = Path(out_path) if out_path else default_out_path(ckpt["arch"])
    opset = DEFAULT_OPSET if opset is None else opset
    if parity_images is not None and parity_images < 1:
        raise ExportError("--parity-images must be at least 1")

    cifar = load_data(data)
    if cifar is None:
        if int8:
            raise ExportError("--int8 needs CIFAR-10 data for calibration and scoring: pass --data PATH")
        log(NO_DATA_MESSAGE)
        images, labels, source = random_images(parity_images or RANDOM_PARITY_IMAGES), None, "random"
    else:
        (images, labels), source = first_test_images(cifar, parity_images), "cifar10-test"

    proto = export_graph(model, ckpt["mean"], ckpt["std"], opset, fp16_weights=stores_fp16(ckpt))
    check_graph(proto)
    measured = proto.SerializeToString()
    parity = measure_parity(model, ckpt["mean"], ckpt["std"], measured, images, labels, source=source,
                            max_prob_diff=max_prob_diff, min_top1_agreement=min_top1_agreement,
                            classes=None if cifar is None else cifar.classes)
    report = {"arch": ckpt["arch"], "checkpoint": str(ckpt_path), "model": str(out_path),
              "source_checkpoint_sha256": file_sha256(ckpt_path), "opset": opset,
              **({"tta": tta} if tta != NO_TTA else {}), **parity}
    if not parity["passed"]:
        failed = report_path(out_path, ".parity-failed.json")
        write_json(failed, report)
        raise ParityError(f"{summary(parity)}; {out_path} not written, figures in {failed}", report)

    set_metadata(proto, build_metadata(
        ckpt, sha256=report["source_checkpoint_sha256"], opset=opset, parity=parity,
        exported_at=datetime.now(UTC).isoformat(timespec="seconds"), torch_version=str(torch.__version__),
        tta=tta))
    final = proto.SerializeToString()
    # What is written must be what was measured plus metadata, nothing else: compare the graphs as stored.
    if onnx.load_from_string(final).graph != onnx.load_from_string(measured).graph:
        raise ExportError("internal error: the graph changed after the parity check")
    write_bytes(out_path, final)
    write_json(report_path(out_path), report)
    report_path(out_path, ".parity-failed.json").unlink(missing_ok=True)  # an earlier failure is now moot
    log(f"{summary(parity)} -> {out_path}")

    if int8:
        from export.quantize import quantize_model

        report["int8"] = quantize_model(out_path, cifar, calibration_images=calibration_images,
                                        test_images=parity_images, max_drop=int8_max_drop, log=log,
                                        fp32_accuracy=parity["cases"]["images"]["accuracy_onnxruntime"])
    if triton_repo:
        from export.triton import write_triton_repository

        report["triton"] = str(write_triton_repository(triton_repo, out_path, max_batch_size=triton_max_batch))
        log(f"triton model repository entry -> {report['triton']}")
    if int8 or triton_repo:
        write_json(report_path(out_path), report)
    return report


def stores_fp16(ckpt) -> bool:
    """Whether the checkpoint's weights are fp16 (an ensemble's): its ONNX file then stores them so too."""
    return any(v.dtype == torch.float16 for v in ckpt["state_dict"].values())


def check_tta(mode: str) -> str:
    try:
        return training.tta.check_tta(mode, "--tta")
    except ValueError as exc:
        raise ExportError(str(exc)) from None


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m export.onnx",
                                description="Export a checkpoint to a self-describing ONNX model with verified parity.")
    p.add_argument("checkpoint", help="checkpoint file written by training (e.g. runs/NAME/best.pt)")
    p.add_argument("--out", help="output .onnx path (default weights/<arch>.onnx)")
    p.add_argument("--opset", type=int, default=DEFAULT_OPSET, help=f"ONNX opset (default {DEFAULT_OPSET})")
    p.add_argument("--parity-images", type=int, help="test images to compare on (default: all 10,000; "
                                                     f"without data: {RANDOM_PARITY_IMAGES} random images)")
    p.add_argument("--data", help="CIFAR-10 source (default $CIFAR10_DATA; without any: random-input parity only)")
    p.add_argument("--max-prob-diff", type=float, default=MAX_PROB_DIFF,
                   help=f"largest allowed |diff| of probabilities (default {MAX_PROB_DIFF:g})")
    p.add_argument("--min-top1-agreement", type=float, default=MIN_TOP1_AGREEMENT,
                   help="smallest allowed share of images with the same top-1 class (default 1.0)")
    p.add_argument("--int8", action="store_true",
                   help="also write NAME.int8.onnx (static quantization), kept if accuracy drops <= 0.3 points")
    p.add_argument("--calibration-images", type=int, default=512, help="training images for int8 calibration")
    p.add_argument("--triton-repo", help="also write a Triton/KServe model repository entry under this folder")
    p.add_argument("--triton-max-batch", type=int, default=256, help="max_batch_size in config.pbtxt")
    p.add_argument("--tta", metavar="{" + ",".join(TTA_MODES) + "}",
                   help="test-time augmentation inside the graph: averaged logits over the mirror (flip) or the "
                        "mirror and 1-pixel translations (flip_translate); default: the checkpoint recipe's "
                        "'tta' if any, else none")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    try:
        args = parse_args(argv)
    except SystemExit as exc:  # argparse has printed its usage error
        return int(exc.code or 0)
    try:
        export_checkpoint(args.checkpoint, args.out, opset=args.opset, parity_images=args.parity_images,
                          data=args.data, max_prob_diff=args.max_prob_diff,
                          min_top1_agreement=args.min_top1_agreement, int8=args.int8,
                          calibration_images=args.calibration_images, triton_repo=args.triton_repo,
                          triton_max_batch=args.triton_max_batch, tta=args.tta)
    except ParityError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except (CheckpointError, DataError, ExportError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # unwritable output folder, full disk
        print(f"error: {exc.strerror or exc}" + (f": {exc.filename}" if exc.filename else ""), file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
