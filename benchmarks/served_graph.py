"""What the served graph's rewrites gain: one checkpoint exported three ways, timed one image per call.

    python benchmarks/served_graph.py [CKPT] [--tta none|flip|...] [--seconds 2] [--rounds 5]

The forms, each exported from ``CKPT`` (default: the default model's packaged checkpoint) by ``export.graph``
and quantized by ``export.quantize.quantize_file`` as ``export.onnx --int8`` does:
- ``plain``: the model as trained behind the plain preprocessing (``export_graph(fold=False)``), int8 with
  onnxruntime's own fusions only (``quantize_file(fuse=False)``): the files shipped before the rewrites;
- ``folded``: ``export.graph.serving_form`` (normalization and BatchNorms folded into the convolutions),
  int8 as above;
- ``folded_fused``: as served now, with each SiLU one kernel (``export.quantize.fuse_silu``).

Each form is scored on all 10,000 test images (fp32 and int8) and timed as the service runs a lone request: one
onnxruntime thread, one image per call. The forms are timed in turn, ``--rounds`` times over, and each keeps its
median, so a slow spell on a shared machine falls on all of them. Writes
``benchmarks/results/served_graph.json`` (``--out``).
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import onnxruntime as ort  # noqa: E402
import torch  # noqa: E402

from common.contract import INPUT_NAME, LOGITS  # noqa: E402
from common.files import write_json  # noqa: E402
from common.inference import cpu_session, session_options  # noqa: E402
from common.machine import bf16_units, cpu_name  # noqa: E402
from common.paths import repo_relative, repo_relative_command  # noqa: E402
from export.graph import export_graph  # noqa: E402
from export.onnx_accuracy import predict  # noqa: E402
from export.quantize import quantize_file  # noqa: E402
from export.sample_images import calibration_images, timing_images  # noqa: E402
from training.checkpoint import load_checkpoint, model_from_checkpoint, recipe_tta  # noqa: E402
from training.data import load_cifar10  # noqa: E402
from training.tta import TTA_MODES, with_tta  # noqa: E402

DEFAULT_DATA = ROOT.parent / "shared" / "data" / "cifar10-jpeg.tar.gz"
FORMS = {"plain": (False, False), "folded": (True, False), "folded_fused": (True, True)}  # (fold, fuse)


def default_checkpoint() -> Path:
    import json

    manifest = json.loads((ROOT / "weights" / "MANIFEST.json").read_text())
    return ROOT / "weights" / manifest["models"][manifest["default_model"]]["checkpoint"]


def single_image_pass(session: ort.InferenceSession, images, seconds: float) -> float:
    done, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds:
        session.run([LOGITS], {INPUT_NAME: images[done % len(images)][None]})
        done += 1
    return done / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", nargs="?", type=Path, help="default: the default model's checkpoint")
    parser.add_argument("--tta", choices=TTA_MODES, help="default: the checkpoint recipe's")
    parser.add_argument("--data", type=Path, default=Path(os.environ.get("CIFAR10_DATA", DEFAULT_DATA)))
    parser.add_argument("--seconds", type=float, default=2.0, help="length of one timed pass")
    parser.add_argument("--rounds", type=int, default=5, help="timed passes per form, interleaved")
    parser.add_argument("--calibration-images", type=int, default=512, help="as export.onnx's (default 512)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "served_graph.json")
    args = parser.parse_args()
    ckpt_path = args.checkpoint or default_checkpoint()
    if not ckpt_path.is_file():
        raise SystemExit(f"served_graph: no checkpoint {ckpt_path}")
    ckpt = load_checkpoint(ckpt_path)
    tta = args.tta or recipe_tta(ckpt)
    model = with_tta(model_from_checkpoint(ckpt), tta).eval()
    cifar = load_cifar10(args.data)
    calibration, timing = calibration_images(cifar, args.calibration_images), timing_images(cifar)
    rows, sessions = {}, {}
    with tempfile.TemporaryDirectory(prefix="served-graph-") as folder, torch.no_grad():
        for form, (fold, fuse) in FORMS.items():
            fp32_file, int8_file = Path(folder) / f"{form}.onnx", Path(folder) / f"{form}.int8.onnx"
            fp32_file.write_bytes(export_graph(model, ckpt["mean"], ckpt["std"], fold=fold).SerializeToString())
            quantize_file(fp32_file, int8_file, calibration, fuse=fuse)
            rows[form] = {"fold": fold, "fuse_silu": fuse}
            for kind, file in (("fp32", fp32_file), ("int8", int8_file)):
                rows[form][f"{kind}_accuracy"] = round(float((predict(cpu_session(file), cifar.test_images)
                                                             == cifar.test_labels).mean()), 4)
            sessions[form] = cpu_session(int8_file, session_options(1))
            sessions[form].run([LOGITS], {INPUT_NAME: timing[:1]})
        rates = {form: [] for form in FORMS}
        for _ in range(args.rounds):
            for form, session in sessions.items():
                rates[form].append(single_image_pass(session, timing, args.seconds))
    for form, row in rows.items():
        row["int8_single_images_per_s"] = round(statistics.median(rates[form]), 1)
        row["int8_single_images_per_s_passes"] = [round(r, 1) for r in rates[form]]
        row["speedup_over_plain"] = round(row["int8_single_images_per_s"]
                                          / statistics.median(rates["plain"]), 3)
        print(form, row, flush=True)
    write_json(args.out, {
        "benchmark": "served_graph",
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "command": repo_relative_command(" ".join(["python", "benchmarks/served_graph.py", *sys.argv[1:]])),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "cpu": cpu_name(),
                    "bf16_units": bf16_units(), "onnxruntime": ort.__version__, "torch": torch.__version__},
        "checkpoint": repo_relative(ckpt_path), "tta": tta, "data": repo_relative(args.data),
        "timing": f"one onnxruntime thread, one image per call, median of {args.rounds} interleaved passes of "
                  f"{args.seconds:g} s",
        "forms": rows,
    })
    print(f"wrote {repo_relative(args.out)}")


if __name__ == "__main__":
    main()
