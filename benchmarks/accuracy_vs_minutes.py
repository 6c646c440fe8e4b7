"""Accuracy against training minutes: one complete run per time budget, its schedule sized to fit.

A short schedule's accuracy part-way through says little about what a run of that length reaches
(the learning rate is still high: `whitened_vgg_fast` sits at 70-78% until its last four epochs), so
every budget gets its own run, trained to the end of its own schedule:

    python benchmarks/accuracy_vs_minutes.py --data ../shared/data/cifar10-jpeg.tar.gz --threads 2 \\
        --minutes 10 20 30 60 --runs ~/cifar-runs/minutes

1. Seconds per epoch: from a one-epoch calibration run of the same model, recipe, threads and data
   (``<runs>/calibration``), or ``--seconds-per-epoch``. Kept in ``<runs>/plan.json`` so that a rerun
   sizes every budget the same way.
2. Budget B minutes: ``floor(B * 60 / seconds per epoch)`` epochs (at least 1) of
   ``python -m training.run --val-size 0 --epochs N`` into ``<runs>/<B>min``. The recipe scales its
   schedule (warm-up, decay, Lookahead, whitening-bias epochs) to N. A run that already has its N
   epochs is read, not retrained; one with a ``last.pt`` is resumed, so the benchmark survives the
   end of a session: run the same command again.
3. Writes ``--out`` (JSON: per budget the epochs, the training-loop seconds actually spent, the
   final test accuracy with and without TTA) and a PNG of accuracy against minutes beside it.

Test accuracy is the 10,000 test images', which no run selects with (all runs train on all 50,000
and keep their last epoch). Training time is the sum of ``epoch_seconds`` (the training loop, as in
the README), so a budget can be overrun by an epoch's variation; the JSON has the real figure.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

from time_to_accuracy import read_metrics

from common.files import write_json
from common.paths import REPO_ROOT as ROOT
from common.paths import repo_relative_command


def epochs_for(minutes: float, seconds_per_epoch: float) -> int:
    """The most whole epochs that fit the budget, and at least one."""
    return max(1, math.floor(minutes * 60 / seconds_per_epoch + 1e-9))


def train(folder: Path, epochs: int, args: argparse.Namespace) -> list[dict]:
    """Bring the run in ``folder`` to ``epochs`` epochs (fresh, resumed, or already there)."""
    done = read_metrics(folder)
    if len(done) >= epochs:
        print(f"{folder}: {len(done)} epochs already trained; reading them")
        return done
    command = [sys.executable, "-m", "training.run", "--model", args.model, "--val-size", "0",
               "--epochs", str(epochs), "--seed", str(args.seed), "--data", args.data, "--out", str(folder),
               "--no-progress"]
    for flag, value in (("--recipe", args.recipe), ("--threads", args.threads), ("--limit", args.limit),
                        ("--eval-limit", args.eval_limit)):
        if value is not None:
            command += [flag, str(value)]
    if (folder / "last.pt").is_file():
        command += ["--resume", str(folder / "last.pt")]
    folder.mkdir(parents=True, exist_ok=True)
    print(f"{folder}: training {epochs} epoch(s): {shlex.join(command)}", flush=True)
    with open(folder / "log.txt", "a") as log:  # the run's log, as time_to_accuracy.py reads it
        status = subprocess.run(command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT).returncode
    if status != 0:
        tail = (folder / "log.txt").read_text().strip().splitlines()[-1:] or ["(empty log)"]
        raise SystemExit(f"error: training into {folder} failed (exit {status}): {tail[0]}")
    rows = read_metrics(folder)
    if len(rows) < epochs:
        raise SystemExit(f"error: {folder} has {len(rows)} of {epochs} epochs after training; see its log.txt")
    return rows[:epochs]


def settings(args: argparse.Namespace) -> dict:
    """What the seconds per epoch depend on: a plan made under other settings is not reused."""
    return {"model": args.model, "recipe": args.recipe, "threads": args.threads, "data": args.data,
            "limit": args.limit, "eval_limit": args.eval_limit}


def seconds_per_epoch(args: argparse.Namespace, runs: Path) -> float:
    plan_path = runs / "plan.json"
    if args.seconds_per_epoch is not None:
        plan = {"seconds_per_epoch": args.seconds_per_epoch, "from": "--seconds-per-epoch"}
    elif plan_path.is_file() and json.loads(plan_path.read_text()).get("settings") == settings(args):
        plan = json.loads(plan_path.read_text())
        print(f"seconds per epoch {plan['seconds_per_epoch']:.1f} from {plan_path} ({plan['from']})")
        return plan["seconds_per_epoch"]
    else:
        rows = train(runs / "calibration", 1, args)
        plan = {"seconds_per_epoch": rows[0]["epoch_seconds"], "from": "a one-epoch calibration run"}
    plan["settings"] = settings(args)
    write_json(plan_path, plan, sort_keys=False)
    print(f"seconds per epoch {plan['seconds_per_epoch']:.1f} ({plan['from']})")
    return plan["seconds_per_epoch"]


def summarize(minutes: float, folder: Path, rows: list[dict]) -> dict:
    last = rows[-1]
    spent = sum(r.get("epoch_seconds", 0.0) for r in rows)
    return {"budget_minutes": minutes, "epochs": len(rows), "train_seconds": round(spent, 1),
            "train_minutes": round(spent / 60, 2), "test_acc": last.get("test_acc"),
            "test_acc_tta": last.get("test_acc_tta"), "run": str(folder)}


def plot(points: list[dict], title: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")  # files only
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    x = [p["train_minutes"] for p in points]
    for key, label in (("test_acc_tta", "test, with TTA"), ("test_acc", "test, without TTA")):
        y = [p[key] for p in points]
        if all(v is not None for v in y):
            ax.plot(x, y, marker="o", label=label)
    for p in points:
        ax.annotate(f"{p['epochs']} ep", (p["train_minutes"], p.get("test_acc_tta") or p["test_acc"]),
                    textcoords="offset points", xytext=(4, -12), fontsize=8)
    ax.set_xlabel("training minutes (training loop, this machine)")
    ax.set_ylabel("test accuracy (10,000 images)")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="whitened_vgg_fast")
    p.add_argument("--recipe", help="named recipe (default: the model's documented one)")
    p.add_argument("--minutes", type=float, nargs="+", default=[10, 20, 30, 60], help="training budgets")
    p.add_argument("--data", default=os.environ.get("CIFAR10_DATA") or "../shared/data/cifar10-jpeg.tar.gz",
                   help="CIFAR-10 source (default $CIFAR10_DATA, else ../shared/data/cifar10-jpeg.tar.gz)")
    p.add_argument("--runs", required=True, help="folder for the runs (keep it outside the work tree)")
    p.add_argument("--threads", type=int, help="CPU threads per run (default: training.run's)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--seconds-per-epoch", type=float, help="skip the calibration run")
    p.add_argument("--limit", type=int, help="train on the first N images (smoke runs only)")
    p.add_argument("--eval-limit", type=int, help="test on the first N images (smoke runs only)")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "accuracy_vs_minutes_cpu.json"))
    args = p.parse_args(argv)
    if any(m <= 0 for m in args.minutes):
        p.error("--minutes must be positive")
    if args.seconds_per_epoch is not None and args.seconds_per_epoch <= 0:
        p.error("--seconds-per-epoch must be positive")
    if not Path(args.data).exists():
        p.error(f"--data {args.data}: no such file")
    args.data = str(Path(args.data).resolve())  # the runs start in the repository root

    runs = Path(args.runs).expanduser().resolve()
    per_epoch = seconds_per_epoch(args, runs)
    points = []
    for minutes in sorted(set(args.minutes)):
        epochs = epochs_for(minutes, per_epoch)
        folder = runs / f"{minutes:g}min-{epochs}ep"  # another plan trains into another folder
        points.append(summarize(minutes, folder, train(folder, epochs, args)))
        print(json.dumps(points[-1]), flush=True)

    out = Path(args.out)
    report = {"what": "final test accuracy of complete runs whose schedules were sized to each training budget",
              "command": repo_relative_command(shlex.join(["python", "benchmarks/accuracy_vs_minutes.py",
                                                           *(argv if argv is not None else sys.argv[1:])])),
              "date": datetime.now(UTC).isoformat(timespec="seconds"),
              "model": args.model, "recipe": args.recipe, "threads": args.threads, "seed": args.seed,
              "seconds_per_epoch": per_epoch, "points": points}
    write_json(out, report, sort_keys=False)
    plot(points, f"{args.model}: accuracy against training minutes", out.with_suffix(".png"))
    print(f"wrote {out} and {out.with_suffix('.png')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
