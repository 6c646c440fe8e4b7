"""`python -m export.package`: a finished run becomes a slim checkpoint, a verified ONNX file, a manifest
entry and published curves; bad input is a one-line error that leaves the weights folder untouched."""

import json

import pytest

from common.paths import REPO_ROOT
from export.metadata import read_metadata
from export.package import main as package_main
from export.package import split_run_name
from training.checkpoint import load_checkpoint
from training.run import main as run_main


def short_run(data_archive, out, *recipe) -> None:
    code = run_main(["--model", "tutorial", *recipe, "--data", str(data_archive), "--limit", "1000",
                     "--val-size", "500", "--eval-limit", "500", "--epochs", "2", "--batch-size", "32",
                     "--out", str(out), "--no-progress"])
    assert code == 0


@pytest.fixture(scope="module")
def finished_run(data_archive, tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "tutorial"
    short_run(data_archive, out)
    return out


def test_package_writes_weights_manifest_and_curves(finished_run, data_archive, cifar, tmp_path, capsys):
    weights, docs = tmp_path / "weights", tmp_path / "docs"
    weights.mkdir()
    assert package_main([str(finished_run), "--data", str(data_archive), "--weights", str(weights),
                         "--docs", str(docs)]) == 0
    assert "tutorial: test accuracy" in capsys.readouterr().out

    manifest = json.loads((weights / "MANIFEST.json").read_text())
    assert manifest["default_model"] == "tutorial"
    entry = manifest["models"]["tutorial"]
    assert entry["epochs"] == entry["epochs_planned"] == 2 and entry["complete"]
    # parity on the whole test split of --data (the fixture's 500 here; 10,000 for the shipped weights)
    assert entry["recipe_name"] == "tutorial" and entry["parity"]["images"] == len(cifar.test_labels)
    assert entry["command"].startswith("python -m training.run --model tutorial")
    slim = load_checkpoint(weights / "tutorial.pt")
    assert not {"optimizer", "scheduler", "rng"} & set(slim)
    assert slim["epoch"] == entry["selected_epoch"]
    evidence = docs / "tutorial"
    assert (REPO_ROOT / entry["run_evidence"]).resolve() == evidence.resolve()  # recorded relative to the repo
    assert (evidence / "metrics.jsonl").read_text() == (finished_run / "metrics.jsonl").read_text()
    assert (evidence / "accuracy.png").stat().st_size > 0
    # the int8 copy is measured; its file ships only where the service would serve it
    int8 = entry["int8"]
    assert 0 <= int8["test_accuracy"] <= 1 and int8["single_images_per_s"] > 0 and int8["cpu_images_per_s"] > 0
    assert int8["served"] == (int8["accuracy_drop_points"] <= 0.3 and int8["single_image_speedup"] > 1)
    assert (weights / "tutorial.int8.onnx").is_file() == int8["served"]


def test_requantize_remakes_only_the_int8_part_of_packaged_models(finished_run, data_archive, tmp_path, capsys):
    weights = tmp_path / "weights"
    assert package_main([str(finished_run), "--data", str(data_archive), "--weights", str(weights),
                         "--docs", str(tmp_path / "docs")]) == 0
    manifest = json.loads((weights / "MANIFEST.json").read_text())
    manifest["models"]["tutorial"]["int8"] = {"served": True, "stale": True}
    (weights / "MANIFEST.json").write_text(json.dumps(manifest))
    assert package_main(["--requantize", "tutorial", "--data", str(data_archive), "--weights", str(weights)]) == 0
    assert "tutorial: int8 " in capsys.readouterr().out
    after = json.loads((weights / "MANIFEST.json").read_text())
    assert "stale" not in after["models"]["tutorial"]["int8"] and after["models"]["tutorial"]["int8"]["method"]
    assert {k: v for k, v in after["models"]["tutorial"].items() if k != "int8"} == {
        k: v for k, v in manifest["models"]["tutorial"].items() if k != "int8"}
    assert package_main(["--requantize", "nope", "--data", str(data_archive), "--weights", str(weights)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"error: --requantize nope: no such packaged model in {weights}"


def test_remeasure_renews_only_the_speed_figures_and_the_default(finished_run, data_archive, tmp_path, capsys):
    """Speeds measured while trainings shared the cores would choose the default on unequal terms:
    --remeasure measures them again, and only them."""
    weights = tmp_path / "weights"
    assert package_main([str(finished_run), "--data", str(data_archive), "--weights", str(weights),
                         "--docs", str(tmp_path / "docs")]) == 0
    manifest = json.loads((weights / "MANIFEST.json").read_text())
    manifest["models"]["tutorial"]["cpu_images_per_s"] = 1.0  # as if measured on a machine far too busy
    (weights / "MANIFEST.json").write_text(json.dumps(manifest))
    capsys.readouterr()
    assert package_main(["--remeasure", "all", "--data", str(data_archive), "--weights", str(weights)]) == 0
    assert capsys.readouterr().out.startswith("tutorial: ")
    after = json.loads((weights / "MANIFEST.json").read_text())
    entry = after["models"]["tutorial"]
    assert entry["cpu_images_per_s"] > 100 and entry["cpu_measured"] and entry["cpu_measured_on"]
    speed_keys = {"cpu_images_per_s", "cpu_measured", "cpu_measured_on", "int8"}
    assert {k: v for k, v in entry.items() if k not in speed_keys} == {
        k: v for k, v in manifest["models"]["tutorial"].items() if k not in speed_keys}
    int8_before, int8_after = manifest["models"]["tutorial"]["int8"], entry["int8"]
    assert {k for k in int8_before if int8_before[k] != int8_after[k]} <= {
        "cpu_images_per_s", "single_images_per_s", "fp32_single_images_per_s", "single_image_speedup"}
    assert package_main(["--remeasure", "nope", "--data", str(data_archive), "--weights", str(weights)]) == 2
    assert capsys.readouterr().err.strip() == f"error: --remeasure nope: no such packaged model in {weights}"


def test_package_of_a_non_checkpoint_is_one_line_and_writes_nothing(tmp_path, data_archive, capsys):
    bogus = tmp_path / "best.pt"
    bogus.write_bytes(b"not a checkpoint")
    weights = tmp_path / "weights"
    weights.mkdir()
    assert package_main([str(bogus), "--data", str(data_archive), "--weights", str(weights)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "\n" not in err
    assert list(weights.iterdir()) == []


def test_two_runs_of_one_architecture_ship_side_by_side_under_their_names(finished_run, data_archive, tmp_path,
                                                                          tmp_path_factory):
    tuned = tmp_path_factory.mktemp("run") / "tutorial_tuned"
    short_run(data_archive, tuned, "--recipe", "tutorial_tuned")
    weights, docs = tmp_path / "weights", tmp_path / "docs"
    assert package_main([str(finished_run), f"{tuned}:tutorial_tuned", "--data", str(data_archive),
                         "--weights", str(weights), "--docs", str(docs)]) == 0

    models = json.loads((weights / "MANIFEST.json").read_text())["models"]
    assert sorted(models) == ["tutorial", "tutorial_tuned"]
    for name, recipe in (("tutorial", "tutorial"), ("tutorial_tuned", "tutorial_tuned")):
        entry = models[name]
        assert entry["arch"] == "tutorial" and entry["recipe_name"] == recipe
        assert (entry["onnx"], entry["checkpoint"]) == (f"{name}.onnx", f"{name}.pt")
        assert read_metadata(weights / entry["onnx"])["arch"] == "tutorial"
        assert load_checkpoint(weights / entry["checkpoint"])["recipe"]["epochs"] == 2
    assert models["tutorial"]["onnx_sha256"] != models["tutorial_tuned"]["onnx_sha256"]


def test_two_runs_under_one_name_are_refused_before_anything_is_written(fresh_checkpoint, tmp_path, capsys):
    ckpt = str(fresh_checkpoint("tutorial"))
    weights = tmp_path / "weights"
    assert package_main([ckpt, f"{ckpt}:tutorial", "--weights", str(weights)]) == 2
    assert "two runs would ship as tutorial" in capsys.readouterr().err
    assert not weights.exists()


def test_a_run_is_named_by_the_text_after_its_last_colon_when_that_is_a_name():
    assert split_run_name("runs/a") == ("runs/a", None)
    assert split_run_name("runs/a:dwsep_step") == ("runs/a", "dwsep_step")
    assert split_run_name("runs/x:y:alt-1") == ("runs/x:y", "alt-1")
    assert split_run_name("runs/x:y/best.pt") == ("runs/x:y/best.pt", None)  # not a name: part of the path


def test_the_default_is_chosen_on_the_figures_of_the_file_served_under_each_name():
    from export.package import choose_default

    models = {
        "fast": {"test_accuracy": 0.87, "int8": {"served": False, "fp32_single_images_per_s": 7000.0}},
        # too slow in fp32, but its int8 copy is what the service serves under this name
        "heavy": {"test_accuracy": 0.91, "int8": {"served": True, "test_accuracy": 0.909,
                                                   "fp32_single_images_per_s": 400.0, "single_images_per_s": 1200.0}},
    }
    assert choose_default(models, 1000)[0] == "heavy"
    models["heavy"]["int8"]["served"] = False
    assert choose_default(models, 1000)[0] == "fast"


def test_the_default_must_also_hold_up_on_resized_and_re_encoded_uploads():
    """Among the fast models, one whose worst upload variant stays within the bound wins over a more accurate
    one that does not; with none robust, the rule says so and falls back to speed alone."""
    from export.package import choose_default

    def model(accuracy, single, worst_drop):
        return {"test_accuracy": accuracy, "int8": {"served": False, "fp32_single_images_per_s": single},
                "upload_robustness": None if worst_drop is None else {"worst_drop_points": worst_drop}}

    models = {"accurate_fragile": model(0.92, 1500.0, 4.0), "robust": model(0.90, 1100.0, 0.8),
              "robust_but_slow": model(0.95, 300.0, 0.1), "unmeasured": model(0.93, 2000.0, None)}
    chosen, rule = choose_default(models, 1000, 1.0)
    assert chosen == "robust" and "every upload variant within 1 point(s)" in rule
    models["robust"]["upload_robustness"]["worst_drop_points"] = 1.5
    chosen, rule = choose_default(models, 1000, 1.0)
    assert chosen == "unmeasured" and "none had every upload variant" in rule


def test_robustness_figures_are_taken_only_for_the_very_file_served():
    from export.package import upload_robustness

    entry = {"onnx_sha256": "aaa", "int8": {"served": True, "onnx_sha256": "bbb"}}
    measured = {"sha256": "bbb", "native_accuracy": 0.9, "mean_drop_points": 0.5,
                "worst_variant": {"name": "x1-jpeg-q50", "drop_points": 3.0}}
    results = {"images": 500, "date": "2026-12-05T10:00:00+00:00", "models": {"m": measured}}
    assert upload_robustness(results, "m", entry)["worst_drop_points"] == 3.0
    entry["int8"]["served"] = False  # now the fp32 file is served: the figures were for another file
    assert upload_robustness(results, "m", entry) is None
    assert upload_robustness(results, "other", entry) is None


def _folder_hashes(folder) -> dict:
    import hashlib

    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("failing_step", ["export.package.write_json", "export.package.quantize_model"])
def test_a_failure_at_any_step_leaves_weights_byte_for_byte_as_before(finished_run, data_archive, tmp_path,
                                                                      monkeypatch, capsys, failing_step):
    """New model files and the manifest land together or not at all: no half-updated weights/."""
    weights = tmp_path / "weights"
    assert package_main([str(finished_run), "--data", str(data_archive), "--weights", str(weights),
                         "--docs", str(tmp_path / "docs")]) == 0
    before = _folder_hashes(weights)

    def fail(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(failing_step, fail)
    capsys.readouterr()
    assert package_main([f"{finished_run}:tutorial_again", str(finished_run), "--data", str(data_archive),
                         "--weights", str(weights), "--docs", str(tmp_path / "docs")]) == 2
    assert capsys.readouterr().err.strip() == "error: [Errno 28] No space left on device"
    assert _folder_hashes(weights) == before  # nothing new, nothing replaced, no staging folder left behind


def test_a_package_run_reads_the_data_once_scores_fp32_once_and_times_every_figure_alike(
        finished_run, data_archive, cifar, tmp_path, monkeypatch):
    """One protocol: the data set is read once, the fp32 file's accuracy comes from the parity check alone, and
    every speed figure (batched and one image at a time, fp32 and int8) runs on the same contract images."""
    import inspect

    import export.onnx_accuracy
    import export.package
    import export.quantize
    import training.data
    from common.contract import INT8_MAX_DROP_POINTS, THROUGHPUT_IMAGES
    from common.paths import repo_relative

    reads, timed, scored = [], [], []

    def counting(module, name, log, record):
        real = getattr(module, name)

        def wrapper(*args, **kwargs):
            log.append(record(*args, **kwargs))
            return real(*args, **kwargs)
        monkeypatch.setattr(module, name, wrapper)

    counting(training.data, "resolve_data_path", reads, lambda path: path)
    for module in (export.package, export.quantize):
        counting(module, "images_per_second", timed, lambda session, images, *a, **k: len(images))
        counting(module, "single_image_rate", timed, lambda path, images, *a, **k: len(images))
    counting(export.quantize, "predict", scored, lambda session, images, *a, **k: len(images))
    counting(export.onnx_accuracy, "predict", scored, lambda session, images, *a, **k: len(images))

    weights = tmp_path / "weights"
    assert export.package.main([str(finished_run), "--data", str(data_archive), "--weights", str(weights),
                                "--docs", str(tmp_path / "docs")]) == 0
    entry = json.loads((weights / "MANIFEST.json").read_text())["models"]["tutorial"]
    assert len(reads) == 1
    assert entry["dataset"] == repo_relative(data_archive)  # what was read, not a fixed description
    # one pass over the test images (the int8 copy's); the fp32 accuracy is the parity check's
    assert scored.count(len(cifar.test_labels)) == 1
    assert entry["test_accuracy"] == pytest.approx(entry["int8"]["test_accuracy"] + entry["int8"][
        "accuracy_drop_points"] / 100, abs=1e-3)
    assert len(timed) == 5 and set(timed) == {THROUGHPUT_IMAGES}  # fp32 batched; int8 and fp32 both ways
    assert inspect.signature(export.quantize.quantize_model).parameters["max_drop"].default == INT8_MAX_DROP_POINTS


def test_choose_default_takes_new_robustness_figures_without_measuring_anything(finished_run, data_archive, tmp_path):
    """After benchmarks/upload_robustness.py measured a packaged model, --choose-default records its figures
    and chooses again, with no data set and no timing."""
    from export.package import served_sha256

    weights = tmp_path / "weights"
    assert package_main([str(finished_run), "--data", str(data_archive), "--weights", str(weights),
                         "--docs", str(tmp_path / "docs")]) == 0
    entry = json.loads((weights / "MANIFEST.json").read_text())["models"]["tutorial"]
    assert entry["upload_robustness"] is None
    results = tmp_path / "robustness.json"
    results.write_text(json.dumps({"images": 4, "date": "2026-12-05T12:00:00+00:00", "models": {"tutorial": {
        "sha256": served_sha256(entry), "native_accuracy": 0.5, "mean_drop_points": 0.2,
        "worst_variant": {"name": "x2-bicubic-png", "drop_points": 0.5}}}}))
    assert package_main(["--choose-default", "--weights", str(weights), "--robustness", str(results)]) == 0
    manifest = json.loads((weights / "MANIFEST.json").read_text())
    assert manifest["models"]["tutorial"]["upload_robustness"]["worst_drop_points"] == 0.5
    assert manifest["models"]["tutorial"]["cpu_images_per_s"] == entry["cpu_images_per_s"]  # nothing re-timed
    assert "within 1 point(s) of native" in manifest["default_rule"] and "none had" not in manifest["default_rule"]
