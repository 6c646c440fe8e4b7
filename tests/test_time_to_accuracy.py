"""benchmarks/time_to_accuracy.py: the seconds each run needed, and how it trained, read from its files."""

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from time_to_accuracy import on_project_data, run_summary, training_setting  # noqa: E402

ONE_THREAD = "bf16 autocast + channels_last: the CPU has AVX512-BF16; 1 CPU thread(s)"
RESUMED_TWO = "bf16 + channels_last (the run's own); 2 CPU thread(s)"


def invocation(precision: str, first: int, last: int) -> str:
    return (f"precision: {precision}\n"
            f"m: 3 params, 45,000 train / 5,000 val / 10,000 test images, device cpu, epochs {first}..{last}, out x\n")


def test_a_run_resumed_on_more_threads_says_which_epochs_ran_how():
    log = (invocation(ONE_THREAD, 1, 40) + "epoch   1 | ...\nresume: keeping the run's precision\n"
           + invocation(RESUMED_TWO, 2, 40) + "resume: keeping\n" + invocation(RESUMED_TWO, 21, 40))
    assert training_setting(log, 40) == f"epoch 1: {ONE_THREAD}, then epochs 2-40: {RESUMED_TWO}"


def test_a_run_resumed_on_the_same_threads_reports_its_first_setting_once():
    log = invocation(ONE_THREAD, 1, 10) + "resume\n" + invocation(RESUMED_TWO.replace("2 CPU", "1 CPU"), 6, 10)
    assert training_setting(log, 10) == ONE_THREAD


def test_summary_sums_training_seconds_until_each_threshold(tmp_path):
    rows = [{"epoch": 1, "epoch_seconds": 100.0, "test_acc": 0.70},
            {"epoch": 2, "epoch_seconds": 110.0, "test_acc": 0.81},
            {"epoch": 3, "epoch_seconds": 90.0, "test_acc": 0.79, "test_acc_tta": 0.86}]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    summary = run_summary(tmp_path, thresholds=(0.80, 0.85, 0.90))
    assert summary["seconds_to"] == {"0.80": {"seconds": 210.0, "epoch": 2}, "0.85": {"seconds": 300.0, "epoch": 3}}
    assert summary["final_test_acc"] == 0.86 and summary["train_seconds"] == 300.0
    assert summary["setting"].startswith("not recorded")


def test_a_run_on_an_upload_variants_archive_is_not_a_time_to_accuracy_on_the_test_set(tmp_path):
    """Its test accuracy is on the variant's re-saves (benchmarks/variant_archive.py), so the default list of runs
    leaves it out; a run whose log names the project's archive, or no archive, stays in."""
    runs = {"variant": "--data ~/cifar-runs/cifar10-x1-jpeg-q50.tar.gz", "project":
            "--data ../shared/data/cifar10-jpeg.tar.gz", "unsaid": ""}
    for name, data in runs.items():
        (tmp_path / name).mkdir()
        (tmp_path / name / "log.txt").write_text(f"$ python -m training.run --model m {data}\n"
                                                 + invocation(ONE_THREAD, 1, 2))
    assert [name for name in runs if on_project_data(tmp_path / name)] == ["project", "unsaid"]
