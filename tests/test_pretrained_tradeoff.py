"""benchmarks/pretrained_tradeoff.py: a finished run becomes a trade-off point; an unfinished one is refused."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

from training.run import main as run_main

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("pretrained_tradeoff", ROOT / "benchmarks" / "pretrained_tradeoff.py")
tradeoff = importlib.util.module_from_spec(spec)
spec.loader.exec_module(tradeoff)


def tiny_run(data_archive, out, epochs: int, planned: int | None = None) -> Path:
    args = ["--model", "tutorial", "--data", str(data_archive), "--limit", "256", "--val-size", "0",
            "--eval-limit", "200", "--epochs", str(planned or epochs), "--out", str(out), "--no-progress",
            "--threads", "1"]
    assert run_main(args) == 0
    return out


def test_a_finished_run_gives_its_curve_and_both_files_figures(data_archive, tmp_path):
    run = tiny_run(data_archive, tmp_path / "run", epochs=2)
    out = tmp_path / "tradeoff.json"
    assert tradeoff.main([str(run), "--data", str(data_archive), "--out", str(out)]) == 0
    result = json.loads(out.read_text())["runs"][0]
    assert [p["epoch"] for p in result["curve"]] == [1, 2]
    assert result["curve"][1]["minutes"] >= result["curve"][0]["minutes"]
    (export,) = result["exports"]  # the tutorial recipe has no TTA: one export
    for kind in ("fp32", "int8"):
        assert 0 <= export[kind]["test_accuracy"] <= 1 and export[kind]["single_images_per_s"] > 0
    assert out.with_suffix(".png").stat().st_size > 0


def test_a_partly_trained_run_is_not_a_point(data_archive, tmp_path, capsys):
    run = tmp_path / "run"
    tiny_run(data_archive, run, epochs=1)
    ckpt = run / "last.pt"
    import torch

    state = torch.load(ckpt, weights_only=True)
    state["epochs"] = 5  # planned longer than done
    torch.save(state, ckpt)
    assert tradeoff.main([str(run), "--data", str(data_archive), "--out", str(tmp_path / "t.json")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "not finished (1 of 5 epochs)" in err and "\n" not in err
    assert not (tmp_path / "t.json").exists()
