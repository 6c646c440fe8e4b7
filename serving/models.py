"""The ONNX model registry: every ``<name>.onnx`` in MODELS_DIR, loaded, verified and warmed up.

A model file is accepted only if it meets the exporter's contract: one input ``image`` (uint8,
[batch, 32, 32, 3], dynamic batch), an output ``probabilities`` (float32, [batch, C]) and
metadata ``classes`` (a JSON list of C names). Anything else is a ModelLoadError whose message
names the file and the problem, so a bad deployment fails at start-up instead of on a request.

Model names are the file stems. A request's model name is only ever a key into the loaded dict,
never part of a path.

An optional ``MANIFEST.json`` beside the files (written by ``export.package``) names the default
model and lends each model its measured figures (CPU images/s in batches and one at a time, parameter
count, and a test accuracy where the file records none of its own), but only to the
exact file it measured: its entry's ``onnx_sha256`` (its ``int8`` part's, for an int8 file) must
equal the loaded file's. The ONNX file is the source of truth for what is served; the manifest only
ever adds figures. ``Manifest.attach_figures`` is the one place a served file gets its figures, so
``/models``, ``/v2/models/NAME`` and the page all show those of the file behind each name.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from common.contract import (
    IMAGE_SHAPE,
    INPUT_NAME,
    INPUT_ORT_TYPE,
    INT8_SUFFIX,
    LOGITS,
    NO_TTA,
    OUTPUT_ORT_TYPE,
    PROBABILITIES,
    MetadataKey,
    int8_preferred,
)
from common.inference import session_options as common_session_options
from common.text import first_line
from serving import lifecycle
from serving.model_files import MANIFEST, ModelFiles, ModelLoadError, files_for

log = logging.getLogger(__name__)

TEST_IMAGES = 10_000  # the CIFAR-10 test split: a test accuracy is measured on all of it

__all__ = ["ModelLoadError", "ModelRegistry", "LoadedModel", "UnknownModelError", "load_model"]


class UnknownModelError(KeyError):
    def __init__(self, name: str, available: list[str]):
        shown = name if len(name) <= 80 else name[:77] + "..."
        super().__init__(f"unknown model {shown!r}; loaded models: {', '.join(available)}")

    def __str__(self) -> str:
        return self.args[0]


@dataclass
class LoadedModel:
    name: str
    path: Path
    sha256: str
    file_size: int
    classes: tuple[str, ...]
    metadata: dict[str, str]
    session: ort.InferenceSession = field(repr=False)
    outputs: tuple[str, ...] = ()
    warmed: bool = False
    # This file's figures, set by Manifest.attach_figures (the only place that sets them): each one a
    # measurement of this very file, or None.
    test_accuracy: float | None = None
    cpu_images_per_s: float | None = None
    single_images_per_s: float | None = None
    parameters: int | None = None
    pretrained: str | None = None  # "ImageNet-1k pretrained (external data): PACKAGE==VERSION"; None: from scratch

    @property
    def arch(self) -> str | None:
        return self.metadata.get(MetadataKey.ARCH) or None

    @property
    def own_accuracy(self) -> float | None:
        """The test accuracy this file records of itself. An int8 file carries its fp32 original's metadata,
        ``test_accuracy`` included, so its own is the int8 accuracy of its quantization figures, and only
        when those were measured on the whole test split."""
        if self.precision == "fp32":
            return _parse_accuracy(self.metadata.get(MetadataKey.TEST_ACCURACY, ""), self.path)
        figures = self.quantization or {}
        accuracy = _fraction(figures.get("int8_accuracy"))
        whole_split = type(figures.get("test_images")) is int and figures["test_images"] == TEST_IMAGES
        return round(accuracy, 4) if accuracy is not None and whole_split else None

    @property
    def quantization(self) -> dict | None:
        """An int8 file's figures against its fp32 original (export.quantize), None for an fp32 file."""
        try:
            figures = json.loads(self.metadata.get(MetadataKey.QUANTIZATION) or "null")
        except json.JSONDecodeError:
            return None
        return figures if isinstance(figures, dict) else None

    @property
    def precision(self) -> str:
        return "int8" if MetadataKey.QUANTIZATION in self.metadata else "fp32"

    @property
    def tta(self) -> str:
        """Test-time augmentation inside the graph (``flip``, ``flip_translate``), or ``none``."""
        return (self.metadata.get(MetadataKey.TTA) or "").strip() or NO_TTA

    def run(self, images: np.ndarray, outputs: tuple[str, ...] = (PROBABILITIES,)) -> list[np.ndarray]:
        """``images``: uint8 [n, 32, 32, 3] RGB. Returns the requested outputs, float32 [n, C] each."""
        return self.session.run(list(outputs), {INPUT_NAME: images})

    def probabilities(self, images: np.ndarray) -> np.ndarray:
        return self.run(images)[0]

    def figures(self) -> dict:
        """The measured figures of this file (None where unknown), as every endpoint reports them."""
        return {"test_accuracy": self.test_accuracy, "cpu_images_per_s": self.cpu_images_per_s,
                "single_images_per_s": self.single_images_per_s}

    def describe(self) -> dict:
        return {
            "name": self.name,
            "arch": self.arch,
            "classes": list(self.classes),
            **self.figures(),
            "tta": self.tta,
            "precision": self.precision,
            "parameters": self.parameters,
            "pretrained": self.pretrained,
            "sha256": self.sha256,
            "file_size": self.file_size,
            "opset": _int_or_none(self.metadata.get(MetadataKey.OPSET)),
            "epochs": _int_or_none(self.metadata.get(MetadataKey.EPOCHS)),
            "source_checkpoint_sha256": self.metadata.get(MetadataKey.SOURCE_CHECKPOINT_SHA256) or None,
            "input": {"name": INPUT_NAME, "datatype": "UINT8", "shape": [-1, *IMAGE_SHAPE]},
            "outputs": [{"name": name, "datatype": "FP32", "shape": [-1, len(self.classes)]}
                        for name in self.outputs],
        }


def _int_or_none(text: str | None) -> int | None:
    return int(text) if text and text.strip().isdigit() else None


def _fraction(value: Any) -> float | None:
    """``value`` as a float if it is a JSON number from 0 to 1 (not a bool, not a string), else None."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if 0 <= value <= 1 else None  # NaN fails both comparisons; a huge int is never turned


def _parse_accuracy(text: str, path: Path) -> float | None:
    text = (text or "").strip()
    if not text:
        return None
    try:
        value = float(text)
    except ValueError:
        raise ModelLoadError(f"{path}: metadata test_accuracy is not a number: {text!r}") from None
    if not (math.isfinite(value) and 0.0 <= value <= 1.0):
        raise ModelLoadError(f"{path}: metadata test_accuracy must be between 0 and 1, got {text!r}")
    return value


def session_options(intra_op_threads: int) -> ort.SessionOptions:
    options = common_session_options(intra_op_threads)
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # Idle intra-op threads must not spin: other workers need those cores.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.log_severity_level = 3  # errors only; a load failure is reported by us, in one line
    return options


def _dims_match(shape, expected) -> bool:
    return len(shape) == len(expected) and all(a == b for a, b in zip(shape, expected, strict=True))


def load_model(path: Path, intra_op_threads: int = 1, data: bytes | None = None) -> LoadedModel:
    """Load, verify and warm one model file (``data``: its bytes, when already read). Raises ModelLoadError."""
    if data is None:
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise ModelLoadError(f"{path}: cannot read model file: {exc.strerror or exc}") from None
    if not data:
        raise ModelLoadError(f"{path}: model file is empty")
    try:
        session = ort.InferenceSession(data, sess_options=session_options(intra_op_threads),
                                       providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own pybind exception types for corrupt files
        raise ModelLoadError(f"{path}: not a loadable ONNX model: {first_line(exc)}") from None

    inputs = session.get_inputs()
    if len(inputs) != 1 or inputs[0].name != INPUT_NAME:
        raise ModelLoadError(f"{path}: expected one input named {INPUT_NAME!r}, "
                             f"found {[i.name for i in inputs]}")
    image = inputs[0]
    if image.type != INPUT_ORT_TYPE:
        raise ModelLoadError(f"{path}: input {INPUT_NAME!r} must be uint8, found {image.type}")
    if len(image.shape) != 4 or isinstance(image.shape[0], int) or not _dims_match(image.shape[1:], IMAGE_SHAPE):
        raise ModelLoadError(f"{path}: input {INPUT_NAME!r} must have shape [batch, 32, 32, 3] with a dynamic "
                             f"batch dimension, found {image.shape}")
    outputs = {o.name: o for o in session.get_outputs()}
    if PROBABILITIES not in outputs:
        raise ModelLoadError(f"{path}: no output named {PROBABILITIES!r} (outputs: {sorted(outputs)})")
    served = tuple(name for name in (PROBABILITIES, LOGITS) if name in outputs)
    for name in served:
        if outputs[name].type != OUTPUT_ORT_TYPE or len(outputs[name].shape) != 2:
            raise ModelLoadError(f"{path}: output {name!r} must be float32 [batch, classes], "
                                 f"found {outputs[name].type} {outputs[name].shape}")

    metadata = dict(session.get_modelmeta().custom_metadata_map)
    try:
        classes = json.loads(metadata.get(MetadataKey.CLASSES, ""))
    except json.JSONDecodeError:
        raise ModelLoadError(f"{path}: metadata 'classes' is missing or not JSON") from None
    if (not isinstance(classes, list) or len(classes) < 2
            or not all(isinstance(c, str) and c for c in classes) or len(set(classes)) != len(classes)):
        raise ModelLoadError(f"{path}: metadata 'classes' must be a JSON list of distinct class names")
    width = outputs[PROBABILITIES].shape[1]
    if isinstance(width, int) and width != len(classes):
        raise ModelLoadError(f"{path}: {len(classes)} class names but {width} probabilities")
    _parse_accuracy(metadata.get(MetadataKey.TEST_ACCURACY, ""), path)

    model = LoadedModel(name=path.stem, path=path, sha256=hashlib.sha256(data).hexdigest(), file_size=len(data),
                        classes=tuple(classes), metadata=metadata, session=session, outputs=served)
    warm_up(model)
    return model


def warm_up(model: LoadedModel) -> None:
    """Run the batch sizes a service sees (1, a few, many) once and check the answers are probabilities."""
    rng = np.random.default_rng(0)
    for batch in (1, 8, 1):
        images = rng.integers(0, 256, size=(batch, *IMAGE_SHAPE), dtype=np.uint8)
        try:
            probs = model.probabilities(images)
        except Exception as exc:  # a graph that loads but cannot run, e.g. an op without a CPU kernel
            raise ModelLoadError(f"{model.path}: warm-up inference failed: {first_line(exc)}") from None
        if probs.shape != (batch, len(model.classes)):
            raise ModelLoadError(f"{model.path}: warm-up produced shape {probs.shape}, "
                                 f"expected {(batch, len(model.classes))}")
        if not (np.all(np.isfinite(probs)) and np.allclose(probs.sum(axis=1), 1.0, atol=1e-3)):
            raise ModelLoadError(f"{model.path}: output {PROBABILITIES!r} is not a probability distribution")
    model.warmed = True


class ModelRegistry:
    def __init__(self, models: dict[str, LoadedModel], default: str, files: ModelFiles):
        self.models = models
        self.default_name = default
        self.files = files  # the bytes the models were built from (see serving/model_files.py)

    @property
    def names(self) -> list[str]:
        return sorted(self.models)

    @property
    def ready(self) -> bool:
        """Every model loaded and warmed, and this worker not shutting down (serving/lifecycle.py)."""
        return bool(self.models) and all(m.warmed for m in self.models.values()) and not lifecycle.shutting_down()

    def get(self, name: str | None = None) -> LoadedModel:
        if name is None or name == "":
            return self.models[self.default_name]
        try:
            return self.models[name]
        except KeyError:
            raise UnknownModelError(name, self.names) from None

    @classmethod
    def load(cls, models_dir: str | Path, default_model: str | None = None,
             intra_op_threads: int = 1, precision: str = "auto") -> ModelRegistry:
        """The models of ``models_dir``: the bytes pinned at start-up under gunicorn, else the files on disk.
        ``precision``: "auto" serves a model's int8 file under its name where it earns it, "fp32" never."""
        files = files_for(models_dir)
        models: dict[str, LoadedModel] = {}
        for name, data in files.models.items():
            model = load_model(files.path_of(name), intra_op_threads, data)
            models[model.name] = model
        models = name_by_precision(models, prefer_int8=precision == "auto")
        manifest = parse_manifest(files)
        if manifest.error:
            if not default_model:  # it alone could name the default model: guessing one would hide the fault
                raise ModelLoadError(manifest.error)
            log.warning("%s; DEFAULT_MODEL is set, so serving without the manifest's figures", manifest.error)
        for model in models.values():
            manifest.attach_figures(model)
            log.info("loaded model %s (%s, %s, sha256 %s, test accuracy %s)", model.name, model.arch,
                     model.precision, model.sha256[:12], model.test_accuracy)
        default = default_model or manifest.default_model or sorted(models)[0]
        if default not in models:
            source = "DEFAULT_MODEL" if default_model else f"{MANIFEST} default_model"
            raise ModelLoadError(f"{source} {default!r} is not among the loaded models: {', '.join(sorted(models))}")
        for model in models.values():
            if model.classes != models[default].classes:
                log.warning("model %s has other classes than the default model %s", model.name, default)
        return cls(models, default, files)


def name_by_precision(models: dict[str, LoadedModel], prefer_int8: bool) -> dict[str, LoadedModel]:
    """Names for ``NAME.int8`` files (common.contract): NAME when the int8 copy earns it (and the fp32 file
    becomes NAME-fp32), else NAME-int8; an int8 file without its fp32 original keeps the name NAME."""
    for stem in sorted(s for s in models if s.endswith(INT8_SUFFIX)):
        int8, base = models[stem], stem.removesuffix(INT8_SUFFIX)
        if base not in models:
            int8.name = base
        elif prefer_int8 and int8_preferred(int8.quantization):
            models[base].name, int8.name = f"{base}-fp32", base
        else:
            int8.name = f"{base}-int8"
    named = {model.name: model for model in models.values()}
    if len(named) != len(models):
        clashes = sorted({m.name for m in models.values() if sum(o.name == m.name for o in models.values()) > 1})
        raise ModelLoadError(f"two model files would both be served as {', '.join(clashes)}; rename one")
    return named


@dataclass(frozen=True)
class Manifest:
    """MODELS_DIR/MANIFEST.json as the service uses it, read once at start-up.

    Reading never raises: ``error`` (one line) says why the file as a whole is unusable, and the
    caller decides whether that matters (it does only when the manifest must name the default model).
    Anything odd inside an entry only costs that entry its figures.
    """

    default_model: str | None = None
    entries: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    path: Path | None = None
    error: str | None = None

    def attach_figures(self, model: LoadedModel) -> None:
        """Give ``model`` the figures of the very file it serves; the one place they are set.

        Test accuracy: the file's own (``LoadedModel.own_accuracy``), else its manifest entry's. Speeds and
        parameters: its manifest entry's. For an int8 file the entry is the ``int8`` part of its model's
        entry, never the fp32 figures beside it, and any entry counts only if it measured this file
        (its ``onnx_sha256`` is the loaded file's).
        """
        model.test_accuracy = model.own_accuracy
        entry, parameters = self.entry_for(model)
        if entry is None:
            return
        model_entry = self.entries.get(model.path.stem.removesuffix(INT8_SUFFIX)) or {}
        pretrained = model_entry.get("pretrained")  # the model's, shared by its fp32 file and int8 copy
        model.pretrained = pretrained if isinstance(pretrained, str) and pretrained else None
        listed = _fraction(entry.get("test_accuracy"))
        if model.test_accuracy is None:
            model.test_accuracy = listed
        elif listed is not None and abs(listed - model.test_accuracy) > 5e-5:  # more than the 4 places kept
            log.warning("%s: the entry for %s gives test accuracy %s, the file itself %s; showing the file's",
                        self.path, model.name, listed, model.test_accuracy)
        model.cpu_images_per_s = _positive_number(entry.get("cpu_images_per_s"))
        single = entry.get("single_images_per_s")
        if single is None and model.precision == "fp32" and isinstance(entry.get("int8"), dict):
            single = entry["int8"].get("fp32_single_images_per_s")  # measured on this fp32 file, beside its copy
        model.single_images_per_s = _positive_number(single)
        model.parameters = parameters if type(parameters) is int and parameters > 0 else None  # not a bool

    def entry_for(self, model: LoadedModel) -> tuple[Mapping[str, Any] | None, Any]:
        """The manifest entry that measured ``model``'s file (its ``int8`` part for an int8 file), or None;
        and the model's parameter count, which an fp32 file and its int8 copy share."""
        entry = self.entries.get(model.path.stem.removesuffix(INT8_SUFFIX))
        parameters = entry.get("parameters") if entry is not None else None
        if entry is not None and model.precision == "int8":
            entry = entry.get("int8") if isinstance(entry.get("int8"), dict) else None
        if entry is None:
            return None, None
        if entry.get("onnx_sha256") != model.sha256:
            recorded = entry.get("onnx_sha256")
            shown = recorded[:12] if isinstance(recorded, str) else repr(recorded)
            log.warning("%s: the entry for %s was measured on another file (onnx_sha256 %s, loaded file %s); "
                        "its figures are not shown", self.path, model.name, shown, model.sha256[:12])
            return None, None
        return entry, parameters


def _positive_number(value: Any) -> float | None:
    """``value`` as a float if it is a finite JSON number above 0 (not a bool, not a string), else None."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        value = float(value)
    except OverflowError:  # an integer of hundreds of digits
        return None
    return value if math.isfinite(value) and value > 0 else None


def parse_manifest(files: ModelFiles) -> Manifest:
    """The manifest read with ``files``: empty if there is none, with ``error`` set if it cannot be used."""
    if files.manifest is None:
        return Manifest()
    path = files.folder / MANIFEST
    try:
        manifest = json.loads(files.manifest.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:  # ValueError: JSONDecodeError, over-long numbers
        return Manifest(path=path, error=f"{path}: not readable JSON: {first_line(exc)}")
    except RecursionError:
        return Manifest(path=path, error=f"{path}: not readable JSON: nested too deeply")
    if not isinstance(manifest, dict):
        return Manifest(path=path, error=f"{path}: expected a JSON object")
    default = manifest.get("default_model")
    if default is not None and not (isinstance(default, str) and default):
        return Manifest(path=path, error=f"{path}: default_model must be a model name, got {default!r}")
    models = manifest.get("models")
    entries = ({name: entry for name, entry in models.items() if isinstance(entry, dict)}
               if isinstance(models, dict) else {})
    return Manifest(default_model=default, entries=entries, path=path)
