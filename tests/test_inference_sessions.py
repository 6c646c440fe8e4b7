"""Every onnxruntime session of the project (service, export checks, timings) reads subnormal floats as zero.

x86 CPUs multiply subnormals (|x| < 1.2e-38) on a slow microcode path: a file holding them classified 453 images/s
(batches of 64, one thread) against 17,437 with them read as zero. Whether the setting is in force shows in the
arithmetic: 1e30 * 1e-39 is 1e-9, and 0 when the weight is read as zero. onnxruntime leaves the CPU flag set on
the thread that ran such a session, and the setting holds only where the process's first session asked for it,
so each case runs in a fresh interpreter.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from common.paths import REPO_ROOT

PROBE = """
import numpy as np, onnx
from onnx import TensorProto, helper
from common.inference import cpu_session, session_options
from serving.models import session_options as serving_session_options
weight = helper.make_tensor("w", TensorProto.FLOAT, [1], [1e-39])
graph = helper.make_graph([helper.make_node("Mul", ["x", "w"], ["y"])], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])], [weight])
model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
model.ir_version = 8
onnx.checker.check_model(model)
options = {OPTIONS}
if options == "metadata first":  # export reads a file's metadata before timing it
    from export.metadata import read_metadata
    read_metadata("weights/tutorial.onnx")
    options = session_options(1)
if options == "plain":
    import onnxruntime as ort
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
else:
    session = cpu_session(model.SerializeToString(), options)
print(session.run(None, {"x": np.array([1e30], dtype=np.float32)})[0][0])
"""


def _product(options: str) -> float:
    done = subprocess.run([sys.executable, "-c", PROBE.replace("{OPTIONS}", options)], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return float(done.stdout)


@pytest.mark.parametrize("options", ["None", "session_options(1)", "serving_session_options(1)", '"metadata first"'],
                         ids=["export-default", "one-thread", "service", "after-reading-metadata"])
def test_sessions_read_subnormal_weights_as_zero(options):
    assert _product(options) == 0.0


def test_without_the_setting_the_weight_counts():
    """The probe is fair: a plain onnxruntime session multiplies the subnormal weight."""
    assert _product('"plain"') == pytest.approx(1e-9, rel=1e-3)
