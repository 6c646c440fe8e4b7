"""`python -m training.run` end to end on small slices of the real data (CPU)."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from training.checkpoint import load_checkpoint
from training.run import main as run_main

PY = sys.executable


def run_cli(*args, timeout=600, **kwargs):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.run([PY, *args], capture_output=True, text=True, timeout=timeout, env=env, **kwargs)


@pytest.fixture(scope="module")
def short_run(data_archive, tmp_path_factory):
    """dwsep, 3 epochs on a 1,000-image slice: the run the tests below inspect."""
    out = tmp_path_factory.mktemp("short-run")
    code = run_main(["--model", "dwsep", "--data", str(data_archive), "--limit", "1000", "--val-size", "500",
                     "--eval-limit", "500", "--epochs", "3", "--lr", "0.02", "--out", str(out), "--no-progress"])
    assert code == 0
    return out


def test_short_run_lowers_the_loss(short_run):
    rows = [json.loads(line) for line in (short_run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2, 3]
    assert rows[-1]["train_loss"] < rows[0]["train_loss"] - 0.05
    for r in rows:
        expected = {"train_loss", "train_acc", "val_loss", "val_acc", "test_loss", "test_acc", "lr", "images_per_s"}
        assert expected <= set(r)
        assert r["images_per_s"] > 0


def test_run_writes_checkpoints_plots_and_a_safe_to_load_checkpoint(short_run):
    for name in ("last.pt", "best.pt", "metrics.jsonl", "loss.png", "accuracy.png", "lr.png", "confusion.png"):
        assert (short_run / name).stat().st_size > 0, name
    ckpt = torch.load(short_run / "last.pt", map_location="cpu", weights_only=True)
    assert ckpt["arch"] == "dwsep" and ckpt["epoch"] == 3 and len(ckpt["classes"]) == 10
    assert ckpt["recipe"]["lr"] == 0.02 and ckpt["recipe"]["milestones"] == [10]
    assert {"optimizer", "scheduler", "rng", "state_dict", "mean", "std", "metrics"} <= set(ckpt)
    assert ckpt["selected_on"] == "val"
    best = load_checkpoint(short_run / "best.pt")
    assert best["best_score"] == max(r["val_acc"] for r in ckpt["metrics"])
    assert not list(short_run.glob(".*.tmp")), "temporary files left behind"


def test_evaluate_reproduces_the_checkpoint_accuracy(short_run, data_archive):
    result = run_cli("-m", "training.evaluate", str(short_run / "last.pt"), "--data", str(data_archive),
                     "--limit", "500", "--json", str(short_run / "eval.json"))
    assert result.returncode == 0, result.stderr
    report = json.loads((short_run / "eval.json").read_text())
    ckpt = load_checkpoint(short_run / "last.pt")
    assert report["test_accuracy"] == pytest.approx(ckpt["test_accuracy"], abs=1e-9)
    assert set(report["per_class_accuracy"]) == set(ckpt["classes"])
    assert "per-class accuracy" in result.stdout


def test_without_a_validation_split_the_test_split_never_picks_the_epoch(data_archive, tmp_path):
    code = run_main(["--model", "tutorial", "--data", str(data_archive), "--limit", "500", "--val-size", "0",
                     "--eval-limit", "200", "--epochs", "3", "--lr", "0.05", "--batch-size", "32",
                     "--out", str(tmp_path), "--no-progress"])
    assert code == 0
    best = load_checkpoint(tmp_path / "best.pt")
    assert best["selected_on"] == "last" and best["epoch"] == 3
    assert all("val_acc" not in row for row in best["metrics"])


def test_killed_run_resumes_at_the_right_epoch_with_identical_state(data_archive, tmp_path):
    common = ["-m", "training.run", "--model", "tutorial_plus", "--data", str(data_archive), "--limit", "600",
              "--val-size", "200", "--eval-limit", "200", "--epochs", "3", "--batch-size", "32", "--no-progress"]
    straight = run_cli(*common, "--out", str(tmp_path / "straight"))
    assert straight.returncode == 0, straight.stderr

    killed_dir = tmp_path / "killed"
    proc = subprocess.Popen([PY, *common, "--out", str(killed_dir)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    metrics = killed_dir / "metrics.jsonl"
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if metrics.exists() and metrics.read_text().count("\n") >= 1:
            proc.send_signal(signal.SIGKILL)  # dies in epoch 2, as a preempted job would
            break
        time.sleep(0.05)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    assert load_checkpoint(killed_dir / "last.pt")["epoch"] == 1

    resumed = run_cli("-m", "training.run", "--resume", str(killed_dir / "last.pt"), "--data", str(data_archive),
                      "--eval-limit", "200", "--no-progress")
    assert resumed.returncode == 0, resumed.stderr
    assert "epochs 2..3" in resumed.stdout
    a, b = load_checkpoint(tmp_path / "straight" / "last.pt"), load_checkpoint(killed_dir / "last.pt")
    assert b["epoch"] == 3 and [m["epoch"] for m in b["metrics"]] == [1, 2, 3]
    for key in a["state_dict"]:
        assert torch.equal(a["state_dict"][key], b["state_dict"][key]), key
    for pa, pb in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values(), strict=True):
        for name in pa:
            assert torch.equal(torch.as_tensor(pa[name]), torch.as_tensor(pb[name])), name
    assert a["scheduler"]["last_epoch"] == b["scheduler"]["last_epoch"]
    assert a["metrics"][-1]["test_acc"] == b["metrics"][-1]["test_acc"]


@pytest.mark.parametrize("args, message", [
    (["--model", "resnet9000"], "unknown model 'resnet9000'"),
    (["--model", "dwsep", "--data", "/nonexistent/cifar"], "data path does not exist"),
    (["--model", "dwsep", "--recipe", "nope"], "unknown recipe 'nope'"),
    (["--model", "dwsep", "--batch-size", "0"], "must be >= 1"),
    (["--resume", "/nonexistent/last.pt"], "checkpoint not found"),
    ([], "--model NAME is required"),
])
def test_bad_arguments_give_a_one_line_error_and_exit_2(args, message, tmp_path):
    result = run_cli("-m", "training.run", *args, "--out", str(tmp_path), cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and message in result.stderr, result.stderr


def test_resume_of_a_non_checkpoint_is_a_clear_error(tmp_path):
    bogus = tmp_path / "last.pt"
    bogus.write_bytes(b"definitely not a checkpoint")
    result = run_cli("-m", "training.run", "--resume", str(bogus))
    assert result.returncode == 2 and "not a readable checkpoint" in result.stderr
    assert result.stderr.strip().count("\n") == 0


def test_list_prints_every_model_with_parameters():
    result = run_cli("-m", "training.run", "--list")
    assert result.returncode == 0
    assert "dwsep" in result.stdout and "204,858" in result.stdout and "backbone6" in result.stdout


def test_torchrun_with_two_cpu_processes_trains(data_archive, tmp_path):
    result = run_cli("-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "training.run",
                     "--model", "tutorial", "--device", "cpu", "--data", str(data_archive), "--limit", "400",
                     "--val-size", "100", "--eval-limit", "100", "--epochs", "2", "--batch-size", "8",
                     "--out", str(tmp_path / "ddp"), "--no-progress", timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "2 process(es)" in result.stdout
    ckpt = load_checkpoint(tmp_path / "ddp" / "last.pt")
    assert ckpt["epoch"] == 2 and ckpt["args"]["world_size"] == 2
    # both ranks' shards are counted: 400 images per epoch in all
    assert ckpt["scheduler"]["last_epoch"] == 2 * (400 // 2 // 4)
