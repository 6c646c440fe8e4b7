"""``python -m export.package RUN[:NAME] ... --data PATH``: trained runs -> the service's ``weights/``.

Each RUN (a training output folder, whose ``best.pt`` is taken, or a checkpoint file) ships under a
NAME: the model's name in the service (its file names) and its key in the manifest. NAME defaults to
the run's architecture; ``RUN:NAME`` gives another, so that two recipes of one network ship side by
side instead of the second overwriting the first::

    python -m export.package .runs/dwsep_onecycle_full .runs/dwsep_step:dwsep_step --data $D

A NAME is letters, digits, ``_`` and ``-``; the text after a RUN's last ``:`` is taken as its NAME
when it is one, so a run path that itself contains ``:`` is given with a NAME. Two runs of one
invocation cannot share a NAME. For each run:

1. ``weights/<NAME>.pt``: the checkpoint without optimizer, scheduler and RNG state (fp32 weights,
   metadata, metrics), loadable with ``torch.load(..., weights_only=True)``;
2. ``weights/<NAME>.onnx``: exported from that file with ``export.onnx`` (parity on all test images),
   with test-time augmentation inside the graph if ``--tta`` (all runs given) or the run's recipe
   (its ``tta`` key) asks for it, else none;
3. test accuracy and per-class accuracy of the ONNX file on the whole test split (measured once, by the
   parity check of step 2, and handed on to step 4), and its CPU throughput with onnxruntime, measured as
   every speed figure is (``common.contract.THROUGHPUT_IMAGES``); the data set is read once per run;
4. ``weights/<NAME>.int8.onnx``: its static int8 copy (``export.quantize``), kept only where the service
   would serve it (``common.contract.int8_preferred``: at most 0.3 points lost on all test images, faster
   one image at a time); its figures go in the entry's ``int8`` either way. ``--requantize NAME...``
   redoes only this step for models already in ``weights/``;
5. the entry ``NAME`` in ``weights/MANIFEST.json``, which records the run's architecture (``arch``)
   and recipe (``recipe_name``, ``recipe``); entries of other names are kept;
6. the run's evidence (``metrics.jsonl`` and its loss/accuracy/LR/confusion PNGs) copied to
   ``docs/runs/<run folder name>/``, so the curves the README shows come from the run that made the weights.

``--remeasure NAME... | all`` only measures again the CPU speed of packaged models (their ONNX files
and int8 copies, batched and one image at a time) and chooses the default again: the default is picked
on these figures, so they should all come from one quiet machine, not from packaging runs made while
trainings shared the cores.

Paths in the manifest (the run's command, its evidence folder) are relative to the repository.
The manifest's ``default_model`` (what the service loads by default) is chosen by ``choose_default`` on
the figures of each model's served file, unless ``--default`` names one: the most accurate that answers at
least ``--min-default-images-per-s`` single images/s on one thread and whose worst upload variant in
``--robustness`` (benchmarks/upload_robustness.py's results, taken only for the very file served) loses at
most ``--max-upload-drop`` points; thresholds from ``common.contract``. ``default_rule`` says which rule held.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from common.contract import (
    DEFAULT_MAX_UPLOAD_DROP_POINTS,
    DEFAULT_MIN_SINGLE_IMAGES_PER_S,
    NO_TTA,
    THROUGHPUT_BATCH,
    int8_preferred,
)
from common.files import file_sha256, write_json
from common.inference import cpu_session
from common.machine import cpu_name
from common.paths import REPO_ROOT, repo_relative, repo_relative_command
from export import ExportError
from export.onnx import check_tta, export_checkpoint
from export.onnx_accuracy import EvaluationError
from export.quantize import images_per_second, int8_path, quantize_model, single_image_rate
from export.sample_images import timing_images
from training.checkpoint import (
    Checkpoint,
    CheckpointError,
    RunArgs,
    atomic_save,
    load_checkpoint,
    model_from_checkpoint,
    without_training_state,
)
from training.data import Cifar10, DataError, load_cifar10
from training.models import count_parameters

NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*")
MANIFEST = "MANIFEST.json"
ROBUSTNESS_RESULTS = REPO_ROOT / "benchmarks" / "results" / "upload_robustness.json"
MAX_FILE_BYTES = 16 * 2**20
PRETRAINED_LABEL = "ImageNet-1k pretrained (external data)"
# log.txt exists when the run's output was redirected into its folder (the README's background runs).
RUN_EVIDENCE = ("metrics.jsonl", "log.txt", "loss.png", "accuracy.png", "lr.png", "confusion.png")


class StagedWeights:
    """``weights/`` changed all at once or not at all.

    A package run writes every new file (checkpoints, ONNX files, parity reports, int8 copies, the manifest)
    into a hidden staging folder inside ``weights/`` (same file system, ignored by the service and by git);
    ``commit`` then moves them in, the manifest last, and deletes the files that must go (an int8 copy no
    longer served). An error before ``commit`` leaves ``weights/`` byte for byte as it was.
    """

    def __init__(self, weights: Path):
        self.weights = weights
        self.removed: set[str] = set()
        self._dir: Path | None = None

    @property
    def dir(self) -> Path:
        """The staging folder, made on first use: a run refused before it writes anything creates nothing."""
        if self._dir is None:
            self.weights.mkdir(parents=True, exist_ok=True)
            self._dir = Path(tempfile.mkdtemp(prefix=".staging-", dir=self.weights))
        return self._dir

    def commit(self) -> None:
        staged = sorted(self.dir.iterdir(), key=lambda p: (p.name == MANIFEST, p.name))
        for path in staged:
            os.replace(path, self.weights / path.name)
        for name in self.removed - {p.name for p in staged}:
            (self.weights / name).unlink(missing_ok=True)

    def discard(self) -> None:
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)


def checkpoint_of(run: str | os.PathLike) -> Path:
    run = Path(run)
    return run / "best.pt" if run.is_dir() else run


def split_run_name(spec: str) -> tuple[str, str | None]:
    """``RUN:NAME`` -> (RUN, NAME); a bare RUN -> (RUN, None), to be named after its architecture."""
    run, colon, name = spec.rpartition(":")
    return (run, name) if colon and run and NAME.fullmatch(name) else (spec, None)


def named_runs(specs: list[str]) -> list[tuple[str, str]]:
    """(RUN, NAME) for each command-line RUN[:NAME], unnamed runs named after their architecture."""
    runs = []
    for spec in specs:
        run, name = split_run_name(spec)
        runs.append((run, name or load_checkpoint(checkpoint_of(run))["arch"]))
    names = [name for _, name in runs]
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise ExportError(f"two runs would ship as {', '.join(repeated)}: give one of them another name "
                          "with RUN:NAME")
    return runs


def copy_run_evidence(run_dir: Path, docs: Path) -> str:
    """Copy a run's metrics and plots to ``docs``; returns the folder, or "" when the run left none."""
    found = [run_dir / name for name in RUN_EVIDENCE if (run_dir / name).exists()]
    if not found:
        return ""
    docs.mkdir(parents=True, exist_ok=True)
    for path in found:
        shutil.copyfile(path, docs / path.name)
    return repo_relative(docs)


def package_run(run: str | os.PathLike, name: str, stage: StagedWeights, cifar: Cifar10,
                command: str | None = None, docs: Path | None = None, tta: str | None = None) -> dict:
    """Stage ``run`` as ``<name>.pt`` and ``.onnx`` (and its int8 copy); return its manifest entry.

    The fp32 file's test accuracy is measured once, by the parity check on every test image (the file
    written is the graph measured there), and handed on to the int8 comparison.
    """
    source = checkpoint_of(run)
    ckpt = load_checkpoint(source)
    # best.pt stops at the selected epoch; the run's last.pt knows how far training went.
    last_path = source.with_name("last.pt")
    last = load_checkpoint(last_path) if last_path.exists() and last_path != source else ckpt
    pt_path, onnx_path = stage.dir / f"{name}.pt", stage.dir / f"{name}.onnx"
    atomic_save(without_training_state(ckpt), pt_path)
    parity = export_checkpoint(pt_path, onnx_path, data=cifar, tta=tta)
    for path in (pt_path, onnx_path):
        if path.stat().st_size >= MAX_FILE_BYTES:
            raise ExportError(f"{path} is {path.stat().st_size / 2**20:.1f} MiB, over the 16 MiB limit")
    measured = parity["cases"]["images"]
    session = cpu_session(onnx_path)
    timing = timing_images(cifar)
    metrics = last.get("metrics", [])
    run_args = RunArgs.of(ckpt)
    run_command = run_args.command or command or ""
    return {
        "arch": ckpt["arch"],
        "onnx": onnx_path.name, "onnx_sha256": file_sha256(onnx_path),
        "checkpoint": pt_path.name, "checkpoint_sha256": file_sha256(pt_path),
        "parity": {k: parity[k] for k in ("source", "images", "max_abs_diff_logits", "max_abs_diff_probabilities",
                                          "top1_agreement", "passed")},
        "parameters": count_parameters(model_from_checkpoint(ckpt)),
        "test_accuracy": round(measured["accuracy_onnxruntime"], 4), "tta": parity.get("tta", NO_TTA),
        "per_class_accuracy": {k: round(v, 4) for k, v in measured["per_class_accuracy_onnxruntime"].items()},
        "test_images": parity["images"], "dataset": repo_relative(cifar.source),
        "epochs": last["epoch"], "epochs_planned": last.get("epochs"),
        "complete": last["epoch"] == last.get("epochs"),
        "selected_on": ckpt.get("selected_on"), "selected_epoch": ckpt["epoch"],
        "recipe_name": recipe_name(ckpt, run_command),
        # Where the starting weights came from: trained from scratch on CIFAR-10 only, or not.
        "pretrained": (f"{PRETRAINED_LABEL}: {run_args.pretrained}" if run_args.pretrained else None),
        "run_evidence": copy_run_evidence(source.parent, docs / source.parent.name) if docs else "",
        "recipe": ckpt["recipe"],
        "command": repo_relative_command(run_command),
        "torch_version": ckpt.get("torch_version"), "device_name": ckpt.get("device_name", "cpu"),
        "precision": run_args.precision,
        "threads": run_args.threads,  # None: a run from before --threads, on every CPU thread
        "train_seconds": round(sum(m.get("epoch_seconds", 0.0) for m in metrics) or ckpt.get("train_seconds", 0.0), 1),
        "cpu_images_per_s": round(images_per_second(session, timing), 1),
        "cpu_measured_on": cpu_name(),  # speeds differ between machines (AMX or not): say which one
        "cpu_throughput_note": f"onnxruntime CPUExecutionProvider, batches of {THROUGHPUT_BATCH}, "
                               f"{os.cpu_count()} cores, onnxruntime {ort.__version__}",
        "date": datetime.now(UTC).date().isoformat(),
        "int8": package_int8(onnx_path, cifar, stage, fp32_accuracy=measured["accuracy_onnxruntime"]),
    }


def package_int8(onnx_path: Path, cifar: Cifar10, stage: StagedWeights, fp32_accuracy: float | None = None) -> dict:
    """Quantize the staged ``onnx_path``; keep ``NAME.int8.onnx`` only if the service would serve it. Its figures."""
    figures = quantize_model(onnx_path, cifar, fp32_accuracy=fp32_accuracy)
    int8_file = int8_path(onnx_path)
    served = figures["kept"] and int8_preferred(figures)
    if not served:
        int8_file.unlink(missing_ok=True)
        stage.removed.add(int8_file.name)  # an older copy in weights/ would disagree with the new fp32 file
    return {
        "served": served,
        "onnx": int8_file.name if served else None,
        "onnx_sha256": file_sha256(int8_file) if served else None,
        "test_accuracy": round(figures["int8_accuracy"], 4),
        "accuracy_drop_points": round(figures["accuracy_drop_points"], 2),
        "cpu_images_per_s": figures["int8_images_per_second"],
        "single_images_per_s": figures["int8_single_images_per_second"],
        "fp32_single_images_per_s": figures["fp32_single_images_per_second"],
        "single_image_speedup": figures["single_image_speedup"],
        "method": figures["method"], "calibration_images": figures["calibration_images"],
    }


def remeasure_speed(entry: dict, weights: Path, timing: np.ndarray) -> None:
    """Measure ``entry``'s files again (in place): batched images/s of the ONNX file, its one-image rate and,
    where an int8 copy is shipped, that copy's batched and one-image rates."""
    onnx_path = weights / entry["onnx"]
    session = cpu_session(onnx_path)
    entry["cpu_images_per_s"] = round(images_per_second(session, timing), 1)
    entry["cpu_measured"] = datetime.now(UTC).date().isoformat()
    entry["cpu_measured_on"] = cpu_name()
    int8 = entry.get("int8")
    if not isinstance(int8, dict):
        return
    int8["fp32_single_images_per_s"] = round(single_image_rate(onnx_path, timing), 1)
    if int8.get("onnx") and (weights / int8["onnx"]).is_file():
        int8_file = weights / int8["onnx"]
        int8["cpu_images_per_s"] = round(images_per_second(cpu_session(int8_file), timing), 1)
        int8["single_images_per_s"] = round(single_image_rate(int8_file, timing), 1)
        int8["single_image_speedup"] = round(int8["single_images_per_s"] / int8["fp32_single_images_per_s"], 3)


def recipe_name(ckpt: Checkpoint, command: str) -> str:
    """The named recipe a run used: recorded by training, else read off its command, else the documented one."""
    recorded = RunArgs.of(ckpt).recipe_name
    if recorded:
        return recorded
    match = re.search(r"--recipe[ =](\S+)", command)
    return match.group(1) if match else ckpt["arch"]


def served_figures(entry: dict) -> dict:
    """The figures of the file the service serves under the entry's name: its int8 copy where that is served."""
    int8 = entry.get("int8")
    return int8 if isinstance(int8, dict) and int8.get("served") else entry


def served_sha256(entry: dict) -> str | None:
    return served_figures(entry).get("onnx_sha256")


def single_images_per_s(entry: dict) -> float | None:
    """Lone requests a second on one thread, of the file served under the entry's name (export.quantize
    times the fp32 file too, so an fp32-served model has the figure in its ``int8`` block)."""
    int8 = entry.get("int8")
    if not isinstance(int8, dict):
        return None
    return int8.get("single_images_per_s") if int8.get("served") else int8.get("fp32_single_images_per_s")


def upload_robustness(results: dict, name: str, entry: dict) -> dict | None:
    """The robustness benchmark's summary for the served file of ``name``, if it measured that very file."""
    measured = (results.get("models") or {}).get(name)
    if not isinstance(measured, dict) or measured.get("sha256") != served_sha256(entry):
        return None  # not measured, or measured on another file than the one served now
    worst = measured["worst_variant"]
    return {"native_accuracy": measured["native_accuracy"], "worst_variant": worst["name"],
            "worst_drop_points": worst["drop_points"], "mean_drop_points": measured["mean_drop_points"],
            "images": results.get("images"), "measured": str(results.get("date", ""))[:10],
            "results": repo_relative(ROBUSTNESS_RESULTS)}


def choose_default(models: dict, min_single_images_per_s: float = DEFAULT_MIN_SINGLE_IMAGES_PER_S,
                   max_upload_drop_points: float = DEFAULT_MAX_UPLOAD_DROP_POINTS) -> tuple[str, str]:
    """(the default model, the rule that chose it): the most accurate served file that is fast enough one image
    at a time and robust to re-encoded and resized uploads; where none is both, the most accurate fast one."""
    fast = {name: m for name, m in models.items() if (single_images_per_s(m) or 0) >= min_single_images_per_s}
    robust = {name: m for name, m in fast.items() if isinstance(m.get("upload_robustness"), dict)
              and m["upload_robustness"]["worst_drop_points"] <= max_upload_drop_points}
    speed = f">= {min_single_images_per_s:g} single images/s on one thread"
    if robust:
        pool, rule = robust, (f"most accurate model with {speed} and every upload variant within "
                              f"{max_upload_drop_points:g} point(s) of native")
    elif fast:
        pool, rule = fast, (f"most accurate model with {speed}; none had every upload variant within "
                            f"{max_upload_drop_points:g} point(s) of native")
    else:
        pool, rule = models, f"most accurate model: none had {speed}"
    return max(pool, key=lambda name: served_figures(pool[name])["test_accuracy"]), rule


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m export.package", description=__doc__.split("\n\n")[0])
    p.add_argument("runs", nargs="*", metavar="RUN[:NAME]",
                   help="training output folders (their best.pt) or checkpoint files, each optionally with the "
                        "name it ships under (default: its architecture)")
    p.add_argument("--data", help="CIFAR-10 source (default $CIFAR10_DATA)")
    p.add_argument("--weights", default="weights", help="the folder the service loads")
    p.add_argument("--command", help="the training command, for checkpoints that do not record it")
    p.add_argument("--docs", default="docs/runs", help="where each run's metrics and plots are copied")
    p.add_argument("--default", help="the default model (else chosen by accuracy among the fast ones)")
    p.add_argument("--min-default-images-per-s", type=float, default=DEFAULT_MIN_SINGLE_IMAGES_PER_S,
                   help="the default must answer this many single images/s on one thread (default: %(default)s)")
    p.add_argument("--max-upload-drop", type=float, default=DEFAULT_MAX_UPLOAD_DROP_POINTS,
                   help="... and lose at most this many points on any upload variant (default: %(default)s)")
    p.add_argument("--robustness", default=str(ROBUSTNESS_RESULTS),
                   help="benchmarks/upload_robustness.py's results, read for each served file it measured")
    p.add_argument("--tta", metavar="{none,flip,flip_translate}",
                   help="test-time augmentation inside every exported graph (default: each run's recipe 'tta', "
                        "else none)")
    p.add_argument("--requantize", nargs="+", metavar="NAME", default=[],
                   help="only (re)make the int8 copy of these models already in --weights, and their entries' int8")
    p.add_argument("--choose-default", action="store_true",
                   help="measure nothing: take each served file's figures from --robustness again and choose the "
                        "default (after benchmarks/upload_robustness.py has measured a new model)")
    p.add_argument("--remeasure", nargs="+", metavar="NAME", default=[],
                   help="only measure again the CPU speed of these packaged models ('all': every one) and choose "
                        "the default again; do it on a quiet machine, for every model at once")
    args = p.parse_args(argv)
    if not args.runs and not args.requantize and not args.remeasure and not args.choose_default:
        p.error("give runs to package, --requantize NAME..., --remeasure NAME... or --choose-default")
    weights = Path(args.weights)
    manifest_path = weights / MANIFEST
    manifest = json.loads(manifest_path.read_text()) if manifest_path.exists() else {"models": {}}
    stage = StagedWeights(weights)
    try:
        code = package(args, manifest, stage)
        if code == 0:
            stage.commit()
            print(f"default model: {manifest['default_model']}; wrote {manifest_path}")
        return code
    except OSError as exc:  # a full disk, a folder that cannot be written: weights/ stays as it was
        print(f"error: {exc}", file=sys.stderr)
        return 2
    finally:
        stage.discard()


def package(args: argparse.Namespace, manifest: dict, stage: StagedWeights) -> int:
    """Every step of a package run, writing into ``stage`` only; 0 when it may be committed, else 2."""
    weights = stage.weights
    try:
        if args.tta is not None:
            check_tta(args.tta)
        runs = named_runs(args.runs)
        remeasure = sorted(manifest["models"]) if args.remeasure == ["all"] else args.remeasure
        for name in remeasure:
            if name not in manifest["models"] or not (weights / manifest["models"][name]["onnx"]).is_file():
                raise ExportError(f"--remeasure {name}: no such packaged model in {weights}")
        # read once, where anything is measured: every figure of this run comes from these images
        cifar = load_cifar10(args.data) if runs or args.requantize or remeasure else None
        for run, name in runs:
            entry = package_run(run, name, stage, cifar, args.command, Path(args.docs), args.tta)
            manifest["models"][name] = entry
            shown = name if name == entry["arch"] else f"{name} ({entry['arch']})"
            print(f"{shown}: test accuracy {100 * entry['test_accuracy']:.2f}% after {entry['epochs']} epochs "
                  f"(epoch {entry['selected_epoch']} selected on {entry['selected_on']}), "
                  f"{entry['cpu_images_per_s']:,.0f} images/s on CPU"
                  f"{'' if entry['tta'] == 'none' else ', TTA ' + entry['tta'] + ' in the graph'} "
                  f"-> {weights / entry['onnx']}", flush=True)
        for name in args.requantize:
            if name not in manifest["models"] or not (weights / f"{name}.onnx").is_file():
                raise ExportError(f"--requantize {name}: no such packaged model in {weights}")
            shutil.copy2(weights / f"{name}.onnx", stage.dir / f"{name}.onnx")  # its int8 copy is made beside it
            figures = manifest["models"][name]["int8"] = package_int8(stage.dir / f"{name}.onnx", cifar, stage)
            print(f"{name}: int8 {'served' if figures['served'] else 'not served'} "
                  f"({figures['accuracy_drop_points']:+.2f} points lost, x{figures['single_image_speedup']} "
                  f"one image at a time)", flush=True)
        timing = timing_images(cifar) if remeasure else None
        for name in remeasure:
            entry = manifest["models"][name]
            remeasure_speed(entry, weights, timing)
            print(f"{name}: {entry['cpu_images_per_s']:,.0f} images/s" + (
                f", int8 {entry['int8']['cpu_images_per_s']:,.0f} images/s (one at a time "
                f"x{entry['int8']['single_image_speedup']})" if served_figures(entry) is not entry else ""), flush=True)
    except (CheckpointError, DataError, ExportError, EvaluationError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.default and args.default not in manifest["models"]:
        print(f"error: --default {args.default} is not among the packaged models", file=sys.stderr)
        return 2
    robustness = json.loads(Path(args.robustness).read_text()) if Path(args.robustness).is_file() else {}
    for name, entry in manifest["models"].items():
        entry["upload_robustness"] = upload_robustness(robustness, name, entry)
    chosen, rule = choose_default(manifest["models"], args.min_default_images_per_s, args.max_upload_drop)
    manifest["default_model"], manifest["default_rule"] = (args.default, "named with --default") if args.default \
        else (chosen, rule)
    manifest["torch_used_for_packaging"] = str(torch.__version__)
    write_json(stage.dir / MANIFEST, manifest)
    return 0


if __name__ == "__main__":
    sys.exit(main())
