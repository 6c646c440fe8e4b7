"""Training speed of the whitened_vgg models per activation, fp32 versus bf16 autocast, on the CPU.

    python benchmarks/activation_bf16.py                       # -> benchmarks/results/activation_bf16_cpu.json
    python benchmarks/activation_bf16.py --models whitened_vgg_fast --repeats 3 --threads 2

One measurement = ``--steps`` timed training steps (forward, cross-entropy, backward, SGD-Nesterov
step) on a batch of ``--batch`` random images in channels_last, after one untimed warm-up step;
bf16 runs the forward pass under ``torch.autocast("cpu", torch.bfloat16)`` with fp32 weights, as
``training.run`` does. The (activation, precision) cases are interleaved and their order rotated on
every repetition, so load from other processes spreads over all cases; the JSON keeps every
sample and reports the median. Speed does not depend on the pixel values, so no data is needed.
"""

from __future__ import annotations

import argparse
import shlex
import statistics
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import torch
import torch.nn.functional as F

from common.files import write_json
from common.machine import bf16_units, cpu_name
from common.paths import repo_relative_command
from training.models import create_model
from training.models.whitened_vgg import ACTIVATIONS

RESULTS = Path(__file__).resolve().parent / "results"

PRECISIONS = ("fp32", "bf16")


class Case:
    """One model with one activation, its optimizer and batch; ``run(precision, steps)`` -> images/s."""

    def __init__(self, model_name: str, activation: str, batch: int):
        torch.manual_seed(0)
        self.model = create_model(model_name, activation=activation).to(memory_format=torch.channels_last).train()
        params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.SGD(params, lr=0.01, momentum=0.85, nesterov=True, weight_decay=1e-4)
        self.x = torch.randn(batch, 3, 32, 32).contiguous(memory_format=torch.channels_last)
        self.y = torch.randint(0, 10, (batch,))

    def step(self, precision: str) -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            logits = self.model(self.x)
        loss = F.cross_entropy(logits.float(), self.y, label_smoothing=0.2)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()

    def run(self, precision: str, steps: int) -> float:
        self.step(precision)  # warm-up: oneDNN picks and caches its kernels for this precision
        start = time.perf_counter()
        for _ in range(steps):
            self.step(precision)
        return steps * len(self.y) / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default="whitened_vgg_fast,whitened_vgg_best")
    p.add_argument("--activations", default=",".join(ACTIVATIONS))
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--steps", type=int, default=3, help="timed steps per measurement")
    p.add_argument("--repeats", type=int, default=5, help="measurements per case (interleaved)")
    p.add_argument("--out", default=str(RESULTS / "activation_bf16_cpu.json"))
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    activations = args.activations.split(",")
    results: dict = {}
    for model_name in args.models.split(","):
        cases = {a: Case(model_name, a, args.batch) for a in activations}
        order = [(a, prec) for a in activations for prec in PRECISIONS]
        samples: dict[str, dict[str, list[float]]] = {a: {prec: [] for prec in PRECISIONS} for a in activations}
        for r in range(args.repeats):
            shift = r % len(order)
            for activation, precision in order[shift:] + order[:shift]:
                ips = cases[activation].run(precision, args.steps)
                samples[activation][precision].append(round(ips, 1))
                print(f"{model_name} rep {r + 1}/{args.repeats} {activation:<10} {precision}: {ips:7.1f} images/s",
                      flush=True)
        results[model_name] = {
            a: {prec: {"images_per_s_median": round(statistics.median(s), 1), "samples": s}
                for prec, s in per.items()} for a, per in samples.items()}
        for per in results[model_name].values():
            fp32, bf16 = per["fp32"]["images_per_s_median"], per["bf16"]["images_per_s_median"]
            per["bf16_speedup"] = round(bf16 / fp32, 2)
    command = ["python", sys.argv[0], *(sys.argv[1:] if argv is None else argv)]
    report = {
        "command": repo_relative_command(shlex.join(command)),
        "what": "training images/s (forward + cross-entropy + backward + SGD-Nesterov step), channels_last, "
                "random inputs; bf16 = torch.autocast('cpu', bfloat16) around the forward pass, fp32 weights",
        "torch_version": str(torch.__version__),
        "cpu": cpu_name(),
        "cpu_bf16_units": bf16_units() or "none",
        "threads": args.threads,
        "batch": args.batch,
        "steps_per_measurement": args.steps,
        "repeats": args.repeats,
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "results": results,
    }
    out = Path(args.out)
    write_json(out, report, sort_keys=False)
    for model_name, per_model in results.items():
        print(f"{model_name}: median images/s (fp32 / bf16 / bf16 speed-up)")
        for a, per in per_model.items():
            print(f"  {a:<10} {per['fp32']['images_per_s_median']:8.1f} {per['bf16']['images_per_s_median']:8.1f}"
                  f"  x{per['bf16_speedup']}")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
