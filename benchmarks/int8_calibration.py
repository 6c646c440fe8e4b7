"""How faithful each int8 calibration is to the fp32 model it copies.

    python benchmarks/int8_calibration.py [--models whitened_vgg_fast_soup dwsep ...] [--data PATH]

For each ``weights/NAME.onnx`` it quantizes the file four ways with ``export.quantize.quantize_file`` on the
512 calibration images ``export.package`` uses (activation ranges from min/max or from the 0.01-99.99th
percentiles; the layers that read the image quantized or left float) and scores each copy:
- agreement: the share of 10,000 training images the calibration never saw on which the int8 copy answers
  what the fp32 file answers. This is what a calibration is for, and it is measured off the test set, so the
  choice of method is not tuned to the figure the manifest reports;
- its accuracy on the 10,000 test images beside the fp32 file's;
- lone images a second on one onnxruntime thread (how the service answers one request).

Writes ``benchmarks/results/calibration_int8.json``; ``export.quantize`` uses the variant marked ``project``.
"""

from __future__ import annotations

import argparse
import datetime
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
from onnxruntime.quantization import CalibrationMethod  # noqa: E402

from benchmarks.int8 import chosen_models, machine, model_arguments  # noqa: E402
from common.files import write_json  # noqa: E402
from common.inference import cpu_session  # noqa: E402
from common.paths import repo_relative, repo_relative_command  # noqa: E402
from export.onnx_accuracy import predict  # noqa: E402
from export.quantize import CALIBRATION, METHOD, quantize_file, single_image_rate  # noqa: E402
from export.sample_images import calibration_images  # noqa: E402
from training.data import load_cifar10  # noqa: E402

CALIBRATION_IMAGES = 512  # as export.package
HELD_OUT_IMAGES = 10_000
VARIANTS = {  # name -> (activation calibration, image-reading layers left float)
    "minmax, every layer int8": (CalibrationMethod.MinMax, False),
    "percentile, every layer int8": (CalibrationMethod.Percentile, False),
    "minmax, image layers float": (CalibrationMethod.MinMax, True),
    "percentile, image layers float": (CalibrationMethod.Percentile, True),
}


def held_out_images(cifar, seed: int = 1) -> np.ndarray:
    """HELD_OUT_IMAGES training images none of which is among the calibration images."""
    calibration = calibration_images(cifar, CALIBRATION_IMAGES)
    used = {image.tobytes() for image in calibration}
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(cifar.train_labels))
    keep = [i for i in order[: HELD_OUT_IMAGES + 2 * CALIBRATION_IMAGES]
            if cifar.train_images[i].tobytes() not in used][:HELD_OUT_IMAGES]
    return cifar.train_images[np.sort(keep)]


def measure(path: Path, cifar, held: np.ndarray) -> dict:
    reference = cpu_session(path)
    fp32_test = predict(reference, cifar.test_images)
    fp32_held = predict(reference, held)
    row: dict = {"model": path.stem, "fp32_file": repo_relative(path),
                 "fp32_test_accuracy": round(float((fp32_test == cifar.test_labels).mean()), 4), "variants": {}}
    calibration = calibration_images(cifar, CALIBRATION_IMAGES)
    with tempfile.TemporaryDirectory(prefix="int8-calibration-") as folder:
        for name, (method, float_image_layers) in VARIANTS.items():
            int8_file = Path(folder) / f"{name.replace(', ', '_').replace(' ', '-')}.onnx"
            quantize_file(path, int8_file, calibration, calibrate_method=method,
                          float_image_layers=float_image_layers)
            session = cpu_session(int8_file)
            test, held_answers = predict(session, cifar.test_images), predict(session, held)
            row["variants"][name] = {
                "project": method == CALIBRATION and float_image_layers,
                "held_out_agreement": round(float((held_answers == fp32_held).mean()), 4),
                "test_agreement": round(float((test == fp32_test).mean()), 4),
                "test_accuracy": round(float((test == cifar.test_labels).mean()), 4),
                "single_images_per_s": round(single_image_rate(int8_file, cifar.test_images[:1000]), 1),
            }
            print(path.stem, name, row["variants"][name], flush=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    model_arguments(parser)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "calibration_int8.json")
    args = parser.parse_args()
    names = chosen_models(args, "int8_calibration")
    cifar = load_cifar10(args.data)
    held = held_out_images(cifar)
    rows = [measure(args.weights / f"{name}.onnx", cifar, held) for name in names]
    write_json(args.out, {
        "benchmark": "int8_calibration",
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "command": repo_relative_command(" ".join(["python", "benchmarks/int8_calibration.py", *sys.argv[1:]])),
        "machine": machine(),
        "data": repo_relative(args.data),
        "calibration_images": CALIBRATION_IMAGES,
        "held_out_images": len(held),
        "project_method": METHOD,
        "models": rows,
    })
    print(f"wrote {repo_relative(args.out)}")


if __name__ == "__main__":
    main()
