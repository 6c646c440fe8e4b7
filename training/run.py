"""Train a documented model: ``python -m training.run --model dwsep --data PATH --out DIR``.

Defaults reproduce each model's documented recipe (``training/recipes.py``); flags override single
fields. Every epoch writes ``metrics.jsonl`` and ``last.pt`` (and ``best.pt`` when the selection
metric improved); ``--resume DIR/last.pt`` continues a killed run exactly where it stopped. Under
``torchrun --nproc_per_node N -m training.run ...`` it trains with DistributedDataParallel, each
rank taking its share of every epoch's permutation (``--batch-size`` stays the global batch).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shlex
import sys
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn as nn

from common.files import write_text
from training.checkpoint import Checkpoint, CheckpointError, RunArgs, atomic_save, load_checkpoint, make_checkpoint
from training.data import CLASSES, DataError, DeviceLoader, channel_stats, load_cifar10, split_validation
from training.distill import Distillation
from training.engine import (
    Lookahead,
    build_optimizer,
    classification_metrics,
    steps_per_epoch,
    train_one_epoch,
)
from training.hardware import PRECISIONS, Precision, resolve_precision, set_threads
from training.models import (
    PretrainedWeightsError,
    UnknownArchitectureError,
    count_parameters,
    create_model,
    list_models,
    model_info,
)
from training.plots import plot_confusion, plot_curves
from training.recipes import HALF, RECIPES, Recipe, default_recipe
from training.schedules import Schedule, build_schedule, restore_schedule
from training.tta import with_tta
from training.upload_bank import load_bank

WHITENING_IMAGES = 5000  # a data-whitened first layer is fitted to this many training images (airbench)


class UsageError(Exception):
    """Bad flags or flag combinations; printed as a one-line error."""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m training.run", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model", help="registered model name (see --list)")
    p.add_argument("--recipe", help="named recipe (default: the model's documented recipe)")
    p.add_argument("--list", action="store_true", help="list models with parameter counts and seeds")
    p.add_argument("--data", help="CIFAR-10 source (default: $CIFAR10_DATA)")
    p.add_argument("--download", action="store_true", help="download CIFAR-10 with torchvision into --data")
    p.add_argument("--out", help="output directory (default: runs/<model>)")
    p.add_argument("--resume", help="checkpoint (last.pt) of a run to continue")
    p.add_argument("--epochs", type=int, help="override the recipe's epochs")
    p.add_argument("--batch-size", type=int, help="override the recipe's (global) batch size")
    p.add_argument("--lr", type=float, help="override the recipe's (peak) learning rate")
    p.add_argument("--weight-decay", type=float, help="override the recipe's weight decay")
    p.add_argument("--teacher", nargs="+", metavar="CKPT",
                   help="distil from this checkpoint, or from the mean of several (override the recipe's teacher)")
    p.add_argument("--start-from", help="start from this checkpoint's weights, same model (fine-tuning; override "
                   "the recipe's start_from)")
    p.add_argument("--device", default="auto", choices=("auto", "cuda", "cpu"))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--val-size", type=int, default=5000,
                   help="training images held out to select best.pt (0: train on all; best.pt is the last epoch)")
    p.add_argument("--limit", type=int, help="train on the first N training images (smoke runs)")
    p.add_argument("--eval-limit", type=int, help="evaluate on the first N val/test images (smoke runs)")
    p.add_argument("--precision", choices=PRECISIONS,
                   help="training precision; evaluation is always fp32 (default: auto = bf16 autocast where "
                        "the CPU has AMX or AVX512-BF16 or the GPU supports bf16, else fp32; on --resume: the run's)")
    p.add_argument("--amp", action="store_true", help="same as --precision bf16")
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction,
                   help="channels-last memory format (default: on with bf16 on the CPU; on --resume: the run's)")
    p.add_argument("--threads", type=int, help="CPU threads for training (default: every usable CPU)")
    p.add_argument("--compile", action="store_true", help="torch.compile the model")
    p.add_argument("--no-progress", action="store_true", help="no tqdm progress bar")
    args = p.parse_args(argv)
    # Recorded in checkpoints and the weights manifest, so a run can be repeated exactly.
    args.command = "python -m training.run " + shlex.join(sys.argv[1:] if argv is None else argv)
    return args


def print_model_list() -> None:
    print(f"{'model':<18}{'params':>12}  {'seed':<6}{'epochs':>7}  description")
    for name in list_models():
        info = model_info(name)
        params = count_parameters(create_model(name))
        print(f"{name:<18}{params:>12,}  {info.seed:<6}{RECIPES[name].epochs:>7}  {info.summary}")


def _resolve_device(choice: str, local_rank: int) -> torch.device:
    if choice == "cuda" or (choice == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise UsageError("--device cuda asked for, but no CUDA device is available")
        torch.cuda.set_device(local_rank)
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


def _init_distributed(device_choice: str) -> tuple[int, int, int]:
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size == 1:
        return 0, 0, 1
    backend = "nccl" if device_choice != "cpu" and torch.cuda.is_available() else "gloo"
    dist.init_process_group(backend=backend)
    return dist.get_rank(), int(os.environ.get("LOCAL_RANK", "0")), world_size


def _resolve_recipe(args: argparse.Namespace, resumed: Checkpoint | None) -> Recipe:
    if resumed is not None:
        recipe = Recipe.from_dict(resumed["recipe"])
        if args.model and args.model != recipe.model:
            raise UsageError(f"--model {args.model} does not match the checkpoint's {recipe.model}")
        # A resumed run continues the same schedule; only more epochs may be asked for.
        if args.epochs is not None and args.epochs < resumed["epoch"]:
            raise UsageError(f"--epochs {args.epochs} is below the {resumed['epoch']} epochs already done")
        return recipe.replace(epochs=args.epochs)
    if args.recipe:
        if args.recipe not in RECIPES:
            raise UsageError(f"unknown recipe {args.recipe!r}; choose one of: {', '.join(sorted(RECIPES))}")
        recipe = RECIPES[args.recipe]
        if args.model and args.model != recipe.model:
            raise UsageError(f"recipe {args.recipe!r} is for model {recipe.model}, not {args.model}")
    elif args.model:
        model_info(args.model)  # unknown names fail here with the list of known ones
        recipe = default_recipe(args.model)
    else:
        raise UsageError("--model NAME is required (see --list)")
    try:
        return recipe.replace(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                              weight_decay=args.weight_decay, teacher=args.teacher, start_from=args.start_from)
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def _resolve_run_settings(args: argparse.Namespace, resumed: Checkpoint | None, device: torch.device,
                          say) -> tuple[Precision, int | None]:
    """Precision, channels_last and the eval limit: on a resume, the run's own unless a flag overrides them."""
    if args.amp:
        if args.precision not in (None, "bf16"):
            raise UsageError(f"--amp (bf16) contradicts --precision {args.precision}")
        args.precision = "bf16"
    if args.threads is not None and args.threads < 1:
        raise UsageError("--threads must be >= 1")
    if resumed is None:
        return resolve_precision(device, args.precision, args.channels_last), args.eval_limit
    saved = RunArgs.of(resumed)
    saved_values = {"precision": saved.precision, "channels_last": saved.channels_last,
                    "eval_limit": saved.eval_limit}
    flags = {"precision": args.precision, "channels_last": args.channels_last, "eval_limit": args.eval_limit}
    values = {k: saved_values[k] if flags[k] is None else flags[k] for k in saved_values}
    kept = [f"{k} {v}" for k, v in values.items() if flags[k] is None]
    overridden = [f"{k} {v} (the run had {saved_values[k]})" for k, v in values.items() if flags[k] is not None]
    if kept:
        say("resume: keeping the run's " + ", ".join(kept))
    if overridden:
        say("resume: overridden by flags: " + ", ".join(overridden))
    precision = resolve_precision(device, values["precision"], values["channels_last"])
    if flags["precision"] is None and flags["channels_last"] is None:
        layout = " + channels_last" if precision.channels_last else ""
        precision = dataclasses.replace(precision, reason=f"{precision.name}{layout} (the run's own)")
    return precision, values["eval_limit"]


@dataclass(frozen=True)
class Processes:
    """This process's place among the DDP processes (just one without torchrun) and its device."""

    rank: int
    local_rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def say(self, line: str) -> None:
        if self.is_main:
            print(line, flush=True)


@dataclass(frozen=True)
class RunPlan:
    """What this invocation trains: a fresh run as the flags say, or a resumed run as it was."""

    recipe: Recipe
    run_args: RunArgs  # recorded in every checkpoint
    precision: Precision
    out: Path
    stats: tuple | None  # (mean, std) fixed before the data is read; None: the training split's own
    start_weights: dict | None = None  # a fresh run's starting state_dict (the recipe's start_from), read once


@dataclass
class Data:
    """The run's splits as device loaders, and the normalization they apply."""

    train: DeviceLoader
    val: DeviceLoader | None
    test: DeviceLoader
    mean: tuple
    std: tuple

    @property
    def selected_on(self) -> str:
        """What picks best.pt's epoch. Without a validation split the test split must not (that would leak
        it into the reported figure): best.pt is then simply the last epoch, as for a recipe whose length
        was chosen on val."""
        return "val" if self.val is not None else "last"


@dataclass
class Progress:
    """Where the epoch loop stands: nothing done yet, or a resumed run's history."""

    metrics: list[dict] = field(default_factory=list)
    start_epoch: int = 0
    best_score: float = -1.0
    lookahead: dict | None = None  # the saved Lookahead average
    test_confusion: list | None = None  # the latest epoch's, for the plot


@dataclass
class TrainingState:
    model: nn.Module  # what trains: possibly wrapped by DDP or torch.compile
    raw_model: nn.Module  # what checkpoints hold
    optimizer: torch.optim.Optimizer
    scheduler: Schedule
    step_count: int  # optimizer steps per epoch
    lookahead: Lookahead | None
    progress: Progress
    distill: Distillation | None = None


def train(args: argparse.Namespace) -> dict:
    procs = _start_processes(args.device)
    resumed = load_checkpoint(args.resume) if args.resume else None
    plan = _plan_run(args, resumed, procs)
    torch.manual_seed(plan.run_args.seed + procs.rank)
    data = _build_data(args.data, args.download, plan, procs)
    state = _build_state(plan, data, procs, resumed, args.compile)
    result = _train_epochs(plan, data, state, procs, show_progress=procs.is_main and not args.no_progress)
    if procs.world_size > 1:
        dist.destroy_process_group()
    return result


def _start_processes(device_choice: str) -> Processes:
    rank, local_rank, world_size = _init_distributed(device_choice)
    return Processes(rank, local_rank, world_size, _resolve_device(device_choice, local_rank))


def _plan_run(args: argparse.Namespace, resumed: Checkpoint | None, procs: Processes) -> RunPlan:
    precision, eval_limit = _resolve_run_settings(args, resumed, procs.device, procs.say)
    threads = set_threads(args.threads) if procs.device.type == "cpu" else torch.get_num_threads()
    procs.say(f"precision: {precision.reason}" + (f"; {threads} CPU thread(s)" if procs.device.type == "cpu" else ""))
    recipe = _resolve_recipe(args, resumed)
    if recipe.batch_size % procs.world_size:
        raise UsageError(f"batch size {recipe.batch_size} is not divisible by {procs.world_size} processes")
    this_invocation = {"precision": precision.name, "channels_last": precision.channels_last,
                       "eval_limit": eval_limit, "threads": threads, "world_size": procs.world_size}
    if resumed is None:
        run_args = RunArgs(seed=args.seed, val_size=args.val_size, limit=args.limit, command=args.command,
                           recipe_name=args.recipe or recipe.model, **this_invocation)
        out = Path(args.out) if args.out else Path("runs") / recipe.model
        stats = HALF if recipe.normalization == "half" else None
        if recipe.start_from:  # the weights were fitted to their run's normalization; keep it
            start = _load_start(recipe)
            return RunPlan(recipe, run_args, precision, out, (tuple(start["mean"]), tuple(start["std"])),
                           start["state_dict"])
        return RunPlan(recipe, run_args, precision, out, stats)
    # A resumed run sees the same data in the same order, normalized the same way.
    run_args = dataclasses.replace(RunArgs.of(resumed), **this_invocation)
    out = Path(args.out) if args.out else Path(args.resume).parent
    return RunPlan(recipe, run_args, precision, out, (tuple(resumed["mean"]), tuple(resumed["std"])))


def _build_data(source: str | None, download: bool, plan: RunPlan, procs: Processes) -> Data:
    # Rank 0 decodes and caches first; the others then read the cache.
    if procs.is_main:
        cifar = load_cifar10(source, download=download)
    if procs.world_size > 1:
        dist.barrier()
    if not procs.is_main:
        cifar = load_cifar10(source)
    run = plan.run_args
    (train_x, train_y), val = split_validation(cifar.train_images, cifar.train_labels, run.val_size)
    mean, std = plan.stats or channel_stats(train_x)
    if run.limit:
        train_x, train_y = train_x[:run.limit], train_y[:run.limit]
    evaluated = slice(None, run.eval_limit)
    bank = None
    augment = plan.recipe.augment
    if augment.upload_bank:  # rank 0 makes and caches it, the others read the cache
        if procs.is_main:
            bank = load_bank(train_x, augment.upload_bank_copies, run.seed, say=procs.say,
                             formats=augment.upload_bank_formats, native_share=augment.upload_bank_native_share)
        if procs.world_size > 1:
            dist.barrier()
        if not procs.is_main:
            bank = load_bank(train_x, augment.upload_bank_copies, run.seed, say=procs.say,
                             formats=augment.upload_bank_formats, native_share=augment.upload_bank_native_share)

    def loader(x, y, train: bool) -> DeviceLoader:
        per_rank = plan.recipe.batch_size // procs.world_size if train else 500
        return DeviceLoader(x, y, per_rank, procs.device, mean, std, plan.recipe.augment if train else None,
                            shuffle=train, drop_last=False, seed=run.seed, rank=procs.rank if train else 0,
                            world_size=procs.world_size if train else 1, channels_last=plan.precision.channels_last,
                            undamaged_twin=train and bool(plan.recipe.teacher) and not plan.recipe.teacher_sees_damage,
                            upload_bank=bank if train else None)

    return Data(train=loader(train_x, train_y, True),
                val=loader(val[0][evaluated], val[1][evaluated], False) if val else None,
                test=loader(cifar.test_images[evaluated], cifar.test_labels[evaluated], False),
                mean=mean, std=std)


def _build_state(plan: RunPlan, data: Data, procs: Processes, resumed: Checkpoint | None,
                 compile_model: bool) -> TrainingState:
    recipe = plan.recipe
    model = create_model(recipe.model, **recipe.model_kwargs).to(procs.device)
    if hasattr(model, "init_whitening") and resumed is None:  # a resumed run loads its fitted filters
        model.init_whitening(data.train.normalized(WHITENING_IMAGES))
    if recipe.init == "imagenet" and resumed is None:  # a resumed run loads its own weights
        if not hasattr(model, "load_imagenet"):
            raise UsageError(f"the recipe asks for ImageNet weights, which model {recipe.model} does not have")
        try:
            plan.run_args.pretrained = model.load_imagenet()
        except PretrainedWeightsError as exc:
            raise UsageError(str(exc)) from None
        procs.say(f"init: ImageNet-1k weights from {plan.run_args.pretrained}")
    if plan.start_weights is not None:  # a fresh run only: a resumed one loads its own weights
        model.load_state_dict(plan.start_weights)
        procs.say(f"init: the weights of {recipe.start_from}")
    if plan.precision.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(recipe, model)
    step_count = steps_per_epoch(data.train, recipe)
    scheduler = build_schedule(recipe, optimizer, step_count)
    progress = Progress() if resumed is None else _resume(resumed, model, optimizer, scheduler, plan, procs)
    # Built after the resumed weights are in: the average starts from them unless the run saved its own.
    lookahead = Lookahead(model, recipe, recipe.epochs * step_count) if recipe.lookahead_every else None
    if lookahead is not None and progress.lookahead:
        lookahead.load_state_dict(progress.lookahead)
    trained = model
    if procs.world_size > 1:
        trained = nn.parallel.DistributedDataParallel(
            trained, device_ids=[procs.local_rank] if procs.device.type == "cuda" else None)
    if compile_model:
        trained = torch.compile(trained)
    distill = None
    if recipe.teacher:
        distill = Distillation(recipe.teachers, data.mean, data.std, recipe.distill_temperature, recipe.distill_alpha,
                               procs.device, amp=plan.precision.autocast, tta=recipe.teacher_tta)
        shown = "; it sees the views before the upload damage" if data.train.undamaged_twin else ""
        tta = f", its test-time augmentation {recipe.teacher_tta}" if recipe.teacher_tta != "none" else ""
        if distill.external_data and not plan.run_args.pretrained:
            plan.run_args.pretrained = distill.external_data
        procs.say(f"distilling from {' + '.join(recipe.teachers)} (T {recipe.distill_temperature}, "
                  f"alpha {recipe.distill_alpha}"
                  f"{tta}{shown})")
    return TrainingState(trained, model, optimizer, scheduler, step_count, lookahead, progress, distill)


def _load_start(recipe: Recipe) -> Checkpoint:
    """The checkpoint a fine-tuning recipe starts from; it must hold the recipe's model."""
    try:
        start = load_checkpoint(recipe.start_from)
    except (OSError, CheckpointError) as exc:
        raise UsageError(f"cannot start from {recipe.start_from}: {exc}") from None
    if start["arch"] != recipe.model or start["model_kwargs"] != recipe.model_kwargs:
        raise UsageError(f"{recipe.start_from} holds {start['arch']} {start['model_kwargs']}, not the recipe's "
                         f"{recipe.model} {recipe.model_kwargs}")
    return start


def _resume(resumed: Checkpoint, model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Schedule, plan: RunPlan,
            procs: Processes) -> Progress:
    """Load a run's weights, optimizer, schedule and RNG state into the new objects; its history goes on."""
    model.load_state_dict(resumed["state_dict"])
    optimizer.load_state_dict(resumed["optimizer"])  # then the schedule sets this step's LR (and momentum)
    rebuilt = restore_schedule(scheduler, resumed["scheduler"])
    if rebuilt:
        procs.say(f"resume: --epochs {plan.recipe.epochs} differs from the planned {resumed['epochs']}: {rebuilt}")
    _restore_rng(resumed["rng"])
    if procs.rank:  # only rank 0's RNG state is saved: give the other ranks distinct streams again
        torch.manual_seed(plan.run_args.seed + procs.rank + 1_000_003 * resumed["epoch"])
    return Progress(metrics=resumed["metrics"], start_epoch=resumed["epoch"], best_score=resumed["best_score"],
                    lookahead=resumed.get("lookahead"), test_confusion=resumed.get("test_confusion"))


def _train_epochs(plan: RunPlan, data: Data, state: TrainingState, procs: Processes, show_progress: bool) -> dict:
    recipe, progress, device = plan.recipe, state.progress, procs.device
    criterion = nn.CrossEntropyLoss(label_smoothing=recipe.label_smoothing)
    with_test_tta = with_tta(state.raw_model, recipe.tta) if recipe.tta != "none" else None
    if procs.is_main:
        plan.out.mkdir(parents=True, exist_ok=True)
        print(f"{recipe.model}: {count_parameters(state.raw_model):,} params, {len(data.train.labels):,} train / "
              f"{len(data.val.labels) if data.val else 0:,} val / {len(data.test.labels):,} test images, "
              f"device {device}, {procs.world_size} process(es), epochs {progress.start_epoch + 1}..{recipe.epochs}, "
              f"out {plan.out}", flush=True)
    run_start = time.perf_counter()
    for epoch in range(progress.start_epoch, recipe.epochs):
        row = {"epoch": epoch + 1, **_train_epoch(epoch, plan, data, state, criterion, device, show_progress)}
        test, improved = _measure_epoch(row, plan, data, state, with_test_tta, device)
        row.update(time=datetime.now(UTC).isoformat(timespec="seconds"))
        progress.metrics.append(row)
        progress.test_confusion = test["confusion"]
        if procs.is_main:
            print(_format_row(row), flush=True)
            _save_epoch(plan, data, state, test, improved, device)
    if procs.is_main and progress.metrics:
        plot_curves(progress.metrics, plan.out, recipe.model, recipe.label_smoothing)
        plot_confusion(progress.test_confusion, CLASSES, plan.out / "confusion.png",
                       f"{recipe.model}: test confusion (epoch {progress.metrics[-1]['epoch']})")
        print(f"done: test accuracy {progress.metrics[-1]['test_acc']:.4f} after {progress.metrics[-1]['epoch']} "
              f"epochs ({time.perf_counter() - run_start:.0f} s this invocation); {plan.out}", flush=True)
    return progress.metrics[-1] if progress.metrics else {}


def _train_epoch(epoch: int, plan: RunPlan, data: Data, state: TrainingState, criterion: nn.Module,
                 device: torch.device, show_progress: bool) -> dict:
    recipe = plan.recipe
    data.train.set_epoch(epoch)
    whitening_bias = getattr(state.raw_model, "whitening_bias", None)
    if whitening_bias is not None and recipe.whitening_bias_epochs:
        whitening_bias.requires_grad_(epoch < recipe.whitening_bias_epochs)
    figures = train_one_epoch(state.model, data.train, criterion, state.optimizer, state.scheduler, recipe, device,
                              amp=plan.precision.autocast,
                              progress=f"epoch {epoch + 1}/{recipe.epochs}" if show_progress else None,
                              lookahead=state.lookahead, first_step=epoch * state.step_count, distill=state.distill)
    if state.lookahead is not None and epoch + 1 == recipe.epochs:
        state.lookahead.finish()  # the trained model is the weights' average
    return figures


def _measure_epoch(row: dict, plan: RunPlan, data: Data, state: TrainingState, with_test_tta: nn.Module | None,
                   device: torch.device) -> tuple[dict, bool]:
    """Add the epoch's val and test figures to ``row``; return the test figures the checkpoint records and
    whether this epoch is selected for best.pt.

    Val and test curves are the plain model's (cheap); with a TTA recipe the model as exported (TTA in
    the graph) is also measured on the test split for each epoch that a checkpoint file selects.
    """
    progress, criterion = state.progress, nn.CrossEntropyLoss()
    if data.val is not None:
        val = classification_metrics(state.raw_model, data.val, criterion, device)
        row.update(val_loss=val["loss"], val_acc=val["acc"])
    test = classification_metrics(state.raw_model, data.test, criterion, device)
    row.update(test_loss=test["loss"], test_acc=test["acc"])
    improved = data.selected_on == "last" or row["val_acc"] > progress.best_score
    if data.selected_on == "val":
        progress.best_score = max(progress.best_score, row["val_acc"])
    last_epoch = row["epoch"] == plan.recipe.epochs
    if with_test_tta is not None and (last_epoch or (data.selected_on == "val" and improved)):
        test = classification_metrics(with_test_tta, data.test, criterion, device)
        row.update(test_acc_tta=test["acc"])
    return test, improved


def _save_epoch(plan: RunPlan, data: Data, state: TrainingState, test: dict, improved: bool,
                device: torch.device) -> None:
    """last.pt (and best.pt when the epoch is selected) and metrics.jsonl, after the latest epoch."""
    recipe, progress = plan.recipe, state.progress
    row = progress.metrics[-1]
    payload = make_checkpoint(
        state.raw_model, recipe, data.mean, data.std, metrics=progress.metrics, epoch=row["epoch"],
        test_accuracy=test["acc"], test_tta=recipe.tta if "test_acc_tta" in row else "none",
        test_confusion=test["confusion"], selected_on=data.selected_on, best_score=progress.best_score,
        optimizer=state.optimizer.state_dict(), scheduler=state.scheduler.state_dict(),
        lookahead=state.lookahead.state_dict() if state.lookahead is not None else None,
        rng=_rng_state(), args=plan.run_args.to_dict(),
        device_name=torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu")
    atomic_save(payload, plan.out / "last.pt")
    if improved:
        atomic_save(payload, plan.out / "best.pt")
    write_text(plan.out / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in progress.metrics))


def _format_row(row: dict) -> str:
    parts = [f"epoch {row['epoch']:>3}", f"train loss {row['train_loss']:.4f} acc {row['train_acc']:.4f}"]
    if "val_acc" in row:
        parts.append(f"val loss {row['val_loss']:.4f} acc {row['val_acc']:.4f}")
    parts.append(f"test loss {row['test_loss']:.4f} acc {row['test_acc']:.4f}"
                 + (f" (TTA {row['test_acc_tta']:.4f})" if "test_acc_tta" in row else ""))
    parts += [f"lr {row['lr']:.2e}",
              f"{row['images_per_s']:,.0f} img/s", f"{row['epoch_seconds']:.1f} s"]
    return " | ".join(parts)


def _rng_state() -> dict:
    return {"torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def _restore_rng(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.list:
        print_model_list()
        return 0
    try:
        train(args)
    except (UsageError, DataError, CheckpointError, UnknownArchitectureError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: resume with --resume <out>/last.pt", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
