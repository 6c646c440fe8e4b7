"""onnxruntime sessions as this project opens them: the service, the export's checks and every timing.

One place, so that a figure measured by ``export`` is the speed the service gets.
"""

from __future__ import annotations

import os

import onnxruntime as ort

# Subnormal floats (|x| < 1.2e-38) take a slow microcode path on x86 CPUs. Weight decay leaves weights that
# get no gradient decaying into that range: half of staged_baseline's fp32 weights are subnormal, and its file
# classified 453 images/s in batches of 64 on one thread as it is, 17,437 with subnormals read as zero. Reading
# them as zero moves no output by more than float rounding (they are 1e-38 against weights near 1e-2).
# Measured with onnxruntime 1.31: the setting only holds where the process's first session asked for it (a
# plain session created first, even unused, leaves later ones slow), hence every session goes through here.
DENORMAL_AS_ZERO = ("session.set_denormal_as_zero", "1")


def session_options(intra_op_threads: int | None = None) -> ort.SessionOptions:
    """Options every session of the project starts from; ``intra_op_threads`` None: onnxruntime's default
    (every core), else that many threads and one inter-op thread."""
    options = ort.SessionOptions()
    options.add_session_config_entry(*DENORMAL_AS_ZERO)
    if intra_op_threads is not None:
        options.intra_op_num_threads = intra_op_threads
        options.inter_op_num_threads = 1
    return options


def cpu_session(model: str | os.PathLike | bytes, options: ort.SessionOptions | None = None) -> ort.InferenceSession:
    """A CPU session on a file path or a model's bytes, with ``session_options()`` unless given others."""
    model = model if isinstance(model, bytes) else str(model)
    return ort.InferenceSession(model, sess_options=options or session_options(), providers=["CPUExecutionProvider"])
