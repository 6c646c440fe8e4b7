"""int8 against fp32 for each packaged model, as the service would run it.

    python benchmarks/int8.py [--models dwsep whitened_vgg_fast ...] [--data PATH]

For each ``weights/NAME.onnx`` (all of them by default):
1. quantizes it the way ``export.onnx --int8`` does (``export.quantize.quantize_file``: onnxruntime
   static QDQ, per-channel int8 weights, uint8 activations calibrated on 512 training images as that
   module says; results files written since 0.7.0 name it, ``method``) into a temporary file;
2. scores both files on all 10,000 test images;
3. times both as the service runs them: one onnxruntime thread, one image per call (the latency a
   request sees), and batches of 16 (what dynamic batching can gather), best of 3 passes each.

Writes ``benchmarks/results/int8.json``. The service's rule (``serving/models.py``) serves a model's
int8 file only where it loses at most 0.3 points and is faster one image at a time.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import onnxruntime as ort  # noqa: E402

from common.contract import INPUT_NAME, LOGITS  # noqa: E402
from common.files import write_json  # noqa: E402
from common.inference import cpu_session  # noqa: E402
from common.paths import repo_relative, repo_relative_command  # noqa: E402
from export.onnx_accuracy import predict  # noqa: E402
from export.quantize import METHOD, quantize_file  # noqa: E402
from export.sample_images import calibration_images  # noqa: E402
from serving.models import session_options  # noqa: E402
from training.data import load_cifar10  # noqa: E402

DEFAULT_DATA = ROOT.parent / "shared" / "data" / "cifar10-jpeg.tar.gz"


def images_per_second(session: ort.InferenceSession, images: np.ndarray, batch: int, seconds: float) -> float:
    """Best of three passes of about ``seconds`` each, ``batch`` images per call."""
    session.run([LOGITS], {INPUT_NAME: images[:batch]})
    best = 0.0
    for _ in range(3):
        done, start = 0, time.perf_counter()
        while (elapsed := time.perf_counter() - start) < seconds:
            offset = done % (len(images) - batch)
            session.run([LOGITS], {INPUT_NAME: images[offset:offset + batch]})
            done += batch
        best = max(best, done / elapsed)
    return best


def measure(path: Path, cifar, seconds: float) -> dict:
    with tempfile.TemporaryDirectory(prefix="int8-bench-") as folder:
        int8_file = Path(folder) / f"{path.stem}.int8.onnx"
        start = time.perf_counter()
        quantize_file(path, int8_file, calibration_images(cifar, 512))
        quantize_seconds = time.perf_counter() - start
        row: dict = {"model": path.stem, "fp32_file": repo_relative(path),
                     "quantize_seconds": round(quantize_seconds, 1)}
        for kind, file in (("fp32", path), ("int8", int8_file)):
            scoring = cpu_session(file)
            row[f"{kind}_accuracy"] = round(float((predict(scoring, cifar.test_images, 250)
                                                   == cifar.test_labels).mean()), 4)
            served = cpu_session(file, session_options(1))
            row[f"{kind}_images_per_s_batch1"] = round(images_per_second(served, cifar.test_images, 1, seconds), 1)
            row[f"{kind}_images_per_s_batch16"] = round(images_per_second(served, cifar.test_images, 16, seconds), 1)
            row[f"{kind}_file_bytes"] = file.stat().st_size
    row["accuracy_drop_points"] = round(100 * (row["fp32_accuracy"] - row["int8_accuracy"]), 2)
    row["speedup_batch1"] = round(row["int8_images_per_s_batch1"] / row["fp32_images_per_s_batch1"], 3)
    row["speedup_batch16"] = round(row["int8_images_per_s_batch16"] / row["fp32_images_per_s_batch16"], 3)
    row["int8_served"] = row["accuracy_drop_points"] <= 0.3 and row["speedup_batch1"] > 1.0
    return row


def model_arguments(parser: argparse.ArgumentParser) -> None:
    """--models, --weights, --data: which packaged fp32 files to measure on which data."""
    parser.add_argument("--models", nargs="*", help="names in --weights (default: every fp32 .onnx there)")
    parser.add_argument("--weights", type=Path, default=ROOT / "weights")
    parser.add_argument("--data", type=Path, default=Path(os.environ.get("CIFAR10_DATA", DEFAULT_DATA)))


def chosen_models(args: argparse.Namespace, prog: str) -> list[str]:
    """The names ``--models`` gives, or every fp32 file in ``--weights``; a one-line exit naming any missing."""
    names = args.models or sorted(p.stem for p in args.weights.glob("*.onnx") if not p.stem.endswith(".int8"))
    missing = [n for n in names if not (args.weights / f"{n}.onnx").is_file()]
    if missing:
        raise SystemExit(f"{prog}: no {', '.join(missing)} in {args.weights}")
    return names


def machine() -> dict:
    return {"cpus": os.cpu_count(), "platform": platform.platform(), "processor": platform.processor(),
            "onnxruntime": ort.__version__}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    model_arguments(parser)
    parser.add_argument("--seconds", type=float, default=2.0, help="length of one timed pass")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "int8.json")
    args = parser.parse_args()
    names = chosen_models(args, "int8")
    cifar = load_cifar10(args.data)
    rows = []
    for name in names:
        rows.append(measure(args.weights / f"{name}.onnx", cifar, args.seconds))
        print(rows[-1], flush=True)
    write_json(args.out, {
        "benchmark": "int8",
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "command": repo_relative_command(" ".join(["python", "benchmarks/int8.py", *sys.argv[1:]])),
        "machine": machine(),
        "data": repo_relative(args.data),
        "method": METHOD,
        "rule": "int8 served when it loses <= 0.3 points on the 10,000 test images and is faster at batch 1",
        "models": rows,
    })
    print(f"wrote {repo_relative(args.out)}")


if __name__ == "__main__":
    main()
