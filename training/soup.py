"""``python -m training.soup CKPT CKPT... --out DIR``: runs of one network -> the average of their weights.

    python -m training.soup weights/whitened_vgg_fast_robust.pt ~/cifar-runs/wvf_flip_teacher/best.pt \\
        ~/cifar-runs/wvf_uploads/best.pt ~/cifar-runs/wvf_uploads_ct/best.pt \\
        --out ~/cifar-runs/wvf_soup --data ../shared/data/cifar10-jpeg.tar.gz
    python -m export.package ~/cifar-runs/wvf_soup:whitened_vgg_fast_soup --data ../shared/data/cifar10-jpeg.tar.gz

A uniform model soup (Wortsman et al., "Model soups: averaging weights of multiple fine-tuned models improves
accuracy without increasing inference time", ICML 2022): every float tensor of the checkpoints' state dicts
averaged, BatchNorm running statistics included, into one network of the same architecture, so it classifies
exactly as fast as each ingredient. It only makes sense for runs in one basin of the loss: fine-tunes of one
checkpoint, with or without that checkpoint. Averaging the weights of independently trained runs gives noise.

Why the running statistics are averaged rather than measured again: the runs' statistics describe the augmented,
upload-damaged views they trained on. The four runs above (91.68-91.84% each, fp32) make 92.15% with averaged
statistics, and 91.70% with statistics recomputed on 10,000 un-augmented training images (measured once, on
the 10,000 test images; the averaged form is the one written here, with no other choice made on them).

Writes ``DIR/best.pt``: the soup's checkpoint, with a record of each ingredient (file, sha256, recipe, accuracy,
epochs, training time). Like an ensemble's, it has no epochs of its own; its training time is its ingredients'
(a fine-tune's time counts only the fine-tune: its parent, an ingredient too, brings its own). With ``--data``
the test accuracy is measured and recorded.

Exit status: 0 written, 2 bad input (unreadable checkpoint, one ingredient, another network or normalization).
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

COMBINE = "uniform mean of every float tensor, BatchNorm running statistics included"


def ingredient_record(ckpt: Checkpoint, path: Path) -> dict:
    """Where an ingredient came from and what it scored."""
    args = RunArgs.of(ckpt)
    return {"name": path.parent.name if path.name in ("best.pt", "last.pt") else path.stem,
            "checkpoint": repo_relative(path), "checkpoint_sha256": file_sha256(path),
            "recipe_name": args.recipe_name or ckpt["arch"], "test_accuracy": ckpt.get("test_accuracy"),
            "epochs": ckpt.get("epoch"), "command": args.command, "precision": args.precision,
            "pretrained": args.pretrained,
            "train_seconds": round(sum(m.get("epoch_seconds", 0.0) for m in ckpt.get("metrics", []))
                                   or ckpt.get("train_seconds", 0.0), 1)}


def check_same_network(paths: list[Path], ckpts: list[Checkpoint]) -> None:
    """Raise CheckpointError unless every checkpoint is the same network, normalized and answering alike."""
    first = ckpts[0]
    for path, ckpt in zip(paths, ckpts, strict=True):
        for key, what in (("arch", "architecture"), ("model_kwargs", "model settings"), ("mean", "normalization"),
                          ("std", "normalization"), ("classes", "class order")):
            if ckpt.get(key) != first.get(key):
                raise CheckpointError(f"{path} differs from {paths[0]} in its {what} ({key}): a soup averages "
                                      "runs of one network")
        if recipe_tta(ckpt) != recipe_tta(first):
            raise CheckpointError(f"{path} uses test-time augmentation {recipe_tta(ckpt)!r}, {paths[0]} "
                                  f"{recipe_tta(first)!r}: give runs served alike")
        shapes = {k: tuple(v.shape) for k, v in ckpt["state_dict"].items()}
        if shapes != {k: tuple(v.shape) for k, v in first["state_dict"].items()}:
            raise CheckpointError(f"{path}'s weights do not have the tensors of {paths[0]}'s")


def build_soup(paths: list[str | Path], command: str = "") -> Checkpoint:
    """The soup checkpoint of the checkpoints at ``paths``."""
    paths = [Path(p) for p in paths]
    if len(paths) < 2:
        raise CheckpointError("a soup needs at least two checkpoints")
    ckpts = [load_checkpoint(p) for p in paths]
    check_same_network(paths, ckpts)
    first = ckpts[0]
    state = {}
    for key, value in first["state_dict"].items():
        if value.is_floating_point():
            state[key] = sum(c["state_dict"][key].double() for c in ckpts).div(len(ckpts)).to(value.dtype)
        else:  # integer buffers (BatchNorm's num_batches_tracked): not weights, the first run's kept
            state[key] = value.clone()
    ingredients = [ingredient_record(c, p) for c, p in zip(ckpts, paths, strict=True)]
    teachers = []  # every teacher any ingredient learnt from, in order (a recipe names one path or a list)
    for c in ckpts:
        named = c["recipe"].get("teacher") or []
        teachers += [t for t in ([named] if isinstance(named, str) else named) if t not in teachers]
    precisions = {i["precision"] for i in ingredients}
    pretrained = sorted({i["pretrained"] for i in ingredients if i["pretrained"]})
    names = [i["name"] for i in ingredients]
    return {
        "format": FORMAT, "arch": first["arch"], "model_kwargs": dict(first.get("model_kwargs") or {}),
        "state_dict": state, "classes": list(first["classes"]), "mean": list(first["mean"]),
        "std": list(first["std"]),
        "recipe": {"model": first["arch"], "soup_of": names, "combine": COMBINE, "tta": recipe_tta(first),
                   **({"teacher": teachers[0] if len(teachers) == 1 else teachers} if teachers else {}),
                   "ingredients": ingredients,
                   "source": "ours: uniform weight average (model soup) of " + " + ".join(names)},
        # No epochs of its own: its training time is its ingredients'.
        "epoch": 0, "epochs": 0, "metrics": [], "test_accuracy": None,
        "train_seconds": round(sum(i["train_seconds"] for i in ingredients), 1),
        "torch_version": str(torch.__version__), "selected_on": "ingredients",
        "device_name": first.get("device_name", "cpu"),
        "args": RunArgs(command=command, recipe_name="soup", precision=precisions.pop() if len(precisions) == 1
                        else "mixed", pretrained="; ".join(pretrained)).to_dict(),
    }


def measure_accuracy(ckpt: Checkpoint, paths: list[str], data: str, folder: Path) -> None:
    """Test accuracy of ``ckpt``, recorded in it (``paths``: its ingredients, which it already records)."""
    from training.evaluate import evaluate_checkpoint

    folder.mkdir(parents=True, exist_ok=True)
    scratch = folder / ".accuracy.pt"
    try:
        atomic_save(ckpt, scratch)
        ckpt["test_accuracy"] = evaluate_checkpoint(scratch, data)["test_accuracy"]
    finally:
        scratch.unlink(missing_ok=True)
    print(f"test accuracy: {ckpt['test_accuracy']:.4f} (ingredients: "
          + ", ".join(f"{i['test_accuracy']:.4f}" for i in ckpt["recipe"]["ingredients"]
                      if i["test_accuracy"] is not None) + ")", flush=True)


def main(argv: list[str] | None = None) -> int:
    return build_checkpoint_main(argv, "python -m training.soup", __doc__.split("\n\n")[0],
                                 "runs of one network (two or more)",
                                 "CIFAR-10 source: measure and record the test accuracy", build_soup,
                                 measure_accuracy, lambda ckpt: "soup of " + ", ".join(ckpt["recipe"]["soup_of"]))


if __name__ == "__main__":
    sys.exit(main())
