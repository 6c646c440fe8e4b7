"""The training step: optimizer and LR schedule from a recipe, one epoch of training, evaluation."""

from __future__ import annotations

import contextlib
import math
import time

import torch
import torch.distributed as dist
import torch.nn as nn
from tqdm import tqdm

from training.data import DeviceLoader
from training.recipes import Recipe


def build_optimizer(recipe: Recipe, model: nn.Module) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    wd = recipe.weight_decay
    if recipe.optimizer == "sgd":
        return torch.optim.SGD(params, lr=recipe.lr, momentum=recipe.momentum, nesterov=recipe.nesterov,
                               weight_decay=wd)
    if recipe.optimizer == "adam":
        return torch.optim.Adam(params, lr=recipe.lr, weight_decay=wd)
    if recipe.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=recipe.lr, weight_decay=wd)
    return torch.optim.RMSprop(params, lr=recipe.lr, alpha=recipe.rmsprop_alpha, momentum=recipe.momentum,
                               weight_decay=wd)


def build_scheduler(recipe: Recipe, optimizer: torch.optim.Optimizer, steps_per_epoch: int):
    """An LR schedule stepped once per optimizer step (so epochs and steps agree for every kind)."""
    total = recipe.epochs * steps_per_epoch
    if recipe.schedule == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=recipe.lr, total_steps=total,
                                                   pct_start=recipe.warmup_fraction)
    if recipe.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total)
    if recipe.schedule == "step":
        milestones = [m * steps_per_epoch for m in recipe.milestones]
        return torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=milestones, gamma=recipe.gamma)
    return torch.optim.lr_scheduler.ConstantLR(optimizer, factor=1.0, total_iters=0)


def steps_per_epoch(loader: DeviceLoader, recipe: Recipe) -> int:
    return math.ceil(len(loader) / recipe.grad_accum_steps)


def autocast(device: torch.device, enabled: bool):
    if not enabled:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16)


def _all_reduce_sum(values: list[float], device: torch.device) -> list[float]:
    if not (dist.is_available() and dist.is_initialized()):
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


def train_one_epoch(model: nn.Module, loader: DeviceLoader, criterion: nn.Module,
                    optimizer: torch.optim.Optimizer, scheduler, recipe: Recipe, device: torch.device,
                    amp: bool = False, progress: str | None = None) -> dict:
    """One pass over ``loader``; returns train loss, accuracy, images/s and the last LR."""
    model.train()
    accum = recipe.grad_accum_steps
    total_loss = torch.zeros((), device=device, dtype=torch.float64)
    correct = torch.zeros((), device=device, dtype=torch.int64)
    seen = 0
    batches = len(loader)
    bar = tqdm(loader, total=batches, desc=progress, leave=False, dynamic_ncols=True, disable=progress is None)
    start = time.perf_counter()
    optimizer.zero_grad(set_to_none=True)
    for i, (x, y) in enumerate(bar):
        last_of_group = (i + 1) % accum == 0 or i + 1 == batches
        # Under DDP, skip the gradient all-reduce for all but the last micro-batch of a group.
        sync = model.no_sync() if hasattr(model, "no_sync") and not last_of_group else contextlib.nullcontext()
        with sync:
            with autocast(device, amp):
                logits = model(x)
                loss = criterion(logits.float(), y)
            (loss / accum).backward()
        if last_of_group:
            if recipe.grad_clip_value is not None:
                nn.utils.clip_grad_value_(model.parameters(), recipe.grad_clip_value)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
        total_loss += loss.detach() * len(y)
        correct += (logits.argmax(1) == y).sum()
        seen += len(y)
        if progress is not None and i % 20 == 0:
            bar.set_postfix(loss=f"{total_loss.item() / seen:.3f}", lr=f"{optimizer.param_groups[0]['lr']:.2e}")
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elapsed = time.perf_counter() - start
    loss_sum, correct_sum, seen_sum = _all_reduce_sum([total_loss.item(), correct.item(), seen], device)
    return {
        "train_loss": loss_sum / max(seen_sum, 1),
        "train_acc": correct_sum / max(seen_sum, 1),
        "lr": optimizer.param_groups[0]["lr"],
        "images_per_s": seen_sum / elapsed,
        "epoch_seconds": elapsed,
    }


@torch.no_grad()
def evaluate(model: nn.Module, loader: DeviceLoader, criterion: nn.Module, device: torch.device,
             amp: bool = False, num_classes: int = 10) -> dict:
    """Loss, accuracy and confusion matrix (rows: true class, columns: predicted) over ``loader``."""
    model.eval()
    total_loss = torch.zeros((), device=device, dtype=torch.float64)
    confusion = torch.zeros(num_classes * num_classes, device=device, dtype=torch.int64)
    for x, y in loader:
        with autocast(device, amp):
            logits = model(x).float()
        total_loss += criterion(logits, y).double() * len(y)
        confusion += torch.bincount(y * num_classes + logits.argmax(1), minlength=num_classes**2)
    confusion = confusion.view(num_classes, num_classes).cpu()
    n = int(confusion.sum())
    return {
        "loss": total_loss.item() / max(n, 1),
        "acc": confusion.diag().sum().item() / max(n, 1),
        "confusion": confusion.tolist(),
    }
