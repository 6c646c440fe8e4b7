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
    assert a["scheduler"]["step"] == b["scheduler"]["step"]
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
    assert ckpt["scheduler"]["step"] == 2 * (400 // 2 // 4)


# --- precision, threads, schedules on resume, gradient accumulation ----------------------------------

def test_default_cpu_training_uses_bf16_and_channels_last_where_the_cpu_has_it(short_run):
    from common.machine import bf16_units

    ckpt = load_checkpoint(short_run / "last.pt")
    has_units = bf16_units() is not None
    assert ckpt["args"]["precision"] == ("bf16" if has_units else "fp32")
    assert ckpt["args"]["channels_last"] is has_units
    # whatever trained it, the checkpoint holds fp32 weights
    assert all(v.dtype == torch.float32 for v in ckpt["state_dict"].values() if v.is_floating_point())


def test_forced_precisions_train_and_are_recorded(data_archive, tmp_path):
    for precision in ("bf16", "fp32"):
        out = tmp_path / precision
        result = run_cli("-m", "training.run", "--model", "tutorial", "--data", str(data_archive), "--limit", "256",
                         "--val-size", "64", "--eval-limit", "64", "--epochs", "1", "--batch-size", "32",
                         "--precision", precision, "--threads", "1", "--out", str(out), "--no-progress")
        assert result.returncode == 0, result.stderr
        assert f"precision: {precision} (asked for)" in result.stdout and "1 CPU thread(s)" in result.stdout
        ckpt = load_checkpoint(out / "last.pt")
        assert ckpt["args"]["precision"] == precision and ckpt["args"]["threads"] == 1
        assert ckpt["args"]["channels_last"] is (precision == "bf16")


def test_contradictory_precision_flags_are_a_one_line_error(tmp_path):
    result = run_cli("-m", "training.run", "--model", "tutorial", "--amp", "--precision", "fp32", cwd=tmp_path)
    assert result.returncode == 2 and result.stderr.strip().count("\n") == 0
    assert "--amp (bf16) contradicts --precision fp32" in result.stderr


@pytest.mark.parametrize("schedule", ["onecycle", "cosine"])
def test_a_schedule_extended_on_resume_continues_as_if_planned_for_the_new_length(schedule):
    from training.engine import build_optimizer
    from training.recipes import Recipe
    from training.schedules import build_schedule, restore_schedule

    def setup(epochs):
        recipe = Recipe(model="tutorial", epochs=epochs, batch_size=8, optimizer="sgd", lr=0.1, momentum=0.9,
                        schedule=schedule)
        model = torch.nn.Linear(2, 2)
        optimizer = build_optimizer(recipe, model)
        return recipe, optimizer, build_schedule(recipe, optimizer, steps_per_epoch=5)

    def step(optimizer, scheduler, n):
        for _ in range(n):
            optimizer.step()
            scheduler.step()

    _, opt_short, sched_short = setup(4)
    step(opt_short, sched_short, 20)  # the whole 4-epoch plan: one-cycle cannot step any further
    recipe, opt_long, sched_long = setup(6)
    opt_long.load_state_dict(opt_short.state_dict())
    message = restore_schedule(sched_long, sched_short.state_dict())
    assert message and "rebuilt for 30 steps (was 20)" in message

    _, opt_ref, sched_ref = setup(6)  # planned for 6 epochs from the start
    step(opt_ref, sched_ref, 20)
    for _ in range(10):
        assert opt_long.param_groups[0]["lr"] == pytest.approx(opt_ref.param_groups[0]["lr"], rel=1e-9, abs=1e-12)
        if schedule == "onecycle":
            assert opt_long.param_groups[0]["momentum"] == pytest.approx(opt_ref.param_groups[0]["momentum"])
        step(opt_long, sched_long, 1)
        step(opt_ref, sched_ref, 1)
    assert opt_long.param_groups[0]["lr"] == pytest.approx(opt_ref.param_groups[0]["lr"], abs=1e-12)


def test_resume_past_the_planned_epochs_trains_on(data_archive, tmp_path):
    common = ["--data", str(data_archive), "--eval-limit", "64", "--no-progress"]
    first = run_cli("-m", "training.run", "--model", "dwsep", "--recipe", "dwsep_onecycle", "--limit", "256",
                    "--val-size", "64", "--epochs", "2", "--batch-size", "64", "--precision", "fp32",
                    "--out", str(tmp_path), *common)
    assert first.returncode == 0, first.stderr
    more = run_cli("-m", "training.run", "--resume", str(tmp_path / "last.pt"), "--epochs", "3", *common[:2],
                   "--no-progress")
    assert more.returncode == 0, more.stderr
    assert "one-cycle schedule rebuilt for 12 steps (was 8)" in more.stdout
    assert "keeping the run's precision fp32, channels_last False" in more.stdout
    assert "overridden by flags" not in more.stdout
    ckpt = load_checkpoint(tmp_path / "last.pt")
    assert ckpt["epoch"] == 3 and ckpt["epochs"] == 3 and ckpt["args"]["precision"] == "fp32"
    assert ckpt["args"]["eval_limit"] == 64 and ckpt["scheduler"]["total_steps"] == 12

    override = run_cli("-m", "training.run", "--resume", str(tmp_path / "last.pt"), "--epochs", "4",
                       "--precision", "bf16", *common[:2], "--no-progress")
    assert override.returncode == 0, override.stderr
    assert "overridden by flags: precision bf16 (the run had fp32)" in override.stdout
    assert load_checkpoint(tmp_path / "last.pt")["args"]["precision"] == "bf16"


def test_accumulated_micro_batches_weigh_every_image_equally(cifar):
    """2 x 32 accumulated equals 1 x 64, and a short last group is not under-scaled (96 images)."""
    from training.data import DeviceLoader
    from training.engine import build_optimizer, train_one_epoch
    from training.models import create_model
    from training.recipes import HALF, Recipe
    from training.schedules import build_schedule

    images, labels = cifar.train_images[:96], cifar.train_labels[:96]

    def train(batch_size, accum):
        torch.manual_seed(0)
        model = create_model("tutorial")  # no batch norm: micro-batches see the same function as one batch
        recipe = Recipe(model="tutorial", epochs=1, batch_size=batch_size, optimizer="sgd", lr=0.5,
                        grad_accum_steps=accum)
        loader = DeviceLoader(images, labels, batch_size, torch.device("cpu"), *HALF)
        optimizer = build_optimizer(recipe, model)
        scheduler = build_schedule(recipe, optimizer, 2)
        train_one_epoch(model, loader, torch.nn.CrossEntropyLoss(), optimizer, scheduler, recipe,
                        torch.device("cpu"))
        return model.state_dict()

    one_big, accumulated = train(64, 1), train(32, 2)  # steps of [64, 32] images either way
    for key in one_big:
        torch.testing.assert_close(accumulated[key], one_big[key], rtol=1e-5, atol=1e-6)


def test_whitened_vgg_recipe_trains_with_lookahead_whitening_and_tta(data_archive, tmp_path):
    """The airbench-style recipe end to end: its checkpoint's TTA figure is what training.evaluate reproduces."""
    result = run_cli("-m", "training.run", "--model", "whitened_vgg_fast", "--data", str(data_archive),
                     "--limit", "1024", "--val-size", "0", "--eval-limit", "200", "--epochs", "2",
                     "--batch-size", "256", "--threads", "1", "--out", str(tmp_path), "--no-progress")
    assert result.returncode == 0, result.stderr
    ckpt = load_checkpoint(tmp_path / "last.pt")
    rows = ckpt["metrics"]
    assert "test_acc_tta" not in rows[0] and "test_acc_tta" in rows[1]  # TTA on the epoch the file selects
    assert ckpt["test_tta"] == "flip_translate" and ckpt["test_accuracy"] == rows[1]["test_acc_tta"]
    assert set(ckpt["lookahead"]) <= set(ckpt["state_dict"]) and "whiten.weight" in ckpt["lookahead"]
    # the whitening filters were fitted to the data, then never trained
    first = torch.load(tmp_path / "last.pt", weights_only=True)["state_dict"]["whiten.weight"]
    assert torch.equal(first[:12], -first[12:])
    report = run_cli("-m", "training.evaluate", str(tmp_path / "last.pt"), "--data", str(data_archive),
                     "--limit", "200", "--json", str(tmp_path / "eval.json"))
    assert report.returncode == 0, report.stderr
    assert json.loads((tmp_path / "eval.json").read_text())["test_accuracy"] == pytest.approx(ckpt["test_accuracy"])
    assert "TTA flip_translate" in report.stdout
