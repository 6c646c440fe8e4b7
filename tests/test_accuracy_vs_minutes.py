"""benchmarks/accuracy_vs_minutes.py: one complete run per training budget, sized from a calibration."""

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from accuracy_vs_minutes import epochs_for, main  # noqa: E402


def test_a_budget_gets_the_whole_epochs_that_fit_and_never_none():
    assert epochs_for(10, 109.0) == 5
    assert epochs_for(60, 120.0) == 30  # exactly fitting counts
    assert epochs_for(0.5, 109.0) == 1


# The small tutorial net keeps these runs to seconds; the script treats every model alike.
def test_budgets_train_to_their_own_schedules_and_a_rerun_retrains_nothing(tmp_path, data_archive, capsys):
    runs, out = tmp_path / "runs", tmp_path / "results" / "minutes.json"
    argv = ["--model", "tutorial", "--data", str(data_archive), "--runs", str(runs), "--threads", "1",
            "--limit", "256", "--eval-limit", "256", "--seconds-per-epoch", "30", "--minutes", "0.5", "1",
            "--out", str(out)]
    assert main(argv) == 0
    report = json.loads(out.read_text())
    assert [(p["budget_minutes"], p["epochs"]) for p in report["points"]] == [(0.5, 1), (1, 2)]
    for point in report["points"]:
        rows = [json.loads(line) for line in (Path(point["run"]) / "metrics.jsonl").read_text().splitlines()]
        assert len(rows) == point["epochs"]
        assert point["train_seconds"] == pytest.approx(sum(r["epoch_seconds"] for r in rows), abs=0.1)
        assert 0.0 <= point["test_acc"] <= 1.0 and point["test_acc"] == rows[-1]["test_acc"]
    assert out.with_suffix(".png").stat().st_size > 1000
    stamps = {p["run"]: (Path(p["run"]) / "metrics.jsonl").stat().st_mtime_ns for p in report["points"]}

    capsys.readouterr()
    assert main(argv) == 0
    assert "already trained" in capsys.readouterr().out
    assert stamps == {p["run"]: (Path(p["run"]) / "metrics.jsonl").stat().st_mtime_ns
                      for p in json.loads(out.read_text())["points"]}


def test_the_calibration_run_sets_the_plan_and_a_rerun_reuses_it(tmp_path, data_archive):
    runs = tmp_path / "runs"
    argv = ["--model", "tutorial", "--data", str(data_archive), "--runs", str(runs), "--threads", "1", "--limit", "256",
            "--eval-limit", "256", "--minutes", "0.01", "--out", str(tmp_path / "m.json")]
    assert main(argv) == 0
    plan = json.loads((runs / "plan.json").read_text())
    calibration = json.loads((runs / "calibration" / "metrics.jsonl").read_text().splitlines()[0])
    assert plan["seconds_per_epoch"] == calibration["epoch_seconds"]
    calibration_log = (runs / "calibration" / "log.txt").read_text()
    assert main(argv) == 0
    assert (runs / "calibration" / "log.txt").read_text() == calibration_log  # not trained again


@pytest.mark.parametrize("flag, value, message", [("--minutes", "0", "--minutes must be positive"),
                                                  ("--data", "/no/such/archive.tar.gz", "no such file")])
def test_bad_arguments_exit_with_one_line(tmp_path, capsys, flag, value, message):
    argv = ["--runs", str(tmp_path), flag, value]
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2 and message in capsys.readouterr().err
