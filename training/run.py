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
from datetime import datetime, timezone
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn as nn

from training.checkpoint import CheckpointError, atomic_save, load_checkpoint, make_checkpoint
from training.data import CLASSES, DataError, DeviceLoader, channel_stats, load_cifar10, split_validation
from training.engine import (
    Lookahead,
    build_optimizer,
    build_scheduler,
    evaluate,
    restore_scheduler,
    steps_per_epoch,
    train_one_epoch,
)
from training.hardware import PRECISIONS, Precision, resolve_precision, set_threads
from training.models import UnknownModelError, count_parameters, create_model, list_models, model_info
from training.plots import plot_confusion, plot_curves
from training.recipes import HALF, RECIPES, Recipe, default_recipe
from training.tta import with_tta

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


def _resolve_recipe(args: argparse.Namespace, resumed: dict | None) -> Recipe:
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
                              weight_decay=args.weight_decay)
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def _resolve_run_settings(args: argparse.Namespace, resumed: dict | None, device: torch.device,
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
    saved = resumed["args"]
    saved_values = {
        "precision": saved.get("precision", "bf16" if saved.get("amp") else "fp32"),  # older checkpoints: amp
        "channels_last": saved.get("channels_last", False),
        "eval_limit": saved.get("eval_limit"),
    }
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


def train(args: argparse.Namespace) -> dict:
    rank, local_rank, world_size = _init_distributed(args.device)
    device = _resolve_device(args.device, local_rank)
    is_main = rank == 0

    def say(line: str) -> None:
        if is_main:
            print(line, flush=True)

    resumed = load_checkpoint(args.resume) if args.resume else None
    precision, eval_limit = _resolve_run_settings(args, resumed, device, say)
    threads = set_threads(args.threads) if device.type == "cpu" else torch.get_num_threads()
    say(f"precision: {precision.reason}" + (f"; {threads} CPU thread(s)" if device.type == "cpu" else ""))
    recipe = _resolve_recipe(args, resumed)
    if recipe.batch_size % world_size:
        raise UsageError(f"batch size {recipe.batch_size} is not divisible by {world_size} processes")
    out = Path(args.out) if args.out else (Path(args.resume).parent if args.resume else Path("runs") / recipe.model)
    seed = resumed["args"]["seed"] if resumed else args.seed
    val_size = resumed["args"]["val_size"] if resumed else args.val_size
    train_limit = resumed["args"]["limit"] if resumed else args.limit  # a resumed run sees the same data
    command = resumed["args"].get("command", "") if resumed else args.command
    recipe_name = resumed["args"].get("recipe_name", "") if resumed else args.recipe or recipe.model
    torch.manual_seed(seed + rank)

    # Rank 0 decodes and caches first; the others then read the cache.
    if is_main:
        data = load_cifar10(args.data, download=args.download)
    if world_size > 1:
        dist.barrier()
    if not is_main:
        data = load_cifar10(args.data)
    (train_x, train_y), val = split_validation(data.train_images, data.train_labels, val_size)
    if resumed:
        mean, std = tuple(resumed["mean"]), tuple(resumed["std"])
    else:
        mean, std = HALF if recipe.normalization == "half" else channel_stats(train_x)
    if train_limit:
        train_x, train_y = train_x[:train_limit], train_y[:train_limit]
    limit = slice(None, eval_limit)

    def loader(x, y, train: bool) -> DeviceLoader:
        per_rank = recipe.batch_size // world_size if train else 500
        return DeviceLoader(x, y, per_rank, device, mean, std, recipe.augment if train else None,
                            shuffle=train, drop_last=False, seed=seed, rank=rank if train else 0,
                            world_size=world_size if train else 1, channels_last=precision.channels_last)

    train_loader = loader(train_x, train_y, True)
    val_loader = loader(val[0][limit], val[1][limit], False) if val else None
    test_loader = loader(data.test_images[limit], data.test_labels[limit], False)

    model = create_model(recipe.model, **recipe.model_kwargs).to(device)
    if hasattr(model, "init_whitening") and not resumed:
        model.init_whitening(train_loader.normalized(WHITENING_IMAGES))
    if precision.channels_last:
        model = model.to(memory_format=torch.channels_last)
    raw_model = model  # what checkpoints hold: no DDP or compile wrapper
    optimizer = build_optimizer(recipe, model)
    step_count = steps_per_epoch(train_loader, recipe)
    scheduler = build_scheduler(recipe, optimizer, step_count)
    metrics: list[dict] = []
    start_epoch, best_score = 0, -1.0
    if resumed:
        model.load_state_dict(resumed["state_dict"])
        optimizer.load_state_dict(resumed["optimizer"])
        rebuilt = restore_scheduler(scheduler, resumed["scheduler"], recipe, optimizer)
        if rebuilt:
            say(f"resume: --epochs {recipe.epochs} differs from the planned {resumed['epochs']}: {rebuilt}")
        metrics, start_epoch, best_score = resumed["metrics"], resumed["epoch"], resumed["best_score"]
        _restore_rng(resumed["rng"])
        if rank:  # only rank 0's RNG state is saved: give the other ranks distinct streams again
            torch.manual_seed(seed + rank + 1_000_003 * start_epoch)
    lookahead = Lookahead(raw_model, recipe, recipe.epochs * step_count) if recipe.lookahead_every else None
    if lookahead is not None and resumed and resumed.get("lookahead"):
        lookahead.load_state_dict(resumed["lookahead"])
    if world_size > 1:
        model = nn.parallel.DistributedDataParallel(model, device_ids=[local_rank] if device.type == "cuda" else None)
    if args.compile:
        model = torch.compile(model)

    criterion = nn.CrossEntropyLoss(label_smoothing=recipe.label_smoothing)
    # Val and test curves are the plain model's (cheap); with a TTA recipe the model as exported (TTA
    # in the graph) is also measured on the test split for each epoch that a checkpoint file selects.
    with_test_tta = with_tta(raw_model, recipe.tta) if recipe.tta != "none" else None
    eval_criterion = nn.CrossEntropyLoss()
    # Without a validation split the test split must not pick the epoch (that would leak it into the
    # reported figure): best.pt is then simply the last epoch, as for a recipe whose length was chosen on val.
    selected_on = "val" if val_loader is not None else "last"
    if is_main:
        out.mkdir(parents=True, exist_ok=True)
        print(f"{recipe.model}: {count_parameters(raw_model):,} params, {len(train_x):,} train / "
              f"{len(val[0][limit]) if val else 0:,} val / {len(test_loader.labels):,} test images, "
              f"device {device}, {world_size} process(es), epochs {start_epoch + 1}..{recipe.epochs}, "
              f"out {out}", flush=True)
    run_start = time.perf_counter()
    test = None
    for epoch in range(start_epoch, recipe.epochs):
        train_loader.set_epoch(epoch)
        row = {"epoch": epoch + 1}
        whitening_bias = getattr(raw_model, "whitening_bias", None)
        if whitening_bias is not None and recipe.whitening_bias_epochs:
            whitening_bias.requires_grad_(epoch < recipe.whitening_bias_epochs)
        row.update(train_one_epoch(model, train_loader, criterion, optimizer, scheduler, recipe, device,
                                   amp=precision.autocast, progress=None if args.no_progress or not is_main
                                   else f"epoch {epoch + 1}/{recipe.epochs}",
                                   lookahead=lookahead, first_step=epoch * step_count))
        if lookahead is not None and epoch + 1 == recipe.epochs:
            lookahead.finish()  # the trained model is the weights' average
        if val_loader is not None:
            v = evaluate(raw_model, val_loader, eval_criterion, device)
            row.update(val_loss=v["loss"], val_acc=v["acc"])
        test = evaluate(raw_model, test_loader, eval_criterion, device)
        row.update(test_loss=test["loss"], test_acc=test["acc"])
        improved = selected_on == "last" or row["val_acc"] > best_score
        if selected_on == "val":
            best_score = max(best_score, row["val_acc"])
        last_epoch = epoch + 1 == recipe.epochs
        if with_test_tta is not None and (last_epoch or (selected_on == "val" and improved)):
            test = evaluate(with_test_tta, test_loader, eval_criterion, device)
            row.update(test_acc_tta=test["acc"])
        row.update(time=datetime.now(timezone.utc).isoformat(timespec="seconds"))
        metrics.append(row)
        if is_main:
            print(_format_row(row), flush=True)
            payload = make_checkpoint(
                raw_model, recipe, mean, std, metrics=metrics, epoch=epoch + 1,
                test_accuracy=test["acc"], test_tta=recipe.tta if "test_acc_tta" in row else "none",
                test_confusion=test["confusion"], selected_on=selected_on,
                best_score=best_score, optimizer=optimizer.state_dict(), scheduler=scheduler.state_dict(),
                lookahead=lookahead.state_dict() if lookahead is not None else None,
                rng=_rng_state(), args={"seed": seed, "val_size": val_size, "limit": train_limit, "command": command,
                                        "recipe_name": recipe_name,
                                        "precision": precision.name, "channels_last": precision.channels_last,
                                        "eval_limit": eval_limit, "threads": threads, "world_size": world_size},
                device_name=torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu")
            atomic_save(payload, out / "last.pt")
            if improved:
                atomic_save(payload, out / "best.pt")
            _write_jsonl(metrics, out / "metrics.jsonl")
    if is_main and metrics:
        plot_curves(metrics, out, recipe.model, recipe.label_smoothing)
        confusion = test["confusion"] if test else resumed["test_confusion"]
        plot_confusion(confusion, CLASSES, out / "confusion.png",
                       f"{recipe.model}: test confusion (epoch {metrics[-1]['epoch']})")
        print(f"done: test accuracy {metrics[-1]['test_acc']:.4f} after {metrics[-1]['epoch']} epochs "
              f"({time.perf_counter() - run_start:.0f} s this invocation); {out}", flush=True)
    if world_size > 1:
        dist.destroy_process_group()
    return metrics[-1] if metrics else {}


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


def _write_jsonl(rows: list[dict], path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in rows))
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.list:
        print_model_list()
        return 0
    try:
        train(args)
    except (UsageError, DataError, CheckpointError, UnknownModelError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: resume with --resume <out>/last.pt", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
