"""The benchmarks' own machinery: the load benchmark's CPU accounting, the served-graph benchmark's forms, the
calibration benchmark's held-out images."""

import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import int8_calibration  # noqa: E402
import numpy as np  # noqa: E402
from serve_load import process_tree_cpu_seconds  # noqa: E402

from export.sample_images import calibration_images  # noqa: E402

BURN_THEN_WAIT = "import time\nt = time.process_time()\nwhile time.process_time() - t < 0.5: pass\ntime.sleep(30)"


def test_process_tree_cpu_counts_a_live_childs_cpu():
    # A worker's CPU is not in its master's own utime until the worker exits; the tree sum must find it.
    before = process_tree_cpu_seconds(os.getpid())
    child = subprocess.Popen([sys.executable, "-c", BURN_THEN_WAIT])
    try:
        deadline = time.monotonic() + 20
        while process_tree_cpu_seconds(child.pid) < 0.45 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert process_tree_cpu_seconds(os.getpid()) - before >= 0.45
    finally:
        child.kill()
        child.wait()


def test_the_served_graph_benchmark_times_the_three_forms_with_the_same_answers(fresh_checkpoint, data_archive,
                                                                                 tmp_path):
    import json

    out = tmp_path / "served_graph.json"
    subprocess.run([sys.executable, str(Path(__file__).resolve().parents[1] / "benchmarks" / "served_graph.py"),
                    str(fresh_checkpoint("whitened_vgg_fast")), "--tta", "none", "--data", str(data_archive),
                    "--seconds", "0.05", "--rounds", "1", "--calibration-images", "16", "--out", str(out)],
                   check=True, capture_output=True)
    forms = json.loads(out.read_text())["forms"]
    assert set(forms) == {"plain", "folded", "folded_fused"}
    assert forms["plain"]["fp32_accuracy"] == forms["folded"]["fp32_accuracy"] == forms["folded_fused"]["fp32_accuracy"]
    assert all(form["int8_single_images_per_s"] > 0 for form in forms.values())


def test_the_calibration_benchmark_scores_agreement_on_images_the_calibration_never_saw(cifar, monkeypatch):
    monkeypatch.setattr(int8_calibration, "CALIBRATION_IMAGES", 700)
    monkeypatch.setattr(int8_calibration, "HELD_OUT_IMAGES", 500)
    held = int8_calibration.held_out_images(cifar)
    assert held.shape == (500, 32, 32, 3)
    seen = {image.tobytes() for image in calibration_images(cifar, 700)}
    assert not any(image.tobytes() in seen for image in held)
    assert len({image.tobytes() for image in held}) == 500
    np.testing.assert_array_equal(held, int8_calibration.held_out_images(cifar))  # the same set every run
