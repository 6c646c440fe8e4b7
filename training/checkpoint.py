"""Checkpoints: one dict of plain types and tensors, loadable with ``torch.load(weights_only=True)``.

Keys: ``format``, ``arch``, ``model_kwargs``, ``state_dict`` (fp32), ``classes``, ``mean``, ``std``,
``recipe`` (dict), ``metrics`` (per-epoch list), ``epoch`` (epochs completed), ``epochs`` (planned),
``test_accuracy``, ``selected_on``, ``optimizer``, ``scheduler``, ``rng``, ``args``,
``torch_version``. Files are written to a temporary name and renamed, so a crash never leaves a
half-written checkpoint where a good one was.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.nn as nn

from training.data import CLASSES
from training.models import UnknownModelError, create_model, model_info

FORMAT = "cifar10-classifier/1"


class CheckpointError(Exception):
    """A file that is not a usable checkpoint; the message is meant for the user as is."""


def atomic_save(obj, path: str | os.PathLike) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def make_checkpoint(model: nn.Module, recipe, mean, std, **state) -> dict:
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


def load_checkpoint(path: str | os.PathLike) -> dict:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch.load raises many types on arbitrary bytes
        text = str(exc).strip()
        if "Weights only load failed" in text:  # a pickle, but with objects a safe load refuses
            reason = "it holds Python objects that a weights-only load refuses"
        else:
            reason = f"{type(exc).__name__}: {text.splitlines()[0]}" if text else type(exc).__name__
        raise CheckpointError(f"{path} is not a readable checkpoint ({reason})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a checkpoint of this project (no '{FORMAT}' format tag)")
    try:
        model_info(ckpt["arch"])
    except UnknownModelError as exc:
        raise CheckpointError(f"{path}: {exc}") from None
    return ckpt


def model_from_checkpoint(ckpt: dict) -> nn.Module:
    """The checkpoint's model in eval mode, on the CPU."""
    kwargs = {k: _as_tuples(v) for k, v in ckpt.get("model_kwargs", {}).items()}
    model = create_model(ckpt["arch"], **kwargs)
    try:
        model.load_state_dict(ckpt["state_dict"])
    except RuntimeError as exc:
        raise CheckpointError(f"state dict does not fit model {ckpt['arch']!r}: "
                              f"{str(exc).splitlines()[0]}") from None
    return model.eval()


def _as_tuples(value):
    """Model kwargs stored as lists (JSON-like) back into the tuples the constructors take."""
    return tuple(_as_tuples(v) for v in value) if isinstance(value, (list, tuple)) else value
