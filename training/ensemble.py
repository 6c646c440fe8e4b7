"""``python -m training.ensemble CKPT CKPT... --out DIR``: trained models -> one ensemble checkpoint.

    python -m training.ensemble weights/whitened_vgg_best.pt weights/efficientnet_lite0.pt \\
        --out ~/cifar-runs/ensemble --data ../shared/data/cifar10-jpeg.tar.gz
    python -m export.package ~/cifar-runs/ensemble:ensemble --data ../shared/data/cifar10-jpeg.tar.gz

Writes ``DIR/best.pt``, a checkpoint of the ``ensemble`` model (``training.models.ensemble``: the
members' probabilities averaged) holding each member's weights, normalization and test-time
augmentation, and a record of where each came from (file, sha256, recipe, accuracy, pretrained
weights). It exports, packages and serves like a trained model.

Weights in fp16: every weights file stays under 16 MiB (``export.package``), and two networks of
13-14 MiB fit only at two bytes a weight. The members' weights are rounded to fp16 once, here; the
model still computes in fp32, on the rounded values, its ONNX file stores them as fp16 as well
(``export.graph``), and every figure (parity, accuracy) is measured on that rounded model. With
``--data`` the test accuracy before and after rounding is printed, and the rounded one recorded.

Exit status: 0 written, 2 bad input (unreadable checkpoint, one member, classes that disagree).
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from common.files import file_sha256
from common.paths import repo_relative
from training.checkpoint import (
    FORMAT,
    Checkpoint,
    CheckpointError,
    RunArgs,
    atomic_save,
    build_checkpoint_main,
    load_checkpoint,
    recipe_tta,
)
from training.models import create_model
from training.tta import TTA

ARCH = "ensemble"
COMBINE = "mean of the members' probabilities"


def member_record(ckpt: Checkpoint, path: Path) -> dict:
    """What the ensemble model needs of a member (arch, kwargs, normalization, TTA) and where it came from."""
    args = RunArgs.of(ckpt)
    return {"name": path.stem, "arch": ckpt["arch"], "model_kwargs": dict(ckpt.get("model_kwargs") or {}),
            "mean": list(ckpt["mean"]), "std": list(ckpt["std"]), "tta": recipe_tta(ckpt),
            "checkpoint": repo_relative(path), "checkpoint_sha256": file_sha256(path),
            "recipe_name": args.recipe_name or ckpt["arch"], "test_accuracy": ckpt.get("test_accuracy"),
            "epochs": ckpt.get("epoch"), "pretrained": args.pretrained,
            "train_seconds": round(sum(m.get("epoch_seconds", 0.0) for m in ckpt.get("metrics", [])), 1)}


def build_ensemble(paths: list[str | Path], command: str = "", dtype: torch.dtype = torch.float16) -> Checkpoint:
    """The ensemble checkpoint of the checkpoints at ``paths``, its weights rounded to ``dtype``."""
    paths = [Path(p) for p in paths]
    if len(paths) < 2:
        raise CheckpointError("an ensemble needs at least two checkpoints")
    ckpts = [load_checkpoint(p) for p in paths]
    for path, ckpt in zip(paths, ckpts, strict=True):
        if ckpt["arch"] == ARCH:
            raise CheckpointError(f"{path} is an ensemble itself: give its members instead")
        if list(ckpt["classes"]) != list(ckpts[0]["classes"]):
            raise CheckpointError(f"{path} orders its classes differently from {paths[0]}")
    members = [member_record(c, p) for c, p in zip(ckpts, paths, strict=True)]
    model = create_model(ARCH, members=members)
    for member, ckpt, path in zip(model.members, ckpts, paths, strict=True):
        network = member.model.model if isinstance(member.model, TTA) else member.model
        try:
            network.load_state_dict(ckpt["state_dict"])
        except RuntimeError as exc:
            raise CheckpointError(f"{path}: state dict does not fit model {ckpt['arch']!r}: {exc}") from None
    pretrained = sorted({m["pretrained"] for m in members if m["pretrained"]})
    return {
        "format": FORMAT, "arch": ARCH, "model_kwargs": {"members": members},
        "state_dict": {k: v.detach().to(dtype) if v.is_floating_point() else v.detach()
                       for k, v in model.state_dict().items()},
        "classes": list(ckpts[0]["classes"]),
        # The members normalize for themselves: the ensemble takes images in [0, 1].
        "mean": [0.0, 0.0, 0.0], "std": [1.0, 1.0, 1.0],
        "recipe": {"model": ARCH, "members": [m["name"] for m in members], "combine": COMBINE,
                   "weights_dtype": str(dtype).removeprefix("torch."), "tta": "none",
                   "source": "ours: " + " + ".join(m["name"] for m in members) + ", probabilities averaged"},
        # No epochs of its own: its training time is its members'.
        "epoch": 0, "epochs": 0, "metrics": [], "test_accuracy": None,
        "train_seconds": round(sum(m["train_seconds"] for m in members), 1),
        "torch_version": str(torch.__version__), "selected_on": "members", "device_name": "cpu",
        "args": RunArgs(command=command, recipe_name=ARCH, precision="fp32",
                        pretrained="; ".join(pretrained)).to_dict(),
    }


def measure_accuracy(ckpt: Checkpoint, paths: list[str], data: str, folder: Path) -> None:
    """Test accuracy of ``ckpt`` (recorded in it) and of the same ensemble before rounding (in its recipe)."""
    from training.evaluate import evaluate_checkpoint

    folder.mkdir(parents=True, exist_ok=True)
    for key, candidate in (("test_accuracy_before_fp16", build_ensemble(paths, dtype=torch.float32)), ("", ckpt)):
        scratch = folder / ".accuracy.pt"
        try:
            atomic_save(candidate, scratch)
            accuracy = evaluate_checkpoint(scratch, data)["test_accuracy"]
        finally:
            scratch.unlink(missing_ok=True)
        if key:
            ckpt["recipe"][key] = round(accuracy, 4)
        else:
            ckpt["test_accuracy"] = accuracy
        print(f"test accuracy {'before fp16 rounding' if key else 'as stored (fp16 weights)'}: {accuracy:.4f}",
              flush=True)


def main(argv: list[str] | None = None) -> int:
    return build_checkpoint_main(argv, "python -m training.ensemble", __doc__.split("\n\n")[0],
                                 "the members' checkpoints (two or more)",
                                 "CIFAR-10 source: measure and record the test accuracy (before and after fp16)",
                                 build_ensemble, measure_accuracy,
                                 lambda ckpt: f"{ARCH} of " + ", ".join(ckpt["recipe"]["members"]))


if __name__ == "__main__":
    sys.exit(main())
