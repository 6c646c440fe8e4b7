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
from training.distill import Distillation
from training.models import NUM_CLASSES
from training.recipes import Recipe


def parameter_groups(recipe: Recipe, model: nn.Module) -> list[dict]:
    """All trainable parameters, BatchNorm shifts in their own group when the recipe scales their LR.

    That group's weight decay is divided by the same factor, so the absolute decay per step (LR x
    decay) is the same for every parameter (airbench's "bias_scaler"). Built before training starts,
    so it includes parameters that train for part of the run only (a whitening layer's bias): the
    optimizer skips a parameter while its gradient is None.
    """
    norm_shifts = [m.bias for m in model.modules()
                   if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.bias is not None and m.bias.requires_grad]
    params = [p for p in model.parameters() if p.requires_grad]
    if recipe.norm_bias_lr_scale == 1.0 or not norm_shifts:
        return [{"params": params}]
    scale = recipe.norm_bias_lr_scale
    shift_ids = {id(p) for p in norm_shifts}
    return [
        {"params": [p for p in params if id(p) not in shift_ids]},
        {"params": norm_shifts, "lr": recipe.lr * scale, "weight_decay": recipe.weight_decay / scale},
    ]


def build_optimizer(recipe: Recipe, model: nn.Module) -> torch.optim.Optimizer:
    params = parameter_groups(recipe, model)
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


class Lookahead:
    """airbench's Lookahead: every ``every`` steps the weights are pulled to their running average.

    The average (of the whole float state: weights and BatchNorm statistics) moves towards the
    current weights by ``1 - decay``, then the weights are set to it. ``decay`` ramps up as
    ``recipe.lookahead_decay * (step / total) ** 3``: early steps follow the optimizer, late ones are
    averaged strongly. ``finish`` sets the weights to the average, which the trained model keeps.
    """

    def __init__(self, model: nn.Module, recipe: Recipe, total_steps: int):
        self.model, self.every, self.decay = model, recipe.lookahead_every, recipe.lookahead_decay
        self.total = max(total_steps, 1)
        self.average = {k: v.detach().clone() for k, v in model.state_dict().items() if v.is_floating_point()}

    @torch.no_grad()
    def after_step(self, step: int) -> None:
        """Call after optimizer step number ``step`` (1-based, counted over the whole run)."""
        if step % self.every == 0:
            self._pull(self.decay * min(step / self.total, 1.0) ** 3)

    @torch.no_grad()
    def finish(self) -> None:
        self._pull(1.0)

    def _pull(self, decay: float) -> None:
        state = self.model.state_dict()
        for key, avg in self.average.items():
            avg.lerp_(state[key], 1 - decay)
            state[key].copy_(avg)

    def state_dict(self) -> dict:
        return {k: v.detach().float().cpu() for k, v in self.average.items()}

    def load_state_dict(self, state: dict) -> None:
        for key, avg in self.average.items():
            avg.copy_(state[key])


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
                    amp: bool = False, progress: str | None = None, lookahead: Lookahead | None = None,
                    first_step: int = 0, distill: Distillation | None = None) -> dict:
    """One pass over ``loader``; returns train loss (with ``distill``: the combined loss), accuracy, images/s
    and the last LR."""
    model.train()
    accum = recipe.grad_accum_steps
    total_loss = torch.zeros((), device=device, dtype=torch.float64)
    correct = torch.zeros((), device=device, dtype=torch.int64)
    seen = 0
    sizes = loader.batch_sizes()
    batches = len(sizes)
    bar = tqdm(loader, total=batches, desc=progress, leave=False, dynamic_ncols=True, disable=progress is None)
    start = time.perf_counter()
    optimizer.zero_grad(set_to_none=True)
    group_size = 0
    for i, (x, y, *undamaged) in enumerate(bar):
        if i % accum == 0:
            # Images in this optimizer step: the last group of an epoch may hold fewer micro-batches,
            # and its last micro-batch fewer images; each image weighs the same in every step.
            group_size = sum(sizes[i : i + accum])
        last_of_group = (i + 1) % accum == 0 or i + 1 == batches
        # Under DDP, skip the gradient all-reduce for all but the last micro-batch of a group.
        sync = model.no_sync() if hasattr(model, "no_sync") and not last_of_group else contextlib.nullcontext()
        with sync:
            with autocast(device, amp):
                logits = model(x)
                loss = criterion(logits.float(), y)
            if distill is not None:  # the soft term in fp32 (the teacher itself runs in the student's precision)
                loss = distill.loss(undamaged[0] if undamaged else x, logits.float(), y, loss)
            (loss * (len(y) / group_size)).backward()
        if last_of_group:
            if recipe.grad_clip_value is not None:
                nn.utils.clip_grad_value_(model.parameters(), recipe.grad_clip_value)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            first_step += 1
            if lookahead is not None:
                lookahead.after_step(first_step)
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
def classification_metrics(model: nn.Module, loader: DeviceLoader, criterion: nn.Module, device: torch.device,
                           num_classes: int = NUM_CLASSES) -> dict:
    """Loss, accuracy and confusion matrix (rows: true class, columns: predicted) over ``loader``.

    Always fp32, whatever precision trained the model: the accuracy stored in a checkpoint is then
    the one ``training.evaluate`` and the exported ONNX model reproduce.
    """
    model.eval()
    total_loss = torch.zeros((), device=device, dtype=torch.float64)
    confusion = torch.zeros(num_classes * num_classes, device=device, dtype=torch.int64)
    for x, y in loader:
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
