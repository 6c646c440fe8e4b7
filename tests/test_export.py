"""ONNX export: every model exports with verified parity, the file describes itself, bad input is refused.

Exports are made once per module (fresh checkpoints, a few hundred real test images for parity) and
shared by the tests below; checks that the exported graph is right use their own preprocessing and
a second runtime (OpenCV's DNN module), not the export code.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from export import ExportError, ParityError
from export.onnx import export_checkpoint
from export.onnx import main as export_main
from export.onnx_accuracy import main as onnx_accuracy_main
from export.parity import measure_parity
from export.quantize import METHOD, image_layers
from training.checkpoint import atomic_save, load_checkpoint, model_from_checkpoint
from training.data import CLASSES
from training.models import list_models

ROOT = Path(__file__).resolve().parents[1]
PARITY_IMAGES = 128
SLICE = 200  # real test images for the independent top-1 checks
EDGE_CASES = {"all_zero": 1, "all_255": 1, "batch_1": 1, "batch_64": 64}


@pytest.fixture(scope="module")
def exported(fresh_checkpoint, data_archive, tmp_path_factory):
    """``exported(arch) -> (checkpoint, onnx_path, report)``, each model exported once."""
    folder = tmp_path_factory.mktemp("exported")
    made: dict[str, tuple[Path, Path, dict]] = {}

    def export(arch: str):
        if arch not in made:
            ckpt = fresh_checkpoint(arch)
            out = folder / f"{arch}.onnx"
            report = export_checkpoint(ckpt, out, parity_images=PARITY_IMAGES, data=data_archive, log=lambda _: None)
            made[arch] = (ckpt, out, report)
        return made[arch]

    return export


def reference_outputs(ckpt_path: Path, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The checkpoint's model, with its recipe's test-time augmentation, on ``images`` normalized here."""
    from training.tta import with_tta

    ckpt = load_checkpoint(ckpt_path)
    mean, std = np.array(ckpt["mean"], np.float32), np.array(ckpt["std"], np.float32)
    x = ((images.astype(np.float32) / 255 - mean) / std).transpose(0, 3, 1, 2)
    model = with_tta(model_from_checkpoint(ckpt), ckpt["recipe"].get("tta", "none"))
    with torch.no_grad():
        logits = model(torch.from_numpy(np.ascontiguousarray(x)))
    return logits.numpy(), logits.softmax(1).numpy()


def onnx_outputs(path: Path, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return tuple(session.run(["logits", "probabilities"], {"image": images}))


def dims(value_info) -> list:
    return [d.dim_param or d.dim_value for d in value_info.type.tensor_type.shape.dim]


def perturb_first_conv(proto: onnx.ModelProto, delta: float = 1e-3) -> onnx.ModelProto:
    """``proto`` with ``delta`` added to every weight of its first Conv: a small, silent corruption."""
    conv = next(n for n in proto.graph.node if n.op_type == "Conv")
    init = next(t for t in proto.graph.initializer if t.name == conv.input[1])
    weights = onnx.numpy_helper.to_array(init) + np.float32(delta)
    init.CopyFrom(onnx.numpy_helper.from_array(weights.astype(np.float32), init.name))
    return proto


@pytest.mark.parametrize("arch", list_models())
def test_every_model_exports_with_parity(exported, arch):
    ckpt, out, report = exported(arch)
    assert report["passed"] and report["source"] == "cifar10-test" and report["images"] == PARITY_IMAGES
    assert report["max_abs_diff_probabilities"] <= 1e-5
    assert report["top1_agreement"] == 1.0 and report["top1_disagreements"] == 0
    assert {name: report["cases"][name]["images"] for name in EDGE_CASES} == EDGE_CASES
    assert json.loads(out.with_name(f"{arch}.parity.json").read_text()) == json.loads(json.dumps(report))

    proto = onnx.load(str(out))
    onnx.checker.check_model(proto, full_check=True)
    (image,) = proto.graph.input
    assert image.name == "image" and image.type.tensor_type.elem_type == onnx.TensorProto.UINT8
    assert dims(image) == ["batch", 32, 32, 3]
    for output in proto.graph.output:  # shape inference must find the outputs' shapes on its own
        output.type.tensor_type.ClearField("shape")
    inferred = onnx.shape_inference.infer_shapes(proto, strict_mode=True, data_prop=True)
    assert {o.name: (o.type.tensor_type.elem_type, dims(o)) for o in inferred.graph.output} == {
        "logits": (onnx.TensorProto.FLOAT, ["batch", 10]), "probabilities": (onnx.TensorProto.FLOAT, ["batch", 10])}


@pytest.mark.parametrize("arch", list_models())
def test_metadata_describes_the_model(exported, arch):
    ckpt_path, out, report = exported(arch)
    ckpt = load_checkpoint(ckpt_path)
    meta = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"]).get_modelmeta().custom_metadata_map
    assert json.loads(meta["classes"]) == list(CLASSES)
    assert meta["arch"] == arch
    assert meta["source_checkpoint_sha256"] == hashlib.sha256(ckpt_path.read_bytes()).hexdigest()
    assert meta["test_accuracy"] == "" and meta["epochs"] == "0" and meta["opset"] == "17"
    assert json.loads(meta["mean"]) == ckpt["mean"] and json.loads(meta["std"]) == ckpt["std"]
    parity = json.loads(meta["parity"])
    assert parity["passed"] and parity["max_abs_diff_probabilities"] == report["max_abs_diff_probabilities"]


def test_trained_checkpoint_facts_reach_the_metadata(fresh_checkpoint, tmp_path):
    ckpt = load_checkpoint(fresh_checkpoint("tutorial"))
    ckpt.update(test_accuracy=0.87123, epoch=30, classes=[f"c{i}" for i in range(10)])
    atomic_save(ckpt, tmp_path / "trained.pt")
    export_checkpoint(tmp_path / "trained.pt", tmp_path / "m.onnx", parity_images=64, log=lambda _: None)
    from export.metadata import read_metadata

    meta = read_metadata(tmp_path / "m.onnx")
    assert meta["test_accuracy"] == pytest.approx(0.8712) and meta["epochs"] == "30"
    assert meta["classes"] == [f"c{i}" for i in range(10)]
    raw = {p.key: p.value for p in onnx.load(str(tmp_path / "m.onnx")).metadata_props}
    assert raw["test_accuracy"] == "0.8712"


@pytest.mark.parametrize("arch", list_models())
def test_exported_graph_matches_checkpoint_on_real_images(exported, cifar, arch):
    ckpt, out, _ = exported(arch)
    images = cifar.test_images[:SLICE]
    ref_logits, ref_probs = reference_outputs(ckpt, images)
    logits, probs = onnx_outputs(out, images)
    np.testing.assert_array_equal(logits.argmax(1), ref_logits.argmax(1))
    np.testing.assert_allclose(probs, ref_probs, atol=1e-5, rtol=0)


OPENCV_SCRIPT = """
import sys, json, numpy as np, cv2
net = cv2.dnn.readNetFromONNX(sys.argv[1])
net.setInput(np.load(sys.argv[2]), "image")
logits, probs = net.forward(["logits", "probabilities"])
print(json.dumps({"top1": logits.argmax(1).tolist(), "probs": probs.tolist()}))
"""


@pytest.mark.parametrize("arch", [
    pytest.param(a, marks=pytest.mark.xfail(
        reason="OpenCV 5.0's ONNX importer fails on AdaptiveConv2d (pooling shape inference, then SIGFPE in the "
               "old parser) even without a batch-sized reshape; onnxruntime runs it and passes parity", strict=False))
    if a == "adaptive" else a for a in list_models()])
def test_opencv_dnn_agrees(exported, cifar, arch, tmp_path):
    """A second, independent runtime gives the same top-1 (in a subprocess: a crash must not kill pytest)."""
    pytest.importorskip("cv2")
    _, out, _ = exported(arch)
    images = cifar.test_images[:64]
    np.save(tmp_path / "images.npy", images)
    proc = subprocess.run([sys.executable, "-c", OPENCV_SCRIPT, str(out), str(tmp_path / "images.npy")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, f"OpenCV failed on {arch} (rc {proc.returncode}): {proc.stderr[-500:]}"
    result = json.loads(proc.stdout)
    logits, probs = onnx_outputs(out, images)
    assert result["top1"] == logits.argmax(1).tolist()
    np.testing.assert_allclose(np.array(result["probs"]), probs, atol=1e-5, rtol=0)


def test_tampered_model_fails_parity(exported, cifar, tmp_path):
    ckpt_path, out, _ = exported("tutorial")
    tampered = tmp_path / "tampered.onnx"
    onnx.save(perturb_first_conv(onnx.load(str(out))), str(tampered))
    ckpt = load_checkpoint(ckpt_path)
    images = cifar.test_images[:PARITY_IMAGES]
    report = measure_parity(model_from_checkpoint(ckpt), ckpt["mean"], ckpt["std"], tampered, images,
                            source="cifar10-test")
    assert not report["passed"] and report["max_abs_diff_probabilities"] > 1e-5
    untouched = measure_parity(model_from_checkpoint(ckpt), ckpt["mean"], ckpt["std"], out, images,
                               source="cifar10-test")
    assert untouched["passed"]


def test_parity_failure_exits_1_and_writes_no_model(fresh_checkpoint, data_archive, tmp_path, monkeypatch, capsys):
    import export.onnx as cli
    from export.graph import export_graph

    monkeypatch.setattr(cli, "export_graph", lambda *a, **k: perturb_first_conv(export_graph(*a, **k)))
    out = tmp_path / "models" / "tutorial.onnx"
    code = export_main([str(fresh_checkpoint("tutorial")), "--out", str(out), "--data", str(data_archive),
                        "--parity-images", "64"])
    err = capsys.readouterr().err
    assert code == 1
    assert err.startswith("error: parity FAILED") and err.count("\n") == 1 and "Traceback" not in err
    assert sorted(p.name for p in out.parent.iterdir()) == ["tutorial.parity-failed.json"]  # no model, no temp file
    assert json.loads((out.parent / "tutorial.parity-failed.json").read_text())["passed"] is False
    with pytest.raises(ParityError):
        export_checkpoint(fresh_checkpoint("tutorial"), out, parity_images=64, data=data_archive, log=lambda _: None)


def _random_pickle(path: Path) -> Path:
    path.write_bytes(pickle.dumps({"weights": np.random.default_rng(0).normal(size=10)}))
    return path


def _unknown_arch(path: Path, fresh_checkpoint) -> Path:
    ckpt = load_checkpoint(fresh_checkpoint("tutorial"))
    ckpt["arch"] = "resnet9000"
    atomic_save(ckpt, path)
    return path


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
@pytest.mark.parametrize("kind, expected", [
    ("missing", "checkpoint not found"),
    ("random_pickle", "is not a readable checkpoint"),
    ("text", "is not a readable checkpoint"),
    ("truncated", "is not a readable checkpoint"),
    ("unknown_arch", "unknown model 'resnet9000'"),
])
def test_bad_checkpoint_is_a_one_line_error(kind, expected, fresh_checkpoint, tmp_path, capsys):
    def write(name: str, data: bytes) -> Path:
        (tmp_path / name).write_bytes(data)
        return tmp_path / name

    path = {"missing": lambda: tmp_path / "nope.pt",
            "random_pickle": lambda: _random_pickle(tmp_path / "random.pt"),
            "text": lambda: write("text.pt", b"hello, not a checkpoint\n"),
            "truncated": lambda: write("cut.pt", fresh_checkpoint("tutorial").read_bytes()[:5000]),
            "unknown_arch": lambda: _unknown_arch(tmp_path / "unknown.pt", fresh_checkpoint)}[kind]()
    code = export_main([str(path), "--out", str(tmp_path / "out.onnx"), "--parity-images", "8"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("error: ") and expected in err and err.count("\n") == 1
    assert not (tmp_path / "out.onnx").exists()


def test_cli_end_to_end_with_triton_repository(fresh_checkpoint, data_archive, tmp_path):
    """The real command in a subprocess; the Triton entry it writes is what Triton's config expects."""
    out, repo = tmp_path / "tutorial.onnx", tmp_path / "triton"
    proc = subprocess.run([sys.executable, "-m", "export.onnx", str(fresh_checkpoint("tutorial")), "--out", str(out),
                           "--data", str(data_archive), "--parity-images", "100", "--triton-repo", str(repo),
                           "--triton-max-batch", "64"], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert re.search(r"^parity ok: 100 CIFAR-10 test images .*top-1 agreement 100\.00% -> .*tutorial\.onnx$",
                     proc.stdout, re.M)
    assert out.is_file() and (tmp_path / "tutorial.parity.json").is_file()

    entry = repo / "tutorial"
    assert (entry / "1" / "model.onnx").read_bytes() == out.read_bytes()
    assert (entry / "labels.txt").read_text().splitlines() == list(CLASSES)
    config = (entry / "config.pbtxt").read_text()
    assert config.count("{") == config.count("}") and config.count("[") == config.count("]")
    assert re.search(r'^name: "tutorial"$', config, re.M)
    assert re.search(r'^backend: "onnxruntime"$', config, re.M)
    assert re.search(r"^max_batch_size: 64$", config, re.M)
    assert re.search(r'name: "image"\s+data_type: TYPE_UINT8\s+dims: \[ 32, 32, 3 \]', config)
    assert re.search(r'name: "logits"\s+data_type: TYPE_FP32\s+dims: \[ 10 \]', config)
    assert re.search(r'name: "probabilities"\s+data_type: TYPE_FP32\s+dims: \[ 10 \]\s+label_filename: "labels.txt"',
                     config)
    batching = re.search(r"dynamic_batching \{(.*?)\}", config, re.S).group(1)
    preferred = [int(b) for b in re.search(r"preferred_batch_size: \[([^\]]*)\]", batching).group(1).split(",")]
    assert preferred and max(preferred) <= 64 and "max_queue_delay_microseconds" in batching

    missing = subprocess.run([sys.executable, "-m", "export.onnx", str(tmp_path / "nope.pt")],
                             capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert missing.returncode == 2 and missing.stderr.count("\n") == 1 and "Traceback" not in missing.stderr


def test_without_data_checks_random_images_and_writes_default_path(fresh_checkpoint, tmp_path, monkeypatch):
    monkeypatch.delenv("CIFAR10_DATA", raising=False)
    monkeypatch.chdir(tmp_path)
    messages: list[str] = []
    report = export_checkpoint(fresh_checkpoint("dwsep"), parity_images=50, log=messages.append)
    assert "no CIFAR-10 data" in messages[0] and "random" in messages[0]
    assert report["passed"] and report["source"] == "random" and report["images"] == 50
    assert "accuracy_torch" not in report["cases"]["images"]
    assert (tmp_path / "weights" / "dwsep.onnx").is_file() and (tmp_path / "weights" / "dwsep.parity.json").is_file()
    with pytest.raises(ExportError, match="--int8 needs CIFAR-10 data"):
        export_checkpoint(fresh_checkpoint("dwsep"), tmp_path / "x.onnx", int8=True, log=messages.append)


def test_whitened_vgg_graphs_carry_no_normalization_or_batchnorm_ops(exported, cifar, tmp_path):
    """The served graph of an airbench network is its folded form (``folded_for_inference``): raw pixels go
    straight into the whitening conv (through the TTA's slices only), BatchNorms live inside the convs, and the
    int8 file runs each SiLU as one kernel, with the answers of the unfused file; parity passed on it."""
    import export.quantize
    from export.sample_images import calibration_images

    _, out, report = exported("whitened_vgg_fast")
    assert report["passed"]
    proto = onnx.load(str(out))
    ops = [n.op_type for n in proto.graph.node]
    assert "BatchNormalization" not in ops and "Sub" not in ops and "Div" not in ops
    assert set(ops[:ops.index("Conv")]) <= {"Identity", "Transpose", "Cast", "Constant", "Slice", "Concat"}

    fused = onnx.load(str(out))
    assert export.quantize.fuse_silu(fused) == ops.count("Sigmoid") == 7
    fused_ops = [n.op_type for n in fused.graph.node]
    assert fused_ops.count("QuickGelu") == 7 and "Sigmoid" not in fused_ops
    images = cifar.test_images[:32]
    session = ort.InferenceSession(fused.SerializeToString(), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(session.run(["logits"], {"image": images})[0], onnx_outputs(out, images)[0],
                               rtol=1e-4, atol=1e-5)

    calibration = calibration_images(cifar, 64)
    int8_file, unfused_file = tmp_path / "fused.int8.onnx", tmp_path / "unfused.int8.onnx"
    export.quantize.quantize_file(out, int8_file, calibration)
    export.quantize.quantize_file(out, unfused_file, calibration, fuse=False)
    int8_ops = [n.op_type for n in onnx.load(str(int8_file)).graph.node]
    assert int8_ops.count("QuickGelu") == 7 and "Sigmoid" not in int8_ops
    got, expected = onnx_outputs(int8_file, images)[0], onnx_outputs(unfused_file, images)[0]
    np.testing.assert_allclose(got, expected, atol=0.02 * np.abs(expected).max())

def test_int8_variant_is_scored_and_kept_only_within_the_drop(fresh_checkpoint, data_archive, tmp_path):
    ckpt, out = fresh_checkpoint("tutorial"), tmp_path / "tutorial.onnx"
    int8_file = tmp_path / "tutorial.int8.onnx"
    report = export_checkpoint(ckpt, out, parity_images=200, data=data_archive, int8=True, calibration_images=64,
                               int8_max_drop=100, log=lambda _: None)
    figures = report["int8"]
    assert figures["kept"] and figures["model"] == str(int8_file) and int8_file.is_file()
    assert figures["test_images"] == 200 and figures["calibration_images"] == 64
    assert 0 <= figures["int8_accuracy"] <= 1 and 0 <= figures["fp32_accuracy"] <= 1
    assert figures["throughput_ratio"] > 0 and figures["int8_images_per_second"] > 0
    assert json.loads((tmp_path / "tutorial.parity.json").read_text())["int8"] == figures

    proto = onnx.load(str(int8_file))
    ops = [n.op_type for n in proto.graph.node]
    assert "QuantizeLinear" in ops and "DequantizeLinear" in ops
    consumers = {i: n for n in proto.graph.node for i in n.input}
    head = [consumers["image"]]  # the uint8 input still goes through the float preprocessing chain
    while head[-1].op_type not in ("Conv", "QuantizeLinear"):
        head.append(consumers[head[-1].output[0]])
    # ... into the first convolution, which stays float (export.quantize.image_layers), with float weights
    assert [n.op_type for n in head] == ["Transpose", "Cast", "Div", "Sub", "Div", "Conv"]
    initializers = {t.name for t in proto.graph.initializer}
    assert head[-1].input[1] in initializers
    producers = {o: n for n in proto.graph.node for o in n.output}
    later = [n for n in proto.graph.node if n.op_type in ("Conv", "Gemm", "MatMul") and n is not head[-1]]
    assert later and all(producers[n.input[0]].op_type == "DequantizeLinear"
                         and producers[n.input[1]].op_type == "DequantizeLinear" for n in later)
    assert figures["method"] == METHOD and "Percentile" in figures["method"]
    meta = {p.key: p.value for p in proto.metadata_props}
    assert json.loads(meta["classes"]) == list(CLASSES) and json.loads(meta["quantization"])["kept"]
    logits, probs = onnx_outputs(int8_file, np.zeros((3, 32, 32, 3), np.uint8))
    assert logits.shape == probs.shape == (3, 10)

    rejected = export_checkpoint(ckpt, out, parity_images=200, data=data_archive, int8=True, calibration_images=64,
                                 int8_max_drop=-100, log=lambda _: None)["int8"]
    assert not rejected["kept"] and rejected["model"] is None
    assert not int8_file.exists()  # the earlier int8 file no longer stands beside this export
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_onnx_accuracy_reports_accuracy_of_the_file(exported, cifar, tmp_path, capsys):
    ckpt, out, _ = exported("staged_baseline")
    code = onnx_accuracy_main([str(out), "--data", os.fspath(cifar.source), "--limit", str(SLICE),
                          "--json", str(tmp_path / "eval.json")])
    stdout = capsys.readouterr().out
    assert code == 0
    result = json.loads((tmp_path / "eval.json").read_text())
    logits, _ = reference_outputs(ckpt, cifar.test_images[:SLICE])
    labels = cifar.test_labels[:SLICE]
    assert result["images"] == SLICE
    assert result["accuracy"] == pytest.approx(float((logits.argmax(1) == labels).mean()))
    for i, name in enumerate(CLASSES):
        assert result["per_class_accuracy"][name] == pytest.approx(float((logits.argmax(1)[labels == i] == i).mean()))
    assert f"test accuracy {100 * result['accuracy']:.2f}% on {SLICE} images" in stdout
    assert onnx_accuracy_main([str(tmp_path / "missing.onnx"), "--data", os.fspath(cifar.source)]) == 2
    assert capsys.readouterr().err.startswith("error: model not found")


def test_subnormal_weights_are_written_as_zero_and_parity_still_holds(fresh_checkpoint, data_archive, tmp_path):
    """Weight decay leaves weights without gradient subnormal; x86 multiplies those on a slow path (staged_baseline's
    fp32 file ran 38x slower), so the exported file holds none, and it still agrees with the checkpoint."""
    ckpt = load_checkpoint(fresh_checkpoint("tutorial"))
    convs = [k for k, v in ckpt["state_dict"].items() if k.endswith("weight") and v.dim() == 4]
    weight = ckpt["state_dict"][convs[1]]
    weight.view(-1)[: weight.numel() // 2] = 1e-39  # half of one layer's weights subnormal
    atomic_save(ckpt, tmp_path / "decayed.pt")
    report = export_checkpoint(tmp_path / "decayed.pt", tmp_path / "decayed.onnx", parity_images=64,
                               data=data_archive, log=lambda _: None)
    assert report["passed"]
    tiny = np.finfo(np.float32).tiny
    for initializer in onnx.load(tmp_path / "decayed.onnx").graph.initializer:
        values = onnx.numpy_helper.to_array(initializer)
        if values.dtype == np.float32:
            assert not ((values != 0) & (np.abs(values) < tiny)).any(), initializer.name


def test_the_layers_left_float_are_those_reading_the_image_in_every_branch():
    """An ensemble's file has one first convolution per member, each behind its own preprocessing; a layer fed by
    another quantizable layer is never among them, however the graph branches."""
    from onnx import TensorProto, helper

    def conv(name, x, out):
        return helper.make_node("Conv", [x, f"{name}_w"], [out], name=name)

    nodes = [
        helper.make_node("Cast", ["image"], ["x"], to=TensorProto.FLOAT, name="cast"),
        helper.make_node("Div", ["x", "scale_a"], ["a_in"], name="norm_a"),
        conv("member_a_first", "a_in", "a1"), conv("member_a_second", "a1", "a2"),
        helper.make_node("Sub", ["x", "mean_b"], ["b_in"], name="norm_b"),
        conv("member_b_first", "b_in", "b1"),
        helper.make_node("Relu", ["b1"], ["b1r"], name="relu_b"), conv("member_b_second", "b1r", "b2"),
        helper.make_node("Add", ["a2", "b2"], ["y"], name="mean"),
    ]
    graph = helper.make_graph(nodes, "ensemble", [helper.make_tensor_value_info("image", TensorProto.UINT8, None)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    assert sorted(image_layers(helper.make_model(graph))) == ["member_a_first", "member_b_first"]
    weight = helper.make_tensor("member_a_second_w", TensorProto.FLOAT, [1, 1, 1, 1], [1.0])
    graph.initializer.append(weight)  # a weight listed among the inputs, as files of IR version < 4 do
    graph.input.append(helper.make_tensor_value_info("member_a_second_w", TensorProto.FLOAT, [1, 1, 1, 1]))
    assert sorted(image_layers(helper.make_model(graph))) == ["member_a_first", "member_b_first"]
