"""Time to accuracy: training seconds each recorded run needed to first reach given test accuracies.

Reads every ``metrics.jsonl`` under ``docs/runs/`` (or the folders given), sums the epochs'
``epoch_seconds`` (the training loop only, see README) up to the first epoch whose test accuracy
reaches each threshold (with TTA where the run measured it), and writes
``benchmarks/results/time_to_accuracy_cpu.json`` with a table on stdout:

    python benchmarks/time_to_accuracy.py                       # all of docs/runs/
    python benchmarks/time_to_accuracy.py docs/runs/wvf_s0 docs/runs/dwsep_onecycle_full

Runs differ in precision, threads and what else shared the machine; each row says which (from the
run's log where it has one), so compare rows with that in mind.
"""

from __future__ import annotations

import argparse
import json
import re
import shlex
from datetime import UTC, datetime
from pathlib import Path

from common.files import write_json
from common.paths import REPO_ROOT as ROOT
from common.paths import repo_relative_command
from export.report import PROJECT_DATA, run_data

THRESHOLDS = (0.80, 0.85, 0.87, 0.90, 0.93, 0.94)


# training.run logs its precision and threads, then the epochs this invocation will train.
INVOCATION = re.compile(r"^precision: (.*)\n.*\bepochs (\d+)\.\.", re.MULTILINE)


def training_setting(log_text: str, epochs: int) -> str:
    """The run's precision and threads from its log; where resumed invocations changed the thread
    count, which epochs ran how (a run started on one thread and resumed on two is not a one-thread run).
    """
    spans: list[tuple[int, str, str]] = []  # (first epoch, threads, the line)
    for match in INVOCATION.finditer(log_text):
        line, first = match.group(1), int(match.group(2))
        threads = re.search(r"(\d+) CPU thread", line)
        threads = threads.group(1) if threads else line
        if spans and spans[-1][1] == threads:
            continue
        spans.append((first, threads, line))
    if not spans:
        match = re.search(r"^precision: (.*)$", log_text, re.MULTILINE)
        return match.group(1) if match else ""
    if len(spans) == 1:
        return spans[0][2]
    parts = []
    for i, (first, _, line) in enumerate(spans):
        last = spans[i + 1][0] - 1 if i + 1 < len(spans) else epochs
        parts.append(f"epoch {first}: {line}" if first == last else f"epochs {first}-{last}: {line}")
    return ", then ".join(parts)


def read_metrics(folder: Path) -> list[dict]:
    """A run's epoch rows from its ``metrics.jsonl`` (none when it has no such file)."""
    path = folder / "metrics.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def on_project_data(folder: Path) -> bool:
    """Whether a run trained and tested on the project's archive (not on an upload variant's, whose test accuracy
    is on other images: benchmarks/variant_archive.py)."""
    log = folder / "log.txt"
    return run_data(log.read_text()) == PROJECT_DATA if log.is_file() else True


def run_summary(folder: Path, thresholds=THRESHOLDS) -> dict | None:
    if not (folder / "metrics.jsonl").is_file():
        return None
    rows = read_metrics(folder)
    elapsed, reached, best = 0.0, {}, 0.0
    for row in rows:
        elapsed += row.get("epoch_seconds", 0.0)
        acc = max(row.get("test_acc", 0.0), row.get("test_acc_tta", 0.0))
        best = max(best, acc)
        for t in thresholds:
            if acc >= t and f"{t:.2f}" not in reached:
                reached[f"{t:.2f}"] = {"seconds": round(elapsed, 1), "epoch": row["epoch"]}
    log = folder / "log.txt"
    setting = training_setting(log.read_text(), len(rows)) if log.is_file() else ""
    setting = setting or "not recorded (fp32 NCHW: trained before --precision existed)"
    return {"run": folder.name, "epochs": len(rows), "train_seconds": round(elapsed, 1),
            "final_test_acc": rows[-1].get("test_acc_tta", rows[-1].get("test_acc")) if rows else None,
            "best_test_acc": best, "setting": setting, "seconds_to": reached}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("runs", nargs="*", help="run folders (default: every folder in docs/runs/)")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "time_to_accuracy_cpu.json"))
    args = p.parse_args(argv)
    folders = [Path(r) for r in args.runs] or sorted(d for d in (ROOT / "docs" / "runs").iterdir()
                                                     if d.is_dir() and on_project_data(d))
    rows = [r for r in (run_summary(f) for f in folders) if r is not None]
    header = f"{'run':<24}{'final':>8}" + "".join(f"{'>=' + format(t, '.0%'):>10}" for t in THRESHOLDS)
    print(header + "   setting")
    for r in rows:
        cells = "".join(f"{r['seconds_to'][f'{t:.2f}']['seconds']:>9.0f}s" if f"{t:.2f}" in r["seconds_to"]
                        else f"{'-':>10}" for t in THRESHOLDS)
        print(f"{r['run']:<24}{r['final_test_acc']:>8.2%}{cells}   {r['setting']}")
    report = {"what": "training-loop seconds until the test accuracy (TTA where measured) first reached each "
                      "threshold; final = the last epoch's",
              "command": repo_relative_command(shlex.join(["python", "benchmarks/time_to_accuracy.py", *args.runs])),
              "date": datetime.now(UTC).isoformat(timespec="seconds"),
              "runs": rows}
    out = Path(args.out)
    write_json(out, report, sort_keys=False)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
