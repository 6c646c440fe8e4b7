"""Every table of figures in README.md and docs/*.md, written from the files that hold the figures.

    python -m export.report            # rewrite every generated block (`make docs`)
    python -m export.report --check    # exit 1, one line per page and block that differs (`make docs-check`)

A page marks a block with two lines, and everything between them belongs to the generator::

    <!-- generated: NAME ... -->
    <!-- end generated: NAME -->

The figures come from ``weights/MANIFEST.json`` (what ``export.package`` measured for each shipped model),
``benchmarks/results/*.json`` (what each benchmark measured, with its command) and ``docs/runs/*/`` (each
training run's ``metrics.jsonl`` and log); a block says which in its first marker. Each block appears exactly
once across the pages, so every figure is written in one place. ``--check`` also refuses an accuracy or a
speed typed by hand outside a block. A missing or unreadable source is a one-line error (exit status 2).

Only the standard library and ``common`` are imported: the check runs without torch, onnx or a virtualenv.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from common.contract import DEFAULT_MAX_UPLOAD_DROP_POINTS, DEFAULT_MIN_SINGLE_IMAGES_PER_S, NO_TTA
from common.paths import REPO_ROOT

MANIFEST = "weights/MANIFEST.json"
RESULTS = "benchmarks/results"
RUNS = "docs/runs"

BEGIN = re.compile(r"^<!-- generated: ([a-z0-9-]+)(?: .*)? -->$")
END = "<!-- end generated: {name} -->"
ANY_END = re.compile(r"^<!-- end generated: ([a-z0-9-]+) -->$")
# An accuracy (a percentage with decimals) or a speed, outside every generated block: typed by hand.
HAND_FIGURE = re.compile(r"\b\d+\.\d+ ?%|\b\d[\d,.]* (?:single )?(?:images|requests)/s\b")


class ReportError(Exception):
    """A block that cannot be written (a source missing or malformed, a page's markers broken); one line."""


# ---------------------------------------------------------------------------------------------- formatting


def pct(fraction: float) -> str:
    """An accuracy as every page shows it: ``0.9124`` -> ``91.24%``."""
    return f"{100 * fraction:.2f}%"


def rate(per_s: float | None) -> str:
    return "-" if per_s is None else f"{per_s:,.0f}"


def seconds(value: float) -> str:
    return f"{value:,.0f} s"


def points(value: float) -> str:
    return f"{value:.2f}"


def times(ratio: float) -> str:
    return f"{ratio:.2f}x"


def table(header: list[str], rows: list[list[str]], right: set[int] = frozenset()) -> str:
    """A Markdown table; the columns in ``right`` are numbers, aligned right."""
    align = ["---:" if i in right else "---" for i in range(len(header))]
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join(align) + " |"]
    lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def code(text: str) -> str:
    return f"`{text}`"


def day(timestamp: str) -> str:
    return str(timestamp)[:10]


# ------------------------------------------------------------------------------------------------ sources


class Sources:
    """The files the blocks read, each read once, relative to the repository root."""

    def __init__(self, root: Path):
        self.root = root
        self._json: dict[str, object] = {}
        self.page_dir = root  # the folder of the page being written, which links are relative to

    def path(self, relative: str) -> Path:
        return self.root / relative

    def link(self, relative: str) -> str:
        """A Markdown link target from the page being written to a repository path."""
        return Path(os.path.relpath(self.root / relative, self.page_dir)).as_posix()

    def exists(self, relative: str) -> bool:
        return self.path(relative).is_file()

    def json(self, relative: str, made_by: str) -> dict:
        if relative not in self._json:
            path = self.path(relative)
            if not path.is_file():
                raise ReportError(f"{relative} is missing; it is written by `{made_by}`")
            try:
                self._json[relative] = json.loads(path.read_text())
            except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
                raise ReportError(f"{relative} cannot be read: {exc}") from None
        return self._json[relative]

    def results(self, pattern: str, made_by: str) -> list[tuple[str, dict]]:
        """(repo-relative name, contents) of every results file matching ``pattern``, by name."""
        names = sorted(p.name for p in self.path(RESULTS).glob(pattern)) if self.path(RESULTS).is_dir() else []
        if not names:
            raise ReportError(f"{RESULTS}/{pattern} matches no file; they are written by `{made_by}`")
        return [(f"{RESULTS}/{name}", self.json(f"{RESULTS}/{name}", made_by)) for name in names]

    def manifest(self) -> dict:
        manifest = self.json(MANIFEST, "python -m export.package RUN... --data PATH")
        if not isinstance(manifest.get("models"), dict) or not manifest["models"]:
            raise ReportError(f"{MANIFEST} lists no models")
        return manifest


def need(mapping: dict, key: str, where: str):
    """``mapping[key]``, or a one-line error naming the file and the field."""
    if not isinstance(mapping, dict) or key not in mapping:
        raise ReportError(f"{where} has no field {key!r}")
    return mapping[key]


# ------------------------------------------------------------------------------------------ the manifest


def int8_block(entry: dict) -> dict:
    return entry["int8"] if isinstance(entry.get("int8"), dict) else {}


def served_int8(entry: dict) -> bool:
    return bool(int8_block(entry).get("served"))


def served_accuracy(entry: dict) -> float:
    """Test accuracy of the file served under the model's name (its int8 copy where that is served), as
    ``export.package.served_figures`` picks it."""
    return int8_block(entry)["test_accuracy"] if served_int8(entry) else entry["test_accuracy"]


def served_single_images_per_s(entry: dict) -> float | None:
    """Lone images/s on one onnxruntime thread of the served file, as ``export.package.single_images_per_s``
    reads it (export.quantize times the fp32 file too, so an fp32-served model has it in its int8 block)."""
    int8 = int8_block(entry)
    return int8.get("single_images_per_s") if int8.get("served") else int8.get("fp32_single_images_per_s")


def training_data(entry: dict) -> str:
    label = entry.get("pretrained")
    text = f"**{label}**" if label else "from scratch (CIFAR-10 only)"
    recipe = entry.get("recipe") or {}
    if recipe.get("members"):  # an ensemble (training.ensemble): its members say how each was trained
        text = f"{text}; ensemble of " + " + ".join(code(m) for m in recipe["members"])
    if recipe.get("soup_of"):  # a weight average (training.soup) of runs of one network
        text = f"{text}; weight average (soup) of " + " + ".join(code(m) for m in recipe["soup_of"])
    teacher = recipe.get("teacher")  # one checkpoint, or a list of them (their probabilities averaged)
    if not teacher:
        return text
    teachers = [teacher] if isinstance(teacher, str) else teacher
    return f"{text}; distilled from " + " + ".join(code(t) for t in teachers)


def tta(entry: dict) -> str:
    return entry.get("tta") or NO_TTA


def name_cell(name: str, manifest: dict) -> str:
    return f"**{code(name)}** (default)" if name == manifest.get("default_model") else code(name)


def by_served_accuracy(manifest: dict) -> list[tuple[str, dict]]:
    return sorted(manifest["models"].items(), key=lambda item: (-served_accuracy(item[1]), item[0]))


def block_models(src: Sources) -> str:
    manifest = src.manifest()
    rows = [[name_cell(name, manifest), pct(served_accuracy(e)), rate(served_single_images_per_s(e)),
             "int8" if served_int8(e) else "fp32", tta(e), training_data(e)]
            for name, e in by_served_accuracy(manifest)]
    return table(["model", "test accuracy (served file)", "single images/s (1 thread)", "served as", "TTA",
                  "training data"], rows, right={1, 2})


def robust_enough(entry: dict) -> bool:
    robustness = entry.get("upload_robustness")
    return isinstance(robustness, dict) and robustness.get("worst_drop_points", 1e9) <= DEFAULT_MAX_UPLOAD_DROP_POINTS


def default_by_rule(manifest: dict) -> tuple[list[str], list[str], str]:
    """(the models over the speed bar, those also within the robustness bar, the one the rule picks), most accurate
    first, as ``export.package.choose_default`` decides."""
    ranked = by_served_accuracy(manifest)
    fast = [n for n, e in ranked if (served_single_images_per_s(e) or 0) >= DEFAULT_MIN_SINGLE_IMAGES_PER_S]
    robust = [n for n in fast if robust_enough(manifest["models"][n])]
    return fast, robust, (robust or fast or [n for n, _ in ranked])[0]


def block_default_model(src: Sources) -> str:
    manifest = src.manifest()
    models = manifest["models"]
    default = need(manifest, "default_model", MANIFEST)
    rule = need(manifest, "default_rule", MANIFEST)
    if default not in models:
        raise ReportError(f"{MANIFEST}: default_model {default!r} is not one of its models")
    entry = models[default]
    fast, robust, chosen_by_rule = default_by_rule(manifest)
    lines = [
        f"The service answers with **{code(default)}** when a request names no model: served "
        f"{'int8' if served_int8(entry) else 'fp32'}, {pct(served_accuracy(entry))} on the "
        f"{entry.get('test_images', 10000):,} test images, {rate(served_single_images_per_s(entry))} single "
        "images/s on one thread.",
        "",
        f"- The rule (`export.package`, `choose_default`), as the manifest records it: *{rule}*.",
        f"- Its bars (`common/contract.py`): at least {DEFAULT_MIN_SINGLE_IMAGES_PER_S:,.0f} single images/s "
        f"(`DEFAULT_MIN_SINGLE_IMAGES_PER_S`), and every content-preserving upload variant within "
        f"{DEFAULT_MAX_UPLOAD_DROP_POINTS:g} point(s) of the native upload (`DEFAULT_MAX_UPLOAD_DROP_POINTS`).",
    ]
    measured = (src.json(ROBUSTNESS, ROBUSTNESS_COMMAND).get("models") or {}) if src.exists(ROBUSTNESS) else {}
    worst = []
    for name in fast:
        robustness, later = models[name].get("upload_robustness"), measured.get(name)
        if isinstance(robustness, dict):
            drop = f"-{points(robustness['worst_drop_points'])} points"
        elif isinstance(later, dict) and later.get("sha256") == served_sha256(models[name]):
            drop = (f"-{points(later['worst_variant']['drop_points'])} points (measured after packaging: in "
                    f"`{ROBUSTNESS}`, not yet in the manifest)")
        else:
            drop = "not measured on the served file"
        worst.append(f"{code(name)} {pct(served_accuracy(models[name]))}, worst upload variant {drop}")
    lines.append("- Over the speed bar, most accurate first: " + ("; ".join(worst) if worst else "none") + ".")
    lines.append("- Within both bars: " + (", ".join(map(code, robust)) if robust else "none") + ".")
    if chosen_by_rule != default:
        lines.append(f"- `export.package --default` set it by hand: the rule alone would pick {code(chosen_by_rule)}.")
    return "\n".join(lines)


def block_models_training(src: Sources) -> str:
    manifest = src.manifest()
    rows = []
    for name, e in sorted(manifest["models"].items()):
        evidence = e.get("run_evidence")
        plots = [f"[{plot}]({src.link(evidence)}/{plot}.png)" for plot in ("accuracy", "loss")
                 if evidence and src.exists(f"{evidence}/{plot}.png")]  # an ensemble's folder holds its log only
        run = f"[{evidence}/]({src.link(evidence)}/)" + (": " + ", ".join(plots) if plots else "") if evidence else "-"
        how = ", ".join(filter(None, [e.get("precision") or "precision not recorded",
                                      f"{e['threads']} thread(s)" if e.get("threads") else "threads not recorded",
                                      e.get("device_name")]))
        rows.append([name_cell(name, manifest), code(e.get("recipe_name") or e.get("arch", "?")), training_data(e),
                     f"{e['parameters']:,}", f"{e['epochs']} / {e.get('epochs_planned', e['epochs'])}",
                     f"{e['selected_epoch']} ({e.get('selected_on', '?')})", seconds(e["train_seconds"]), how,
                     e.get("date", "-"), run])
    return table(["model", "recipe", "training data", "parameters", "epochs done / planned",
                  "selected epoch (on)", "training time", "trained with", "date", "run, curves"], rows,
                 right={3, 6})


def block_models_export(src: Sources) -> str:
    manifest = src.manifest()
    rows = []
    for name, e in sorted(manifest["models"].items()):
        q = int8_block(e)
        parity = e.get("parity") or {}
        rows.append([
            name_cell(name, manifest), tta(e), pct(e["test_accuracy"]),
            pct(q["test_accuracy"]) if "test_accuracy" in q else "-",
            points(q["accuracy_drop_points"]) if "accuracy_drop_points" in q else "-",
            "int8" if served_int8(e) else "fp32",
            (f"{parity['max_abs_diff_probabilities']:.1e} over {parity['images']:,}"
             + ("" if parity.get("passed") else " (failed)")) if parity else "-",
            rate(e.get("cpu_images_per_s")), rate(q.get("cpu_images_per_s")),
            rate(q.get("fp32_single_images_per_s")), rate(q.get("single_images_per_s"))])
    return table(["model", "TTA", "fp32 accuracy", "int8 accuracy", "int8 points lost", "served as",
                  "parity: max abs diff of probabilities, images", "fp32 images/s, batches of 64",
                  "int8 images/s, batches of 64", "fp32 single images/s", "int8 single images/s"], rows,
                 right={2, 3, 4, 7, 8, 9, 10})


def block_models_commands(src: Sources) -> str:
    manifest = src.manifest()
    lines = ["```bash"]
    for name, e in sorted(manifest["models"].items()):
        lines += [f"# {name} ({e.get('recipe_name', e.get('arch'))})", e["command"]]
    return "\n".join(lines + ["```"])


def block_models_curves(src: Sources) -> str:
    manifest = src.manifest()
    cells = []
    for name, e in sorted(manifest["models"].items()):
        evidence = e.get("run_evidence")
        if evidence and src.exists(f"{evidence}/accuracy.png"):
            cells.append((f"{code(name)} ([{evidence}/]({src.link(evidence)}/))",
                          f"![{name} accuracy]({src.link(evidence)}/accuracy.png)",
                          f"![{name} loss]({src.link(evidence)}/loss.png)"))
    if not cells:
        raise ReportError(f"no model in {MANIFEST} has a run_evidence folder with accuracy.png")
    parts = []
    for i in range(0, len(cells), 3):
        group = cells[i:i + 3]
        parts.append(table([c[0] for c in group], [[c[1] for c in group], [c[2] for c in group]]))
    return "\n\n".join(parts)


# ----------------------------------------------------------------------------------------- training runs

LOG_HEAD = re.compile(r"^(\w+): ([\d,]+) params, ([\d,]+) train / ([\d,]+) val", re.M)
PRECISION_LINE = re.compile(r"^precision: (\w+).*?(\d+) CPU thread", re.M)
DATA_ARGUMENT = re.compile(r"^\$ .*?--data[ =](\S+)", re.M)  # the log's first line: the command that ran
PROJECT_DATA = "cifar10-jpeg.tar.gz"  # ../shared/data's archive; a run on other data says which in the runs table


def run_data(log: str) -> str:
    """The file name of the archive a run's log says it trained and tested on (the project's, unless it says)."""
    data = DATA_ARGUMENT.search(log)
    return PurePosixPath(data.group(1)).name if data else PROJECT_DATA


@dataclass
class Run:
    folder: str
    model: str
    train_images: str
    val_images: str
    rows: list[dict]
    setting: str
    data: str = PROJECT_DATA  # the --data archive's file name

    @property
    def what(self) -> str:
        """The model, and the data where a run trained and tested on another archive than the project's."""
        return code(self.model) + ("" if self.data == PROJECT_DATA else f" on {code(self.data)}")

    @property
    def selected(self) -> dict:
        """The epoch ``best.pt`` holds: the best validation accuracy (the first such epoch), or the last."""
        with_val = [r for r in self.rows if "val_acc" in r]
        if not with_val:
            return self.rows[-1]
        return max(with_val, key=lambda r: (r["val_acc"], -r["epoch"]))

    @property
    def train_seconds(self) -> float:
        return sum(r.get("epoch_seconds", 0.0) for r in self.rows)


def read_run(src: Sources, folder: Path) -> Run:
    where = f"{RUNS}/{folder.name}"
    try:
        rows = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines() if line.strip()]
    except (OSError, json.JSONDecodeError) as exc:
        raise ReportError(f"{where}/metrics.jsonl cannot be read: {exc}") from None
    if not rows:
        raise ReportError(f"{where}/metrics.jsonl has no epochs")
    logs = [folder / name for name in ("log.txt", "train.log") if (folder / name).is_file()]
    log = logs[0].read_text() if logs else ""
    head = LOG_HEAD.search(log)
    if not head:
        raise ReportError(f"{where} has no training log naming its model (log.txt or train.log)")
    settings = list(dict.fromkeys(f"{p} on {t} thread(s)" for p, t in PRECISION_LINE.findall(log)))
    return Run(where, head.group(1), head.group(3), head.group(4), rows,
               ", then ".join(settings) if settings else "not recorded", run_data(log))


def runs(src: Sources) -> list[Run]:
    base = src.path(RUNS)
    folders = sorted(p for p in base.iterdir() if (p / "metrics.jsonl").is_file()) if base.is_dir() else []
    if not folders:
        raise ReportError(f"{RUNS}/ holds no run (a folder with metrics.jsonl); export.package copies them there")
    return [read_run(src, folder) for folder in folders]


def run_accuracy(row: dict) -> str:
    if "test_acc_tta" in row:
        return f"{pct(row['test_acc_tta'])} with TTA ({pct(row['test_acc'])} without)"
    return pct(row["test_acc"])


def block_runs(src: Sources) -> str:
    shipped: dict[str, list[str]] = {}
    for name, e in src.manifest()["models"].items():
        shipped.setdefault(e.get("run_evidence"), []).append(name)
    rows = []
    for run in runs(src):
        sel = run.selected
        how = "val" if "val_acc" in sel else "last"
        rows.append([f"[{run.folder.removeprefix(RUNS + '/')}]({src.link(run.folder)}/)", run.what,
                     f"{run.train_images} / {run.val_images}", str(len(run.rows)), f"{sel['epoch']} ({how})",
                     run_accuracy(sel), pct(run.rows[-1]["test_acc"]), seconds(run.train_seconds), run.setting,
                     ", ".join(map(code, sorted(shipped.get(run.folder, [])))) or "no"])
    return table(["run", "model", "train / val images", "epochs", "selected epoch", "test accuracy, selected epoch",
                  "test accuracy, last epoch", "training time", "precision, threads (from the log)", "shipped as"],
                 rows, right={3, 5, 6, 7})


SEED_SUFFIX = re.compile(r"^(.*)_s(\d+)$")


def spread(values: list[float]) -> str:
    """Mean accuracy +- the sample standard deviation, in points."""
    return f"{pct(statistics.mean(values))} +- {100 * statistics.stdev(values):.2f}"


def block_seed_spread(src: Sources) -> str:
    groups: dict[tuple, list[Run]] = {}
    for run in runs(src):
        match = SEED_SUFFIX.match(run.folder.removeprefix(RUNS + "/"))
        if match:
            groups.setdefault((match.group(1), run.model, len(run.rows), run.train_images), []).append(run)
    rows = []
    for (_, model, epochs, _), members in sorted(groups.items()):
        if len(members) < 2:
            continue
        plain = [m.selected["test_acc"] for m in members]
        with_tta = [m.selected["test_acc_tta"] for m in members if "test_acc_tta" in m.selected]
        rows.append([", ".join(f"[{m.folder.removeprefix(RUNS + '/')}]({src.link(m.folder)}/)" for m in members),
                     code(model), str(epochs), str(len(members)),
                     spread(with_tta) if len(with_tta) == len(members) else "-", spread(plain),
                     seconds(statistics.mean(m.train_seconds for m in members))])
    if not rows:
        raise ReportError(f"{RUNS}/ holds no group of runs named NAME_s<seed> with two seeds or more")
    return table(["runs", "model", "epochs", "seeds", "test accuracy with TTA, mean +- sd (points)",
                  "without TTA", "mean training time"], rows, right={2, 3, 4, 5, 6})


# ------------------------------------------------------------------------------------------- benchmarks


def header(data: dict, where: str, extra: str = "") -> str:
    """The line under a result table: where it comes from, when, and the command that remakes it."""
    when = data.get("date")
    return (f"`{where}`" + (f", {day(when)}" if when else "") + (f", {extra}" if extra else "")
            + f": `{need(data, 'command', where)}`")


ROBUSTNESS = f"{RESULTS}/upload_robustness.json"
ROBUSTNESS_COMMAND = "python benchmarks/upload_robustness.py --images 500"
ROBUSTNESS_2000 = f"{RESULTS}/upload_robustness_2000.json"
ROBUSTNESS_2000_COMMAND = ("python benchmarks/upload_robustness.py --images 2000 --models MODEL... "
                           "--out benchmarks/results/upload_robustness_2000.json")


def robustness_table(src: Sources, where: str, command: str, every_model: bool) -> str:
    """Per measured file: native accuracy, worst content-preserving variant, mean drop, variants within a point.
    ``every_model``: the file is meant to cover every shipped model (name the missing ones); else it is a
    closer look at a few, and the variants over a point are listed for each."""
    data = src.json(where, command)
    manifest = src.manifest()
    measured = need(data, "models", where)
    variants = need(data, "variants", where)
    rows, over = [], []
    for name, m in measured.items():
        entry = manifest["models"].get(name)
        current = "yes" if entry and m.get("sha256") == served_sha256(entry) else "no: another file is served now"
        worst = need(m, "worst_variant", where)
        rows.append([name_cell(name, manifest), m.get("precision", "?"), pct(m["native_accuracy"]),
                     f"{code(worst['name'])} (-{points(worst['drop_points'])}, se {points(worst['drop_se_points'])})",
                     points(m["mean_drop_points"]), m["variants_within_1_point"].replace("/", " / "), current])
        losing = sorted(((v["drop_points"], v["drop_se_points"], k) for k, v in m["variants"].items()
                         if not variants[k]["content_changing"] and v["drop_points"] > DEFAULT_MAX_UPLOAD_DROP_POINTS),
                        reverse=True)
        over.append(f"- {code(name)}: " + (", ".join(f"{code(k)} -{points(d)} (se {points(se)})"
                                                    for d, se, k in losing) or "none"))
    text = table(["served file", "precision", "native accuracy", "worst content-preserving variant (drop, points)",
                  "mean drop (points)", "variants within 1 point", "the file served now"], rows, right={2, 4, 5})
    if not every_model:
        text += (f"\n\nContent-preserving variants more than {DEFAULT_MAX_UPLOAD_DROP_POINTS:g} point(s) below native:"
                 "\n\n" + "\n".join(over))
    text += "\n\n" + header(data, where, f"{data.get('images', '?')} test images")
    added = list(dict.fromkeys(a["command"] for a in data.get("added", []) if isinstance(a, dict) and a.get("command")))
    if added:  # models measured later with --add, merged into the file: their commands remake their rows
        text += "; then " + ", ".join(code(c) for c in added)
    missing = sorted(set(manifest["models"]) - set(measured))
    if every_model and missing:
        text += "\n\nNot measured yet: " + ", ".join(map(code, missing)) + "."
    return text


def block_upload_robustness(src: Sources) -> str:
    return robustness_table(src, ROBUSTNESS, ROBUSTNESS_COMMAND, every_model=True)


def block_upload_robustness_2000(src: Sources) -> str:
    return robustness_table(src, ROBUSTNESS_2000, ROBUSTNESS_2000_COMMAND, every_model=False)


def served_sha256(entry: dict) -> str | None:
    return int8_block(entry).get("onnx_sha256") if served_int8(entry) else entry.get("onnx_sha256")


def block_time_to_accuracy(src: Sources) -> str:
    where = f"{RESULTS}/time_to_accuracy_cpu.json"
    data = src.json(where, "python benchmarks/time_to_accuracy.py")
    rows_in = need(data, "runs", where)
    thresholds = sorted({t for r in rows_in for t in r.get("seconds_to", {})}, key=float)
    rows = []
    for r in sorted(rows_in, key=lambda r: r["run"]):
        reached = r.get("seconds_to", {})
        rows.append([f"[{r['run']}]({src.link(RUNS)}/{r['run']}/)", str(r["epochs"]), pct(r["final_test_acc"])]
                    + [seconds(reached[t]["seconds"]) if t in reached else "-" for t in thresholds]
                    + [seconds(r["train_seconds"])])
    head = ["run", "epochs", "final"] + [f">= {100 * float(t):g}%" for t in thresholds] + ["training time"]
    return (table(head, rows, right=set(range(1, len(head))))
            + "\n\n" + header(data, where, "how each run trained (precision, threads, pauses): its `setting`"))


def block_accuracy_vs_minutes(src: Sources) -> str:
    where = f"{RESULTS}/accuracy_vs_minutes_cpu.json"
    data = src.json(where, "python benchmarks/accuracy_vs_minutes.py --data PATH --minutes 10 20 30 60")
    rows = [[f"{p['budget_minutes']:g} min", str(p["epochs"]), f"{p['train_minutes']:.1f}",
             pct(p["test_acc_tta"]) if "test_acc_tta" in p else "-", pct(p["test_acc"])]
            for p in need(data, "points", where)]
    text = table(["budget", "epochs", "training minutes (actual)", "test accuracy with TTA", "without TTA"], rows,
                 right={0, 1, 2, 3, 4})
    text += "\n\n" + header(data, where, f"{code(data.get('model'))}, seed {data.get('seed')}, "
                                          f"{data.get('threads')} threads, budgets sized at "
                                          f"{data.get('seconds_per_epoch'):g} s per epoch")
    png = where.removesuffix(".json") + ".png"
    if src.exists(png):
        text += f"\n\n![accuracy against training minutes]({src.link(png)})"
    return text


def precision_table(src: Sources, name: str, made_by: str) -> str:
    where = f"{RESULTS}/{name}"
    data = src.json(where, made_by)
    rows = [[code(r["model"]), str(r["batch_size"]), rate(r["fp32_images_per_s"]),
             rate(r["fp32_channels_last_images_per_s"]), rate(r["bf16_channels_last_images_per_s"]),
             times(r["bf16_speedup"])] for r in need(data, "results", where)]
    return (table(["model", "batch", "fp32", "fp32 + channels_last", "bf16 + channels_last", "bf16 speed-up"], rows,
                  right={1, 2, 3, 4, 5})
            + "\n\n" + header(data, where, f"training images/s; {data.get('device')}, bf16 units: "
                                           f"{data.get('cpu_bf16_units')}, torch {data.get('torch')}"))


def block_train_precision(src: Sources) -> str:
    return precision_table(src, "train_precision_cpu.json",
                           "python benchmarks/train_throughput.py --compare precision --device cpu")


def block_train_precision_pretrained(src: Sources) -> str:
    return precision_table(src, "train_precision_pretrained_cpu.json",
                           "python benchmarks/train_throughput.py --compare precision --models efficientnet_lite0 "
                           "--out benchmarks/results/train_precision_pretrained_cpu.json")


def block_train_throughput(src: Sources) -> str:
    where = f"{RESULTS}/train_throughput_cpu.json"
    data = src.json(where, "python benchmarks/train_throughput.py --data PATH --device cpu --workers 2")
    rows = [[code(r["model"]), str(r["batch_size"]), rate(r["device_pipeline_images_per_s"]),
             rate(r["dataloader_images_per_s"]), times(r["speedup"])] for r in need(data, "results", where)]
    return (table(["model", "batch", "on-device pipeline", "DataLoader + per-sample transforms", "speed-up"], rows,
                  right={1, 2, 3, 4})
            + "\n\n" + header(data, where, f"training images/s; {data.get('device')}, "
                                           f"{data.get('dataloader_workers')} DataLoader workers"))


def block_activation_bf16(src: Sources) -> str:
    where = f"{RESULTS}/activation_bf16_cpu.json"
    data = src.json(where, "python benchmarks/activation_bf16.py")
    rows = []
    for model, by_activation in need(data, "results", where).items():
        for activation, r in by_activation.items():
            rows.append([code(model), activation, rate(r["fp32"]["images_per_s_median"]),
                         rate(r["bf16"]["images_per_s_median"]), times(r["bf16_speedup"])])
    return (table(["model", "activation", "fp32", "bf16", "bf16 speed-up"], rows, right={2, 3, 4})
            + "\n\n" + header(data, where, f"training images/s (median of {data.get('repeats')}), "
                                           f"{data.get('threads')} thread, batch {data.get('batch')}, "
                                           f"{data.get('cpu')} ({data.get('cpu_bf16_units')})"))


def block_served_graph(src: Sources) -> str:
    where = f"{RESULTS}/served_graph.json"
    data = src.json(where, "python benchmarks/served_graph.py")
    labels = {"plain": "as trained, plain preprocessing", "folded": "folded (`export.graph.serving_form`)",
              "folded_fused": "folded, SiLU fused (`export.quantize.fuse_silu`): served"}
    rows = [[labels.get(form, form), pct(r["fp32_accuracy"]), pct(r["int8_accuracy"]),
             rate(r["int8_single_images_per_s"]), times(r["speedup_over_plain"])]
            for form, r in sorted(need(data, "forms", where).items(), key=lambda item: list(labels).index(item[0])
                                  if item[0] in labels else len(labels))]
    machine = data.get("machine", {})
    return (table(["graph", "fp32 accuracy", "int8 accuracy", "int8 single images/s", "vs plain"], rows,
                  right={1, 2, 3, 4})
            + "\n\n" + header(data, where, f"`{data.get('checkpoint')}`, TTA {data.get('tta')}, {data.get('timing')}, "
                                           f"{machine.get('cpu')}, onnxruntime {machine.get('onnxruntime')}"))


def block_int8(src: Sources) -> str:
    newest: dict[str, tuple[str, dict, dict]] = {}
    for where, data in src.results("int8*.json", "python benchmarks/int8.py"):
        for m in need(data, "models", where):
            if m["model"] not in newest or data.get("date", "") > newest[m["model"]][1].get("date", ""):
                newest[m["model"]] = (where, data, m)
    rows = []
    for model, (where, data, m) in sorted(newest.items()):
        rows.append([code(model), pct(m["fp32_accuracy"]), pct(m["int8_accuracy"]), points(m["accuracy_drop_points"]),
                     rate(m["fp32_images_per_s_batch1"]), rate(m["int8_images_per_s_batch1"]),
                     times(m["speedup_batch1"]), rate(m["fp32_images_per_s_batch16"]),
                     rate(m["int8_images_per_s_batch16"]), "**int8**" if m["int8_served"] else "fp32",
                     f"`{where.removeprefix(RESULTS + '/')}`, {day(data.get('date', '?'))}"])
    rules = sorted({data.get("rule") for _, data, _ in newest.values() if data.get("rule")})
    commands = sorted({data["command"] for _, data, _ in newest.values()})
    return (table(["model", "fp32 accuracy", "int8 accuracy", "points lost", "fp32, batch 1", "int8, batch 1",
                   "speed-up, batch 1", "fp32, batch 16", "int8, batch 16", "served as `NAME`", "result (date)"],
                  rows, right=set(range(1, 9)))
            + "\n\nImages/s on one onnxruntime thread. Rule: " + "; ".join(rules) + ". Commands: "
            + ", ".join(map(code, commands)) + ".")


CALIBRATION_INT8 = f"{RESULTS}/calibration_int8.json"


def block_int8_calibration(src: Sources) -> str:
    data = src.json(CALIBRATION_INT8, "python benchmarks/int8_calibration.py")
    models = need(data, "models", CALIBRATION_INT8)
    variants = list(need(models[0], "variants", CALIBRATION_INT8)) if models else []
    rows = []
    for m in models:
        cells = [code(m["model"]), pct(m["fp32_test_accuracy"])]
        for name in variants:
            v = m["variants"][name]
            cell = f"{pct(v['held_out_agreement'])} / {pct(v['test_accuracy'])}"
            cells.append(f"**{cell}**" if v["project"] else cell)
        rows.append(cells)
    held = data.get("held_out_images", "?")
    return (table(["model", "fp32 test accuracy", *variants], rows, right=set(range(1, len(variants) + 2)))
            + f"\n\nEach int8 cell: agreement with the fp32 file on {held:,} training images the calibration never saw"
            " / test accuracy on the 10,000 test images; bold: the method `export.quantize` uses. "
            + header(data, CALIBRATION_INT8, f"{data.get('calibration_images', '?')} calibration images"))

FLOOR_MADE_BY = "python benchmarks/variant_archive.py VARIANT, then python -m training.run and training.evaluate"
FLOOR_CELLS = (("stored", "stored"), ("stored", "variant"), ("variant", "variant"), ("variant", "stored"))


def block_variant_floor(src: Sources) -> str:
    """Per docs/runs/*/floor.json: one recipe trained on the stored images and on an upload variant's archive, each
    tested on both test splits; what the variant costs the clean model, and what is left once it is trained on."""
    folders = sorted(p.parent.name for p in src.path(RUNS).glob("*/floor.json")) if src.path(RUNS).is_dir() else []
    if not folders:
        raise ReportError(f"{RUNS}/*/floor.json matches no file; they are written with `{FLOOR_MADE_BY}`")
    rows, sources = [], []
    for folder in folders:
        where = f"{RUNS}/{folder}/floor.json"
        data = src.json(where, FLOOR_MADE_BY)
        accuracy = {(e["trained_on"], e["tested_on"], e["tta"]): e["accuracy"]
                    for e in need(data, "evaluations", where)}
        for tta in dict.fromkeys(tta for _, _, tta in accuracy):
            missing = [f"trained on {a}, tested on {b}" for a, b in FLOOR_CELLS if (a, b, tta) not in accuracy]
            if missing:
                raise ReportError(f"{where} has no accuracy {missing[0]} with TTA {tta}")
            clean, clean_on_variant, floor, floor_on_clean = (accuracy[(a, b, tta)] for a, b in FLOOR_CELLS)
            rows.append([code(need(data, "variant", where)), f"[{code(need(data, 'recipe', where))}]"
                         f"({src.link(f'{RUNS}/{folder}')}/)", tta, pct(clean), pct(clean_on_variant), pct(floor),
                         pct(floor_on_clean), points(100 * (clean - clean_on_variant)),
                         points(100 * (clean - floor)), points(100 * (floor - clean_on_variant))])
        sources.append(header(data, where, f"{need(data, 'test_images', where):,} test images per figure"))
    return (table(["variant", "recipe (run)", "TTA", "clean model: stored test", "clean model: variant test",
                   "trained on the variant: variant test", "trained on the variant: stored test",
                   "the variant costs the clean model",
                   "left after training on it (floor)", "won back by training on it"], rows, right=set(range(3, 10)))
            + "\n\nEach row: one recipe and seed trained twice, on the stored images and on every image as the variant "
              "uploads it, each model tested on both test splits (points: differences of the accuracies shown). "
            + "; ".join(sources) + "; the `training.evaluate` command of each figure is in the file.")


def service_label(data: dict) -> str:
    s = data.get("service", {})
    batching = ("batching" if s.get("batch_max_images", 1) > 1 else "no batching") if "batch_max_images" in s else ""
    wait = f", wait {s['batch_wait_ms']:g} ms" if s.get("batch_wait_ms") else ""
    worker = "gevent" if s.get("worker_class") == "serving.worker.ServiceWorker" else s.get("worker_class", "?")
    parts = [code(s.get("model", "?")), s.get("precision", "precision not recorded"), worker,
             (batching + wait) if batching else "", f"uploads {data['images']['upscaled_to']} px"
             if data.get("images", {}).get("upscaled_to") else ""]
    return ", ".join(p for p in parts if p)


def block_serve_load(src: Sources) -> str:
    files = src.results("serve_load*.json", "python benchmarks/serve_load.py")
    levels = sorted({lv["concurrency"] for _, d in files for lv in d.get("levels", [])})
    rows = []
    for where, d in files:
        by = {lv["concurrency"]: lv for lv in d.get("levels", [])}
        rows.append([f"`{where.removeprefix(RESULTS + '/')}`", day(d.get("date", "?")), service_label(d)]
                    + [f"{rate(by[c]['requests_per_s'])} ({by[c]['latency_ms']['p99']:.1f} ms)" if c in by else "-"
                       for c in levels]
                    + [rate(d.get("bare_loop", {}).get("images_per_s")),
                       times(d["ratio_service_to_bare"]) if "ratio_service_to_bare" in d else "-"])
    head = (["result", "date", "configuration"] + [f"{c} client(s): requests/s (p99)" for c in levels]
            + ["bare loop, images/s", "best / bare loop"])
    return (table(head, rows, right=set(range(3, len(head))))
            + "\n\nEach file's `command` remakes it (with the settings it ran under).")


def block_serve_cpu(src: Sources) -> str:
    where = f"{RESULTS}/serve_load.json"
    d = src.json(where, "python benchmarks/serve_load.py --out benchmarks/results/serve_load.json")
    top = max(need(d, "levels", where), key=lambda lv: lv["concurrency"])
    by_batch = d.get("one_thread_images_per_s_by_batch_size", {})
    rows = [
        [f"service CPU per answered request at {top['concurrency']} clients (gunicorn master and workers)",
         f"{top['server_cpu_ms_per_request']:.2f} ms"],
        ["bare loop CPU per image (decode, resize, model)", f"{d['bare_loop']['cpu_ms_per_image']:.2f} ms"],
        ["empty Flask app under the same gunicorn, CPU per request",
         f"{d['empty_flask_app_best_level']['server_cpu_ms_per_request']:.2f} ms"],
        ["empty Flask app, requests/s", rate(d["empty_flask_app_requests_per_s"])],
        ["load client (wrk) CPU per request", f"{top['client_cpu_ms_per_request']:.2f} ms"],
    ] + [[f"served file on one thread, batch {b}: images/s", rate(v)] for b, v in by_batch.items()]
    return table(["measure", "value"], rows, right={1}) + "\n\n" + header(d, where, service_label(d))


def block_serve_peers(src: Sources) -> str:
    parts = []
    for where, d in src.results("serve_peers*.json", "python benchmarks/serve_peers.py --model NAME"):
        clients = need(d, "load", where)["concurrency"]
        ratios = d.get("ratio_service_to_peer_at_max_clients", {})
        rows = []
        for s in need(d, "servers", where):
            by = {lv["clients"]: lv for lv in s.get("levels", [])}
            rows.append([s["name"]] + [f"{rate(by[c]['requests_per_s'])} ({by[c]['p99_ms']:.1f} ms)" if c in by
                                       else s.get("status", "-") for c in clients]
                        + [times(ratios[s["key"]]) if s["key"] in ratios else "",
                           f"{s['start_to_first_answer_s']:.2f} s" if "start_to_first_answer_s" in s else "-"])
        head = (["server"] + [f"{c} client(s): requests/s (p99)" for c in clients]
                + [f"this service / it, {d.get('max_clients', clients[-1])} clients", "launch to first answer"])
        parts.append(f"`{d.get('model')}`:\n\n" + table(head, rows, right=set(range(1, len(head))))
                     + "\n\n" + header(d, where))
        png = where.removesuffix(".json") + ".png"
        if src.exists(png):
            parts.append(f"![requests/s against clients, {d.get('model')}]({src.link(png)})")
    return "\n\n".join(parts)


def block_slow_clients(src: Sources) -> str:
    rows, notes = [], []
    for where, d in src.results("slow_clients*.json", "python benchmarks/slow_clients.py"):
        if d.get("benchmark", "slow_clients") != "slow_clients":
            continue  # the admission-control attacks: their own block
        for r in need(d, "runs", where):
            outcome = r.get("stalled_connection_outcomes", {})
            rows.append([f"`{where.removeprefix(RESULTS + '/')}`, {day(d.get('date', '?'))}", code(r["worker_class"])]
                        + [f"{r[k]['answered']} / {r[k]['probes']} (slowest {latency(r[k]['max_s'])})"
                           for k in ("healthz", "predict")]
                        + ["; ".join(f"{n} {what.removeprefix('HTTP/1.1 ')}" for what, n in outcome.get(k, {}).items())
                           for k in ("in_headers", "in_body")])
        notes.append(f"`{where.removeprefix(RESULTS + '/')}`: {d.get('stalled_per_kind')} connections stalled per "
                     f"kind, probes time out after {d.get('probe_timeout_s'):g} s: `{d['command']}`")
    return (table(["result", "worker class", "`/healthz` probes answered", "`/predict` probes answered",
                   "stalled in headers: after the wait", "stalled in body: after the wait"], rows)
            + "\n\n" + "\n\n".join(notes))


def latency(seconds_or_none) -> str:
    return "-" if seconds_or_none is None else f"{1000 * seconds_or_none:,.0f} ms"


def attack_label(r: dict) -> str:
    if r["attack"] == "idle":
        return (f"{r.get('idle_connections', '?'):,} idle keep-alive connections, each refreshed every "
                f"{r.get('refresh_every_s', '?')} s")
    if r["attack"] == "uploads":
        return f"{r.get('uploads', '?'):,} concurrent {r.get('upload_mib', '?')} MiB uploads held open"
    return r["attack"]


def block_admission(src: Sources) -> str:
    rows, idle = [], []
    files = src.results("slow_clients_admission*.json", "python benchmarks/slow_clients.py --attack idle_memory idle "
                                                        "uploads")
    for where, d in files:
        label = f"`{where.removeprefix(RESULTS + '/')}`, {day(d.get('date', '?'))}"
        for r in need(d, "runs", where):
            if r["attack"] == "idle_memory":
                idle.append(f"{r['kib_per_idle_connection']:.1f} KiB per idle keep-alive connection "
                            f"({r['idle_connections_held_by_one_worker']:,} held by one worker: its RSS "
                            f"{r['rss_before_mib']:.0f} -> {r['rss_after_mib']:.0f} MiB; {label})")
                continue
            during = r["probes_during_attack"]
            growth = " and ".join(f"{w['growth_mib']:,.1f}" for w in r.get("workers", {}).values()) or "-"
            attacker = r.get("attacker", {})
            answers = {**attacker.get("answers", {})}
            if attacker.get("closed_by_service"):
                answers["idle connections closed by the service"] = attacker["closed_by_service"]
            if attacker.get("dropped_without_answer"):
                answers["dropped without an answer"] = attacker["dropped_without_answer"]
            rows.append([label, attack_label(r),
                         f"{during['answered']} of {during['probes']} (median {latency(during['median_s'])}, "
                         f"slowest {latency(during['max_s'])})", f"{growth} MiB",
                         "; ".join(f"{n:,} {what.removeprefix('HTTP/1.1 ')}" for what, n in answers.items()) or "-"])
    timeout = files[0][1].get("probe_timeout_s", 0)
    text = table(["result", "attack", f"fresh `/predict` probes answered within the {timeout:g} s timeout",
                  "workers' RSS growth", "what the attacker got"], rows)
    if idle:
        text += "\n\nWhat an idle connection costs: " + "; ".join(idle) + "."
    notes = [f"`{where.removeprefix(RESULTS + '/')}`: {d['note']}" for where, d in files if d.get("note")]
    commands = sorted({d["command"] for _, d in files})
    return (text + ("\n\n" + "; ".join(notes) + "." if notes else "")
            + "\n\nCommands: " + ", ".join(map(code, commands)) + ".")


def block_image_cost(src: Sources) -> str:
    where = f"{RESULTS}/image_cost.json"
    d = src.json(where, "python benchmarks/image_cost.py")
    rows = []
    for c in need(d, "cases", where):
        after, before = c.get("after", {}), c.get("before") or {}
        rows.append([code(c["name"]), c.get("what", ""), f"{c['file_bytes']:,}",
                     str(after.get("outcome", "?")).split(":")[0], f"{after.get('peak_rss_increase_mib', 0):.0f}",
                     str(before.get("outcome", "-")).split(":")[0],
                     f"{before['peak_rss_increase_mib']:.0f}" if "peak_rss_increase_mib" in before else "-"])
    worst_after, worst_before = d.get("worst_decoded_after", {}), d.get("worst_decoded_before", {})
    return (table(["case", "what", "file bytes", "now", "now: worker memory, MiB",
                   f"before ({d.get('before_revision')})", "before: MiB"], rows, right={2, 4, 6})
            + f"\n\nThe costliest accepted upload now: `{worst_after.get('case')}`, "
              f"{worst_after.get('peak_rss_increase_mib', 0):.0f} MiB; before: `{worst_before.get('case')}`, "
              f"{worst_before.get('peak_rss_increase_mib', 0):.0f} MiB. " + header(d, where))


def mb(size: float) -> str:
    return f"{size / 1e6:,.0f} MB"


def mib(size: float) -> str:
    return f"{size / 2**20:,.0f} MiB"


def block_image_test(src: Sources) -> str:
    rows = []
    made_by = "make image-test IMAGE_TEST_OUT=benchmarks/results/image_test.json"
    for where, d in src.results("image_test*.json", made_by):
        workers = [mib(b) for b in d.get("memory_pss_bytes_per_worker", [])]
        stop = d.get("stop", {})
        checks = d.get("checks", [])
        cpu = d.get("cpu_seconds")
        rows.append([f"`{where.removeprefix(RESULTS + '/')}`", day(d.get("date", "?")), mb(d["image_bytes"]),
                     mb(d["base_bytes"]), mb(d["weights_bytes"]),
                     mb(d["image_bytes"] - d["base_bytes"] - d["weights_bytes"]),
                     seconds(d["base_seconds"]), seconds(d["build_seconds"]), seconds(d["start_to_ready_s"]),
                     seconds(d["seconds"]), seconds(cpu["user"] + cpu["system"]) if cpu else "-",
                     mib(d["memory_pss_bytes_master"]), " / ".join(workers) or "-",
                     f"{stop.get('in_flight_status', '-')} after {stop.get('in_flight_answered_s', 0):.1f} s, "
                     f"exit {stop.get('exit_status', '-')}",
                     f"{sum(1 for c in checks if c.get('ok'))} / {len(checks)}"])
    return (table(["result", "date", "image, unpacked", "base", "weights", "service and dependencies",
                   "making the base", "build", "start to ready", "whole test", "CPU (user + system)",
                   "memory: master (PSS)", "memory: each worker (PSS)", "in-flight upload at SIGTERM",
                   "checks passed"], rows, right=set(range(2, 13)))
            + "\n\nEach file's `command`, machine, load averages and per-check details are in the JSON; a run made "
              "beside other work gives upper bounds for the durations.")


SIZING = (f"{RESULTS}/serve_load.json", f"{RESULTS}/serve_load_wvf_int8.json")  # a light and a heavy model
SIZING_PEAK = 5000  # the example peak, requests/s


def deploy_setting(src: Sources, path: str, pattern: str) -> int:
    """A number from a manifest in deploy/k8s/ (read as text: the report needs no YAML parser)."""
    if not src.exists(path):
        raise ReportError(f"{path} is missing")
    match = re.search(pattern, src.path(path).read_text())
    if not match:
        raise ReportError(f"{path} has no match for {pattern!r}")
    return int(match.group(1))


def block_deploy_sizing(src: Sources) -> str:
    target = deploy_setting(src, "deploy/k8s/hpa.yaml", r"averageUtilization: (\d+)")
    cpus = deploy_setting(src, "deploy/k8s/deployment.yaml", r"limits:\s*\n\s*cpu: \"?(\d+)\"?")
    memory_gib = deploy_setting(src, "deploy/k8s/deployment.yaml", r"limits:\s*\n\s*cpu: .*\n\s*memory: (\d+)Gi")
    manifest = src.manifest()
    served = {served_sha256(e): name for name, e in manifest["models"].items()}
    rows = []
    for where in SIZING:
        d = src.json(where, "python benchmarks/serve_load.py")
        best = max(need(d, "levels", where), key=lambda lv: lv["requests_per_s"])
        per_core = best["requests_per_s"] / d["machine"]["usable_cpus"]
        pods = -(-SIZING_PEAK // (per_core * cpus * target / 100))
        s = d.get("service", {})
        rows.append([f"`{where.removeprefix(RESULTS + '/')}`, {day(d.get('date', '?'))}",
                     f"{code(s.get('model', '?'))} {s.get('precision', '')}",
                     "yes" if s.get("model_sha256") in served else "no",
                     f"{rate(best['requests_per_s'])} ({best['concurrency']} clients)",
                     str(d["machine"]["usable_cpus"]), rate(per_core), f"{pods:.0f}"])
    text = table(["measured", "served file", "still served", "best requests/s", "cores", "requests/s per core",
                  f"pods of {cpus} CPUs for {SIZING_PEAK:,} requests/s at {target}% CPU"], rows,
                 right={3, 4, 5, 6})
    default = manifest["default_model"]
    entry = manifest["models"][default]
    measured = any(src.json(w, "python benchmarks/serve_load.py")["service"].get("model_sha256") == served_sha256(entry)
                   for w in SIZING)
    text += (f"\n\nThe default, {code(default)}, classifies {rate(served_single_images_per_s(entry))} "
             "single images/s on one thread (`weights/MANIFEST.json`)"
             + ("." if measured else "; its load test is not in these files yet (`.venv/bin/python "
                                     "benchmarks/serve_load.py` measures it)."))
    images = src.results("image_test*.json", "make image-test")
    newest = max(images, key=lambda item: item[1].get("date", ""))[1]
    worker = max(newest.get("memory_pss_bytes_per_worker", [0]))
    left = (memory_gib * 2**30 - newest["memory_pss_bytes_master"]) / max(cpus, 1) - worker
    text += (f" Memory with this repository's `weights/` (`make image-test`, {day(newest.get('date', '?'))}): "
             f"{mib(newest['memory_pss_bytes_master'])} for the master and up to {mib(worker)} per worker; "
             f"a {memory_gib} GiB limit with {cpus} workers leaves about {mib(left)} a worker for request bodies "
             "and image decoding.")
    return text


TRADEOFF = f"{RESULTS}/pretrained_tradeoff.json"
TRADEOFF_COMMAND = "python benchmarks/pretrained_tradeoff.py RUN... --data ../shared/data/cifar10-jpeg.tar.gz"


def block_pretrained_tradeoff(src: Sources) -> str:
    if not src.exists(TRADEOFF):
        return (f"Not run yet: `{TRADEOFF}` does not exist. `.venv/bin/{TRADEOFF_COMMAND}` writes it (finished runs "
                "only), and `make docs` then fills this table.")
    d = src.json(TRADEOFF, TRADEOFF_COMMAND)
    rows = []
    for r in need(d, "runs", TRADEOFF):
        for e in r["exports"]:
            rows.append([code(r["run"]), code(r.get("recipe_name") or r["arch"]), f"{r.get('resolution')} px",
                         str(r["epochs"]),
                         f"{r['train_minutes']:.1f}", e["tta"], pct(e["fp32"]["test_accuracy"]),
                         rate(e["fp32"]["single_images_per_s"]), pct(e["int8"]["test_accuracy"]),
                         rate(e["int8"]["single_images_per_s"])])
    text = table(["run", "recipe", "resolution", "epochs", "training minutes", "TTA", "fp32 accuracy",
                  "fp32 single images/s", "int8 accuracy", "int8 single images/s"], rows, right={3, 4, 6, 7, 8, 9})
    text += "\n\n" + header(d, TRADEOFF)
    png = TRADEOFF.removesuffix(".json") + ".png"
    if src.exists(png):
        text += f"\n\n![accuracy against training minutes and serving speed]({src.link(png)})"
    return text


# ------------------------------------------------------------------------------------------------ blocks


@dataclass(frozen=True)
class Block:
    write: Callable[[Sources], str]
    sources: str  # what its first marker names


BLOCKS: dict[str, Block] = {
    "models": Block(block_models, MANIFEST),
    "default-model": Block(block_default_model, f"{MANIFEST}, common/contract.py, {RESULTS}/upload_robustness.json"),
    "models-training": Block(block_models_training, MANIFEST),
    "models-export": Block(block_models_export, MANIFEST),
    "models-commands": Block(block_models_commands, MANIFEST),
    "models-curves": Block(block_models_curves, f"{MANIFEST} run_evidence"),
    "runs": Block(block_runs, f"{RUNS}/*/metrics.jsonl and logs, {MANIFEST}"),
    "seed-spread": Block(block_seed_spread, f"{RUNS}/*_s<seed>/metrics.jsonl"),
    "upload-robustness": Block(block_upload_robustness, f"{RESULTS}/upload_robustness.json, {MANIFEST}"),
    "upload-robustness-2000": Block(block_upload_robustness_2000, f"{ROBUSTNESS_2000}, {MANIFEST}"),
    "time-to-accuracy": Block(block_time_to_accuracy, f"{RESULTS}/time_to_accuracy_cpu.json"),
    "accuracy-vs-minutes": Block(block_accuracy_vs_minutes, f"{RESULTS}/accuracy_vs_minutes_cpu.json"),
    "train-precision": Block(block_train_precision, f"{RESULTS}/train_precision_cpu.json"),
    "train-precision-pretrained": Block(block_train_precision_pretrained,
                                        f"{RESULTS}/train_precision_pretrained_cpu.json"),
    "train-throughput": Block(block_train_throughput, f"{RESULTS}/train_throughput_cpu.json"),
    "activation-bf16": Block(block_activation_bf16, f"{RESULTS}/activation_bf16_cpu.json"),
    "int8": Block(block_int8, f"{RESULTS}/int8*.json"),
    "int8-calibration": Block(block_int8_calibration, CALIBRATION_INT8),
    "variant-floor": Block(block_variant_floor, f"{RUNS}/*/floor.json"),
    "served-graph": Block(block_served_graph, f"{RESULTS}/served_graph.json"),
    "serve-load": Block(block_serve_load, f"{RESULTS}/serve_load*.json"),
    "serve-cpu": Block(block_serve_cpu, f"{RESULTS}/serve_load.json"),
    "serve-peers": Block(block_serve_peers, f"{RESULTS}/serve_peers*.json"),
    "slow-clients": Block(block_slow_clients, f"{RESULTS}/slow_clients*.json"),
    "admission": Block(block_admission, f"{RESULTS}/slow_clients_admission*.json"),
    "image-cost": Block(block_image_cost, f"{RESULTS}/image_cost.json"),
    "pretrained-tradeoff": Block(block_pretrained_tradeoff, TRADEOFF),
    "image-test": Block(block_image_test, f"{RESULTS}/image_test*.json"),
    "deploy-sizing": Block(block_deploy_sizing, f"{RESULTS}/serve_load.json, serve_load_wvf_int8.json, "
                                                f"image_test*.json, {MANIFEST}, deploy/k8s/"),
}


def begin_line(name: str) -> str:
    return f"<!-- generated: {name} from {BLOCKS[name].sources}; `make docs` rewrites it -->"


def pages(root: Path) -> list[Path]:
    docs = root / "docs"
    return [root / "README.md"] + (sorted(docs.glob("*.md")) if docs.is_dir() else [])


@dataclass
class Page:
    path: str  # repo-relative
    old: str
    new: str
    blocks: dict[str, tuple[str, str]]  # name -> (old body, new body)
    hand_figures: list[str]


def render_page(src: Sources, path: Path, done: dict[str, str]) -> Page:
    """The page with every block rewritten; ``done`` maps each block already seen to its page."""
    where = path.relative_to(src.root).as_posix()
    lines = path.read_text().split("\n")
    src.page_dir = path.parent
    out, blocks, hand = [], {}, []
    i = 0
    while i < len(lines):
        line = lines[i]
        match = BEGIN.match(line)
        if not match:
            if ANY_END.match(line):
                raise ReportError(f"{where}:{i + 1}: an end marker without its start")
            for figure in HAND_FIGURE.findall(line):
                hand.append(f"{where}:{i + 1}: {figure!r} typed by hand outside a generated block")
            out.append(line)
            i += 1
            continue
        name = match.group(1)
        if name not in BLOCKS:
            raise ReportError(f"{where}:{i + 1}: unknown block {name!r} (known: {', '.join(BLOCKS)})")
        if name in done:
            raise ReportError(f"{where}:{i + 1}: block {name!r} is already on {done[name]}: one place each")
        end = END.format(name=name)
        try:
            stop = lines.index(end, i + 1)
        except ValueError:
            raise ReportError(f"{where}:{i + 1}: block {name!r} has no line {end!r}") from None
        inner = lines[i + 1:stop]
        if any(BEGIN.match(x) for x in inner):
            raise ReportError(f"{where}:{i + 1}: block {name!r} holds another block's start")
        try:
            body = BLOCKS[name].write(src).strip("\n")
        except ReportError as exc:
            raise ReportError(f"{where}, block {name!r}: {exc}") from None
        except (KeyError, TypeError, ValueError, AttributeError, IndexError) as exc:
            raise ReportError(f"{where}, block {name!r}: its sources ({BLOCKS[name].sources}) lack what it needs: "
                              f"{type(exc).__name__}: {exc}") from None
        new = [begin_line(name), "", body, ""]
        blocks[name] = ("\n".join([line, *inner]), "\n".join(new))
        done[name] = where
        out += [*new, end]
        i = stop + 1
    return Page(where, "\n".join(lines), "\n".join(out), blocks, hand)


def render(root: Path) -> list[Page]:
    src = Sources(root)
    done: dict[str, str] = {}
    result = [render_page(src, path, done) for path in pages(root)]
    missing = [name for name in BLOCKS if name not in done]
    if missing:
        raise ReportError("no page holds the block(s) " + ", ".join(missing)
                          + ": add their markers to README.md or a page in docs/")
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m export.report", description=__doc__.split("\n\n")[0])
    p.add_argument("--check", action="store_true",
                   help="write nothing; exit 1 naming each page and block that differs from what would be written")
    p.add_argument("--root", type=Path, default=REPO_ROOT,
                   help="the repository whose README.md, docs/, weights/ and benchmarks/results/ are read")
    args = p.parse_args(argv)
    try:
        result = render(args.root.resolve())
    except (ReportError, OSError, UnicodeDecodeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    problems = [h for page in result for h in page.hand_figures]
    if args.check:
        for page in result:
            for name, (old, new) in page.blocks.items():
                if old != new:
                    problems.append(f"{page.path}: block {name!r} differs from its sources ({BLOCKS[name].sources})")
        for line in problems:
            print(line)
        if problems:
            print("run `make docs` to rewrite the blocks; move figures typed by hand into a block", file=sys.stderr)
        return 1 if problems else 0
    for page in result:
        if page.new != page.old:
            (args.root / page.path).write_text(page.new)
            print(f"wrote {page.path}")
    for line in problems:
        print(line, file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
