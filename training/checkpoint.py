"""Checkpoints: one dict of plain types and tensors, loadable with ``torch.load(weights_only=True)``.

``Checkpoint`` declares its keys and ``RunArgs`` those of its ``args`` entry; on disk it stays a plain
dict (that is what a weights-only load can read), so older files load as they are. Files are
written through ``common.files.atomic_write``: a crash never leaves a half-written checkpoint where
a good one was.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shlex
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypedDict

import torch
import torch.nn as nn

from common.files import atomic_write
from common.text import first_line
from training.data import CLASSES, DataError
from training.models import UnknownArchitectureError, create_model, model_info, saved_kwargs

FORMAT = "cifar10-classifier/1"
# Needed only to continue training: a shipped checkpoint leaves them out.
TRAINING_STATE = ("optimizer", "scheduler", "rng", "lookahead")


class _Model(TypedDict):
    """What every checkpoint has: the model and how its inputs are prepared."""

    format: str  # FORMAT
    arch: str  # the registered architecture (training.models)
    model_kwargs: dict
    state_dict: dict[str, torch.Tensor]  # fp32
    classes: list[str]  # in output order
    mean: list[float]  # normalization, [0, 1] units, RGB
    std: list[float]
    recipe: dict  # Recipe.to_dict()
    epoch: int  # epochs completed
    epochs: int  # epochs planned
    metrics: list[dict]  # one row per epoch, as in metrics.jsonl
    test_accuracy: float | None
    torch_version: str


class Checkpoint(_Model, total=False):
    """A checkpoint's keys. Those below are written by training (``make_checkpoint``'s ``state``)."""

    test_tta: str  # the TTA mode test_accuracy was measured with ("none" in files from before TTA: absent)
    test_confusion: list[list[int]]  # rows: true class, columns: predicted
    selected_on: str  # what chose this epoch for best.pt: "val", or "last" without a validation split
    best_score: float  # the best validation accuracy so far (-1.0 before any)
    device_name: str
    args: dict  # RunArgs.to_dict()
    optimizer: dict  # TRAINING_STATE: for --resume only
    scheduler: dict
    lookahead: dict | None
    rng: dict
    train_seconds: float  # a model built from trained ones (an ensemble): their training time; it has no epochs


@dataclass
class RunArgs:
    """How a run was started (its checkpoints' ``args``): what ``--resume`` keeps and packaging reports.

    Set when a run is planned, but ``pretrained`` once its starting weights are loaded.

    Files from before a key existed lack it and get the default here; before ``--precision`` a
    run trained in fp32 unless ``amp`` (bf16) was set.
    """

    seed: int = 0
    val_size: int = 0
    limit: int | None = None  # training images used (None: all)
    command: str = ""  # the command line that started the run
    recipe_name: str = ""  # "" in files from before it was recorded
    precision: str = "fp32"
    channels_last: bool = False
    eval_limit: int | None = None
    threads: int | None = None  # CPU threads; None: not recorded
    world_size: int = 1
    pretrained: str = ""  # "package==version" the starting weights came from; "" when trained from scratch

    @classmethod
    def from_dict(cls, saved: dict) -> RunArgs:
        known = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in saved.items() if k in known}
        values.setdefault("precision", "bf16" if saved.get("amp") else "fp32")
        return cls(**values)

    @classmethod
    def of(cls, ckpt: Checkpoint) -> RunArgs:
        return cls.from_dict(ckpt.get("args") or {})

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


class CheckpointError(Exception):
    """A file that is not a usable checkpoint; the message is meant for the user as is."""


def atomic_save(obj, path: str | os.PathLike) -> None:
    """``torch.save(obj)`` to ``path``, atomically."""
    atomic_write(path, lambda f: torch.save(obj, f))


def make_checkpoint(model: nn.Module, recipe, mean, std, **state) -> Checkpoint:
    """The checkpoint dict for ``model`` (unwrapped: no DDP/compile) trained with ``recipe``.

    ``state`` adds the training state (``epoch``, ``metrics``, ``optimizer``, ...); without it the
    result is a freshly initialised model's checkpoint, which the export tests use.
    """
    return {
        "format": FORMAT,
        "arch": recipe.model,
        "model_kwargs": dict(recipe.model_kwargs),
        "state_dict": {k: v.detach().float().cpu() if v.is_floating_point() else v.detach().cpu()
                       for k, v in model.state_dict().items()},
        "classes": list(CLASSES),
        "mean": [float(m) for m in mean],
        "std": [float(s) for s in std],
        "recipe": recipe.to_dict(),
        "epoch": 0,
        "epochs": recipe.epochs,
        "metrics": [],
        "test_accuracy": None,
        "torch_version": str(torch.__version__),
        **state,
    }


def without_training_state(ckpt: Checkpoint) -> Checkpoint:
    """The checkpoint as shipped: weights, metadata and metrics, no optimizer, scheduler or RNG state."""
    return {k: v for k, v in ckpt.items() if k not in TRAINING_STATE}


def recipe_tta(ckpt: Checkpoint) -> str:
    """The test-time augmentation a checkpoint's recipe asks for (its ``tta`` key), else "none"."""
    recipe = ckpt.get("recipe")
    return str(recipe.get("tta") or "none") if isinstance(recipe, dict) else "none"


def load_checkpoint(path: str | os.PathLike) -> Checkpoint:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch.load raises many types on arbitrary bytes
        if "Weights only load failed" in str(exc):  # a pickle, but with objects a safe load refuses
            reason = "it holds Python objects that a weights-only load refuses"
        else:
            reason = f"{type(exc).__name__}: {first_line(exc)}" if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"{path} is not a readable checkpoint ({reason})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a checkpoint of this project (no '{FORMAT}' format tag)")
    try:
        model_info(ckpt["arch"])
    except UnknownArchitectureError as exc:
        raise CheckpointError(f"{path}: {exc}") from None
    return ckpt


def model_from_checkpoint(ckpt: Checkpoint) -> nn.Module:
    """The checkpoint's model in eval mode, on the CPU."""
    kwargs = saved_kwargs(ckpt.get("model_kwargs", {}))
    model = create_model(ckpt["arch"], **kwargs)
    try:
        model.load_state_dict(ckpt["state_dict"])
    except RuntimeError as exc:
        raise CheckpointError(f"state dict does not fit model {ckpt['arch']!r}: {first_line(exc)}") from None
    return model.eval()


def build_checkpoint_main(argv: list[str] | None, prog: str, description: str, checkpoints_help: str,
                          data_help: str, build: Callable[[list[str], str], Checkpoint],
                          measure: Callable[[Checkpoint, list[str], str, Path], None],
                          describe: Callable[[Checkpoint], str]) -> int:
    """The command line of a checkpoint built from trained ones (``training.ensemble``, ``training.soup``).

    ``prog CKPT... --out DIR [--data PATH]``: ``build(paths, command)``, then with ``--data``
    ``measure(ckpt, paths, data, DIR)``, then ``DIR/best.pt`` written atomically. Exit 0 with
    ``describe(ckpt) -> path`` printed, or 2 with a one-line error (nothing written).
    """
    p = argparse.ArgumentParser(prog=prog, description=description)
    p.add_argument("checkpoints", nargs="+", metavar="CKPT", help=checkpoints_help)
    p.add_argument("--out", required=True, help="folder for best.pt (export.package takes it as a run)")
    p.add_argument("--data", help=data_help)
    try:
        args = p.parse_args(argv)
    except SystemExit as exc:  # argparse has printed its usage error
        return int(exc.code or 0)
    command = f"{prog} " + shlex.join(sys.argv[1:] if argv is None else argv)
    out = Path(args.out) / "best.pt"
    try:
        ckpt = build(args.checkpoints, command)
        if args.data:
            measure(ckpt, args.checkpoints, args.data, out.parent)
        atomic_save(ckpt, out)
    except (CheckpointError, DataError, ValueError, OSError) as exc:  # OSError: --out cannot be written
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"{describe(ckpt)} -> {out}")
    return 0
