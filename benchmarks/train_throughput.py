"""Training images/s: this project's on-device pipeline versus a DataLoader with per-sample transforms.

For each model and its documented recipe (batch size, optimizer, augmentation) it times full
training steps (forward, backward, optimizer step) fed by

- ``device``: ``training.data.DeviceLoader``: the split is one uint8 tensor on the training device,
  augmentation is batched tensor ops there (airbench style);
- ``dataloader``: ``torch.utils.data.DataLoader`` over PIL images with per-sample transforms, in
  worker processes, batches collated and copied to the device: the textbook pipeline. The
  transforms are torchvision's where torchvision imports; where it cannot (its PyPI wheels need
  a CUDA torch, so not on these CPU-only machines) the same augmentation ops of
  ``training.augment`` run on one image at a time inside the workers, which keeps the per-sample
  structure (decode, per-image ops, collation, IPC) that the comparison is about.

    python benchmarks/train_throughput.py --data ../shared/data/cifar10-jpeg.tar.gz --device cpu

writes ``benchmarks/results/train_throughput_<device>.json`` and prints a table.

``--compare precision`` instead times the on-device pipeline in three numeric modes per model:
fp32 (NCHW), fp32 + channels_last, and bf16 autocast + channels_last (the default on CPUs with AMX
or AVX512-BF16), into ``benchmarks/results/train_precision_<device>.json``.
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
from PIL import Image

from common.files import write_json
from common.machine import bf16_units
from common.paths import repo_relative_command
from training.data import DeviceLoader, channel_stats, load_cifar10
from training.engine import autocast, build_optimizer
from training.hardware import set_threads
from training.models import create_model, list_models
from training.recipes import HALF, RECIPES, Recipe
from training.schedules import build_schedule

RESULTS = Path(__file__).resolve().parent / "results"


def torchvision_transforms(recipe: Recipe, mean, std):
    """The recipe's augmentation as torchvision per-sample transforms, or None if unavailable."""
    try:
        from torchvision import transforms as T
    except Exception:  # noqa: BLE001 - a torchvision built for another torch fails with RuntimeError
        return None
    a = recipe.augment
    ops = []
    if a.crop_padding:
        ops.append(T.RandomCrop(32, padding=a.crop_padding, padding_mode="reflect" if a.pad_mode == "reflect"
                                else "constant"))
    if a.flip:
        ops.append(T.RandomHorizontalFlip())
    if a.rotation:
        ops.append(T.RandomRotation(a.rotation))
    if a.brightness or a.contrast or a.saturation or a.hue:
        ops.append(T.ColorJitter(a.brightness, a.contrast, a.saturation, a.hue))
    ops += [T.ToTensor(), T.Normalize(mean, std)]
    if a.cutout:
        ops.append(T.RandomErasing(p=1.0, scale=(a.cutout**2 / 1024,) * 2, ratio=(1, 1)))
    return T.Compose(ops)


class PerSampleDataset(torch.utils.data.Dataset):
    """PIL images, transformed one at a time as a torchvision-style dataset does."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, recipe: Recipe, mean, std):
        self.images, self.labels, self.recipe = images, labels, recipe
        self.mean = torch.tensor(mean).view(3, 1, 1)
        self.std = torch.tensor(std).view(3, 1, 1)
        self.transform = torchvision_transforms(recipe, mean, std)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i):
        img = Image.fromarray(self.images[i])
        if self.transform is not None:
            return self.transform(img), int(self.labels[i])
        x = torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1).float().div_(255)[None]
        x = self.recipe.augment.before_normalize(x)[0]
        x = self.recipe.augment.after_normalize(((x - self.mean) / self.std)[None])[0]
        return x, int(self.labels[i])


PRECISION_MODES = {  # name: (bf16 autocast, channels_last)
    "fp32": (False, False),
    "fp32_channels_last": (False, True),
    "bf16_channels_last": (True, True),
}


def time_training(model_name: str, batches, device: torch.device, steps: int, warmup: int,
                  bf16: bool = False, channels_last: bool = False) -> float:
    """Images/s of ``steps`` training steps after ``warmup`` untimed ones."""
    recipe = RECIPES[model_name]
    torch.manual_seed(0)
    model = create_model(recipe.model, **recipe.model_kwargs).to(device).train()  # e.g. a pretrained net's resolution
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(recipe, model)
    scheduler = build_schedule(recipe, optimizer, steps_per_epoch=steps + warmup)
    criterion = nn.CrossEntropyLoss(label_smoothing=recipe.label_smoothing)
    seen, start = 0, None
    it = iter(batches)
    for step in range(warmup + steps):
        if step == warmup:
            if device.type == "cuda":
                torch.cuda.synchronize()
            start, seen = time.perf_counter(), 0
        x, y = next(it)
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast(device, bf16):
            loss = criterion(model(x).float(), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        seen += len(y)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return seen / (time.perf_counter() - start)


def endless(make_iter):
    while True:
        yield from make_iter()


def benchmark(model_name: str, images, labels, device: torch.device, steps: int, warmup: int, workers: int,
              min_images: int) -> dict:
    recipe = RECIPES[model_name]
    mean, std = HALF if recipe.normalization == "half" else channel_stats(images)
    device_loader = DeviceLoader(images, labels, recipe.batch_size, device, mean, std, recipe.augment,
                                 shuffle=True, drop_last=True)
    dataset = PerSampleDataset(images, labels, recipe, mean, std)
    baseline_loader = torch.utils.data.DataLoader(
        dataset, batch_size=recipe.batch_size, shuffle=True, drop_last=True, num_workers=workers,
        pin_memory=device.type == "cuda", persistent_workers=workers > 0)
    steps = max(steps, -(-min_images // recipe.batch_size))  # small batches need more steps to time
    result = {
        "model": model_name, "batch_size": recipe.batch_size, "timed_steps": steps,
        "device_pipeline_images_per_s": time_training(model_name, endless(lambda: iter(device_loader)), device,
                                                      steps, warmup),
        "dataloader_images_per_s": time_training(model_name, endless(lambda: iter(baseline_loader)), device,
                                                 steps, warmup),
        "baseline_transforms": "torchvision" if dataset.transform is not None else "per-sample training.augment",
    }
    result["speedup"] = result["device_pipeline_images_per_s"] / result["dataloader_images_per_s"]
    return result


def benchmark_precision(model_name: str, images, labels, device: torch.device, steps: int, warmup: int,
                        min_images: int) -> dict:
    recipe = RECIPES[model_name]
    mean, std = HALF if recipe.normalization == "half" else channel_stats(images)
    loader = DeviceLoader(images, labels, recipe.batch_size, device, mean, std, recipe.augment,
                          shuffle=True, drop_last=True)
    steps = max(steps, -(-min_images // recipe.batch_size))
    result = {"model": model_name, "batch_size": recipe.batch_size, "timed_steps": steps}
    for mode, (bf16, channels_last) in PRECISION_MODES.items():
        result[f"{mode}_images_per_s"] = time_training(model_name, endless(lambda: iter(loader)), device, steps,
                                                       warmup, bf16=bf16, channels_last=channels_last)
    result["bf16_speedup"] = result["bf16_channels_last_images_per_s"] / result["fp32_images_per_s"]
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default=os.environ.get("CIFAR10_DATA", "../shared/data/cifar10-jpeg.tar.gz"))
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--models", nargs="*", default=list_models(),
                   help="models (their documented recipes) or named recipes, e.g. efficientnet_lite0_64")
    p.add_argument("--steps", type=int, default=20, help="timed training steps per measurement")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--min-images", type=int, default=2000, help="time at least this many images per measurement")
    p.add_argument("--images", type=int, default=10_000, help="training images held by both pipelines")
    p.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1))
    p.add_argument("--compare", choices=("pipeline", "precision"), default="pipeline",
                   help="pipeline: on-device vs DataLoader; precision: fp32 / fp32+channels_last / bf16+channels_last")
    p.add_argument("--threads", type=int, help="CPU threads (default: every usable CPU)")
    p.add_argument("--out", help="results JSON (default: benchmarks/results/train_throughput_<device>.json, "
                                  "or train_precision_<device>.json)")
    args = p.parse_args()
    device = torch.device(args.device)
    if device.type == "cpu":
        set_threads(args.threads)
    data = load_cifar10(args.data)
    images, labels = data.train_images[: args.images], data.train_labels[: args.images]
    if args.compare == "precision":
        return main_precision(args, device, images, labels)
    rows = []
    print(f"{'model':<18}{'batch':>6}{'device img/s':>14}{'DataLoader img/s':>18}{'speedup':>9}")
    for name in args.models:
        r = benchmark(name, images, labels, device, args.steps, args.warmup, args.workers, args.min_images)
        rows.append(r)
        print(f"{name:<18}{r['batch_size']:>6}{r['device_pipeline_images_per_s']:>14,.0f}"
              f"{r['dataloader_images_per_s']:>18,.0f}{r['speedup']:>9.2f}", flush=True)
    report = {
        "what": "training images/s (forward+backward+optimizer step), documented recipe per model",
        "command": _command(args),
        "device": _device_name(device),
        "torch": str(torch.__version__), "dataloader_workers": args.workers,
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "results": rows,
    }
    write_report(report, Path(args.out) if args.out else RESULTS / f"train_throughput_{device.type}.json")


def main_precision(args, device: torch.device, images, labels) -> None:
    rows = []
    print(f"{'model':<18}{'batch':>6}" + "".join(f"{m:>20}" for m in PRECISION_MODES) + f"{'bf16 speedup':>14}")
    for name in args.models:
        r = benchmark_precision(name, images, labels, device, args.steps, args.warmup, args.min_images)
        rows.append(r)
        print(f"{name:<18}{r['batch_size']:>6}" + "".join(f"{r[f'{m}_images_per_s']:>20,.0f}" for m in PRECISION_MODES)
              + f"{r['bf16_speedup']:>13.2f}x", flush=True)
    report = {
        "what": "training images/s (forward+backward+optimizer step, on-device pipeline, documented recipe's batch "
                "and augmentation) in three numeric modes; bf16 = autocast around the forward pass",
        "command": _command(args),
        "device": _device_name(device), "cpu_bf16_units": bf16_units() if device.type == "cpu" else None,
        "torch": str(torch.__version__), "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "results": rows,
    }
    write_report(report, Path(args.out) if args.out else RESULTS / f"train_precision_{device.type}.json")


def _command(args) -> str:
    return repo_relative_command("python benchmarks/train_throughput.py " + " ".join(
        f"--{k.replace('_', '-')} {' '.join(v) if isinstance(v, list) else v}"
        for k, v in vars(args).items() if v is not None and k != "out"))


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return (f"cpu: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch threads "
            f"{torch.get_num_threads()}")


def write_report(report: dict, out: Path) -> None:
    write_json(out, report, sort_keys=False)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
