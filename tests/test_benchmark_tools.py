"""The load benchmark's CPU accounting: what it reports per request must include gunicorn's workers."""

import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from serve_load import process_tree_cpu_seconds  # noqa: E402

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
