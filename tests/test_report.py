"""export/report.py (`make docs`, `make docs-check`): every table of figures in README.md and docs/ is written from
weights/MANIFEST.json, benchmarks/results/ and docs/runs/.

- the committed pages are what the generator writes, and `make test` checks that;
- a figure edited by hand inside a block, or typed by hand outside one, fails the check, naming page and block;
- every accuracy of the manifest (fp32 and int8) is on a page;
- a block whose source is missing is a one-line error, except the pretrained trade-off, which says it was not run;
- the generator needs no torch, and reads the served file's figures as export.package does.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from export import report

ROOT = Path(__file__).resolve().parents[1]


def pages_text(root: Path = ROOT) -> str:
    return "\n".join(p.read_text() for p in report.pages(root))


@pytest.fixture
def repo(tmp_path) -> Path:
    """A copy of what the generator reads and writes: the pages, the manifest, the results, the runs, the
    cluster manifests."""
    shutil.copy(ROOT / "README.md", tmp_path / "README.md")
    shutil.copytree(ROOT / "docs", tmp_path / "docs")
    shutil.copytree(ROOT / "benchmarks" / "results", tmp_path / "benchmarks" / "results")
    shutil.copytree(ROOT / "deploy", tmp_path / "deploy")
    (tmp_path / "weights").mkdir()
    shutil.copy(ROOT / "weights" / "MANIFEST.json", tmp_path / "weights" / "MANIFEST.json")
    return tmp_path


def check(root: Path, capsys) -> tuple[int, str, str]:
    code = report.main(["--check", "--root", str(root)])
    out, err = capsys.readouterr()
    return code, out, err


def test_the_committed_pages_are_what_the_generator_writes(capsys):
    code, out, err = check(ROOT, capsys)
    assert code == 0, f"run `make docs`:\n{out}{err}"
    assert out == ""


def test_make_test_runs_the_docs_check():
    makefile = (ROOT / "Makefile").read_text()
    test_rule = makefile.split("\ntest:", 1)[1].split("\n\n", 1)[0]
    assert "docs-check" in test_rule
    assert "-m export.report --check" in makefile.split("\ndocs-check:", 1)[1].split("\n\n", 1)[0]


def test_a_figure_edited_by_hand_inside_a_block_fails_the_check(repo, capsys):
    manifest = json.loads((repo / "weights" / "MANIFEST.json").read_text())
    default = manifest["models"][manifest["default_model"]]
    shown = report.pct(report.served_accuracy(default))
    readme = repo / "README.md"
    text = readme.read_text()
    start = text.index("<!-- generated: models ")
    assert shown in text[start:]
    edited = text[:start] + text[start:].replace(shown, "99.99%", 1)
    readme.write_text(edited)
    code, out, _ = check(repo, capsys)
    assert code == 1
    assert out.splitlines() == ["README.md: block 'models' differs from its sources (weights/MANIFEST.json)"]
    # `make docs` puts the figure back, and the check passes again
    assert report.main(["--root", str(repo)]) == 0
    assert readme.read_text() == text
    assert check(repo, capsys)[0] == 0


def test_a_changed_source_fails_the_check_on_every_page_that_shows_it(repo, capsys):
    path = repo / "benchmarks" / "results" / "accuracy_vs_minutes_cpu.json"
    data = json.loads(path.read_text())
    data["points"][0]["test_acc_tta"] = 0.5
    path.write_text(json.dumps(data))
    code, out, _ = check(repo, capsys)
    assert code == 1 and out.splitlines() == [
        "docs/benchmarks.md: block 'accuracy-vs-minutes' differs from its sources "
        "(benchmarks/results/accuracy_vs_minutes_cpu.json)"]


def test_a_figure_typed_by_hand_outside_a_block_fails_the_check(repo, capsys):
    page = repo / "docs" / "models.md"
    page.write_text(page.read_text() + "\nThe best model reaches 93.12% and 1,234 images/s.\n")
    code, out, _ = check(repo, capsys)
    assert code == 1
    lines = out.splitlines()
    assert len(lines) == 2 and all(line.startswith("docs/models.md:") for line in lines)
    assert "'93.12%' typed by hand" in lines[0] and "'1,234 images/s' typed by hand" in lines[1]


def test_every_accuracy_of_the_manifest_is_on_a_page():
    text = pages_text()
    manifest = json.loads((ROOT / "weights" / "MANIFEST.json").read_text())
    missing = []
    for name, entry in manifest["models"].items():
        figures = [entry["test_accuracy"]]
        if isinstance(entry.get("int8"), dict) and entry["int8"].get("test_accuracy") is not None:
            figures.append(entry["int8"]["test_accuracy"])
        missing += [f"{name}: {report.pct(f)}" for f in figures if report.pct(f) not in text]
    assert not missing


@pytest.mark.parametrize("remove, block", [
    ("benchmarks/results/time_to_accuracy_cpu.json", "time-to-accuracy"),
    ("weights/MANIFEST.json", "models"),
])
def test_a_missing_source_is_a_one_line_error(repo, capsys, remove, block):
    (repo / remove).unlink()
    code, out, err = check(repo, capsys)
    assert code == 2 and out == ""
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert err.startswith("error: ") and f"block {block!r}" in err and f"{remove} is missing" in err


def test_a_missing_family_of_results_is_a_one_line_error(repo, capsys):
    for path in (repo / "benchmarks" / "results").glob("int8*.json"):
        path.unlink()
    code, _, err = check(repo, capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "block 'int8'" in err and "benchmarks/results/int8*.json matches no file" in err


def test_a_malformed_source_is_a_one_line_error(repo, capsys):
    path = repo / "benchmarks" / "results" / "slow_clients.json"
    data = json.loads(path.read_text())
    del data["runs"][0]["healthz"]
    path.write_text(json.dumps(data))
    code, _, err = check(repo, capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert "block 'slow-clients'" in err and "KeyError" in err


def test_the_pretrained_tradeoff_says_whether_it_was_run(repo, capsys):
    result = repo / "benchmarks" / "results" / "pretrained_tradeoff.json"
    result.unlink(missing_ok=True)
    assert report.main(["--root", str(repo)]) == 0
    text = (repo / "README.md").read_text()
    assert "Not run yet: `benchmarks/results/pretrained_tradeoff.json` does not exist" in text
    assert "python benchmarks/pretrained_tradeoff.py" in text
    run = {"run": "lite0_64", "arch": "efficientnet_lite0", "resolution": 64, "epochs": 8, "train_minutes": 41.5,
           "exports": [{"tta": "none", "fp32": {"test_accuracy": 0.8912, "single_images_per_s": 512.3},
                        "int8": {"test_accuracy": 0.8301, "single_images_per_s": 530.0}}]}
    result.write_text(json.dumps({"command": "python benchmarks/pretrained_tradeoff.py runs/lite0_64",
                                  "date": "2026-12-05", "runs": [run]}))
    assert check(repo, capsys)[0] == 1  # the page still says "not run"
    assert report.main(["--root", str(repo)]) == 0
    text = (repo / "README.md").read_text()
    assert "Not run yet" not in text
    assert "| `lite0_64` | `efficientnet_lite0` | 64 px | 8 | 41.5 | none | 89.12% | 512 | 83.01% | 530 |" in text


def test_broken_markers_are_one_line_errors(repo, capsys):
    page = repo / "docs" / "models.md"
    text = page.read_text()
    page.write_text(text + "\n<!-- generated: models -->\n<!-- end generated: models -->\n")
    code, _, err = check(repo, capsys)
    assert code == 2 and "block 'models' is already on README.md" in err
    page.write_text(text + "\n<!-- generated: no-such-block -->\n<!-- end generated: no-such-block -->\n")
    code, _, err = check(repo, capsys)
    assert code == 2 and "unknown block 'no-such-block'" in err
    page.write_text(text.replace("<!-- end generated: runs -->", ""))
    code, _, err = check(repo, capsys)
    assert code == 2 and "block 'runs' has no line '<!-- end generated: runs -->'" in err
    markers = ("<!-- generated: seed-spread", "<!-- end generated: seed-spread")
    page.write_text("\n".join(line for line in text.split("\n") if not line.startswith(markers)))
    code, _, err = check(repo, capsys)
    assert code == 2 and "no page holds the block(s) seed-spread" in err


def test_the_generator_needs_no_torch():
    code = ("import sys, export.report; bad = {'torch', 'numpy', 'onnx', 'onnxruntime'} & set(sys.modules); "
            "sys.exit(f'imported {bad}' if bad else 0)")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr + done.stdout


def test_the_served_figures_are_the_ones_export_package_uses():
    package = pytest.importorskip("export.package", reason="export.package needs torch: make dev")
    manifest = json.loads((ROOT / "weights" / "MANIFEST.json").read_text())
    for entry in manifest["models"].values():
        assert report.served_accuracy(entry) == package.served_figures(entry)["test_accuracy"]
        assert report.served_single_images_per_s(entry) == package.single_images_per_s(entry)
        assert report.served_sha256(entry) == package.served_sha256(entry)
    assert report.default_by_rule(manifest)[2] == package.choose_default(manifest["models"])[0]


def test_the_readme_is_a_front_door():
    assert len((ROOT / "README.md").read_text().splitlines()) <= 250


def test_the_models_table_names_every_teacher_of_a_student():
    """A student of two teachers (their probabilities averaged) and a soup whose runs had different teachers
    name each of them, as the manifest's recipe lists them."""
    one = {"recipe": {"teacher": "weights/whitened_vgg_best.pt"}}
    two = {"pretrained": "ImageNet-1k pretrained (external data): pkg==1",
           "recipe": {"teacher": ["weights/whitened_vgg_best.pt", "weights/efficientnet_lite0.pt"]}}
    assert report.training_data(one).endswith("distilled from `weights/whitened_vgg_best.pt`")
    assert report.training_data(two) == ("**ImageNet-1k pretrained (external data): pkg==1**; distilled from "
                                         "`weights/whitened_vgg_best.pt` + `weights/efficientnet_lite0.pt`")


def test_the_closer_robustness_look_lists_each_models_variants_over_a_point(repo, capsys):
    """The 2,000-image block names, per model, every content-preserving variant that costs more than the
    default's bar, and "none" for a model within it everywhere; content-changing variants never count."""
    path = repo / "benchmarks" / "results" / "upload_robustness_2000.json"
    data = json.loads(path.read_text())
    first, second = list(data["models"])[:2]
    changing = next(k for k, v in data["variants"].items() if v["content_changing"])
    preserving = next(k for k, v in data["variants"].items() if not v["content_changing"] and k != "native")
    for name in (first, second):
        for variant in data["models"][name]["variants"].values():
            variant["drop_points"], variant["drop_se_points"] = 0.0, 0.1
    data["models"][first]["variants"][preserving]["drop_points"] = 2.5
    data["models"][second]["variants"][changing]["drop_points"] = 9.0
    path.write_text(json.dumps(data))
    assert report.main(["--root", str(repo)]) == 0
    capsys.readouterr()
    page = (repo / "docs" / "benchmarks.md").read_text()
    assert f"- `{first}`: `{preserving}` -2.50 (se 0.10)\n" in page
    assert f"- `{second}`: none\n" in page


def test_the_calibration_table_marks_the_method_export_quantize_uses(repo, capsys):
    """Each cell is agreement with fp32 on held-out training images / test accuracy; the project's variant is bold,
    whichever variant that is in the results file."""
    path = repo / "benchmarks" / "results" / "calibration_int8.json"
    data = json.loads(path.read_text())
    model = data["models"][0]
    names = list(model["variants"])
    for i, name in enumerate(names):
        model["variants"][name].update(project=i == 0, held_out_agreement=0.9901 + i / 10_000, test_accuracy=0.9)
    path.write_text(json.dumps(data))
    assert report.main(["--root", str(repo)]) == 0
    capsys.readouterr()
    row = next(line for line in (repo / "docs" / "benchmarks.md").read_text().splitlines()
               if line.startswith(f"| `{model['model']}` |"))
    assert "| **99.01% / 90.00%** |" in row and "| 99.02% / 90.00% |" in row and "**99.02%" not in row


def test_a_run_on_other_data_says_which_in_the_runs_table(repo, capsys):
    """A run trained and tested on another archive (a variant's floor, benchmarks/variant_archive.py) must not
    read as the project's test accuracy: its row names the archive its log's command line gave."""
    run = repo / "docs" / "runs" / "floor_probe"
    run.mkdir()
    (run / "metrics.jsonl").write_text(json.dumps({"epoch": 1, "train_loss": 1.0, "train_acc": 0.5,
                                                   "epoch_seconds": 10.0, "test_acc": 0.4321}) + "\n")
    (run / "log.txt").write_text(
        "$ python -m training.run --model whitened_vgg_fast --data ~/cifar-runs/cifar10-x1-jpeg-q50.tar.gz\n"
        "precision: fp32: no bf16 here; 2 CPU thread(s)\n"
        "whitened_vgg_fast: 1,971,352 params, 50,000 train / 0 val / 10,000 test images, device cpu\n")
    assert report.main(["--root", str(repo)]) == 0
    capsys.readouterr()
    rows = [line for line in (repo / "docs" / "models.md").read_text().splitlines() if line.startswith("| [")]
    probe = next(line for line in rows if "floor_probe" in line)
    assert "| `whitened_vgg_fast` on `cifar10-x1-jpeg-q50.tar.gz` |" in probe and "43.21%" in probe
    assert not [line for line in rows if "wvf_soup_palettes" in line and " on `" in line]  # the project's data


def test_the_floor_table_splits_a_variants_cost_into_what_training_wins_back_and_what_is_left(repo, capsys):
    path = repo / "docs" / "runs" / "wvf_x1_jpeg_q50" / "floor.json"
    data = json.loads(path.read_text())
    figures = {("stored", "stored"): 0.90, ("stored", "variant"): 0.80, ("variant", "variant"): 0.87,
               ("variant", "stored"): 0.85}
    data["evaluations"] = [{"trained_on": a, "tested_on": b, "tta": "none", "accuracy": acc, "command": "x"}
                           for (a, b), acc in figures.items()]
    path.write_text(json.dumps(data))
    assert report.main(["--root", str(repo)]) == 0
    capsys.readouterr()
    row = next(line for line in (repo / "docs" / "models.md").read_text().splitlines()
               if line.startswith("| `x1-jpeg-q50` |"))
    assert row.endswith("| none | 90.00% | 80.00% | 87.00% | 85.00% | 10.00 | 3.00 | 7.00 |")
    data["evaluations"].pop(1)  # no figure for the clean model on the variant
    path.write_text(json.dumps(data))
    code, _, err = check(repo, capsys)
    assert code != 0 and "floor.json has no accuracy trained on stored, tested on variant with TTA none" in err
    assert len(err.strip().splitlines()) == 1


def test_the_robustness_footer_gives_the_commands_that_added_models_to_the_file(repo, capsys):
    """A model merged in later with --add is remade by its own command, not the file's first one."""
    path = repo / "benchmarks" / "results" / "upload_robustness_2000.json"
    data = json.loads(path.read_text())
    later = "python benchmarks/upload_robustness.py --images 2000 --models some_model --add"
    data["added"] = [{"command": later, "models": ["some_model"]}, {"command": later, "models": ["some_model"]}]
    path.write_text(json.dumps(data))
    assert report.main(["--root", str(repo)]) == 0
    capsys.readouterr()
    footer = next(line for line in (repo / "docs" / "benchmarks.md").read_text().splitlines()
                  if line.startswith("`benchmarks/results/upload_robustness_2000.json`"))
    assert footer.endswith(f"`{data['command']}`; then `{later}`")
