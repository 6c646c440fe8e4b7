"""`python -m export.package`: a finished run becomes a slim checkpoint, a verified ONNX file, a manifest
entry and published curves; bad input is a one-line error that leaves the weights folder untouched."""

import json

import pytest

from export.package import main as package_main
from training.checkpoint import load_checkpoint
from training.run import main as run_main


@pytest.fixture(scope="module")
def finished_run(data_archive, tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "tutorial"
    code = run_main(["--model", "tutorial", "--data", str(data_archive), "--limit", "1000", "--val-size", "500",
                     "--eval-limit", "500", "--epochs", "2", "--batch-size", "32", "--out", str(out),
                     "--no-progress"])
    assert code == 0
    return out


def test_package_writes_weights_manifest_and_curves(finished_run, data_archive, tmp_path, capsys):
    weights, docs = tmp_path / "weights", tmp_path / "docs"
    weights.mkdir()
    assert package_main([str(finished_run), "--data", str(data_archive), "--weights", str(weights),
                         "--docs", str(docs)]) == 0
    assert "tutorial: test accuracy" in capsys.readouterr().out

    manifest = json.loads((weights / "MANIFEST.json").read_text())
    assert manifest["default_model"] == "tutorial"
    entry = manifest["models"]["tutorial"]
    assert entry["epochs"] == entry["epochs_planned"] == 2 and entry["complete"]
    assert entry["recipe_name"] == "tutorial" and entry["parity"]["images"] == 10_000
    assert entry["command"].startswith("python -m training.run --model tutorial")
    slim = load_checkpoint(weights / "tutorial.pt")
    assert not {"optimizer", "scheduler", "rng"} & set(slim)
    assert slim["epoch"] == entry["selected_epoch"]
    evidence = docs / "tutorial"
    assert entry["run_evidence"] == evidence.as_posix()
    assert (evidence / "metrics.jsonl").read_text() == (finished_run / "metrics.jsonl").read_text()
    assert (evidence / "accuracy.png").stat().st_size > 0


def test_package_of_a_non_checkpoint_is_one_line_and_writes_nothing(tmp_path, data_archive, capsys):
    bogus = tmp_path / "best.pt"
    bogus.write_bytes(b"not a checkpoint")
    weights = tmp_path / "weights"
    weights.mkdir()
    assert package_main([str(bogus), "--data", str(data_archive), "--weights", str(weights)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "\n" not in err
    assert list(weights.iterdir()) == []
