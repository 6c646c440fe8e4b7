"""Ensembles: shipped models combined in one checkpoint and one ONNX file, served like any model.

What a user relies on: the ensemble answers the average of its members' probabilities (each member with
its own normalization and test-time augmentation), its files hold fp16 weights (half the bytes) and
compute exactly what PyTorch computes on them, packaging records where every member came from (a
pretrained member's label included), and bad input is a one-line error.
"""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from export.graph import store_fp16
from export.onnx import export_checkpoint
from export.package import main as package_main
from training.checkpoint import CheckpointError, RunArgs, atomic_save, load_checkpoint, model_from_checkpoint
from training.ensemble import build_ensemble
from training.ensemble import main as ensemble_main
from training.models import list_models, model_info
from training.tta import with_tta

MEMBERS = ("dwsep", "staged_baseline")


@pytest.fixture(scope="module")
def members(fresh_checkpoint, tmp_path_factory):
    """Two member checkpoints that differ in normalization and TTA; the second says it was pretrained."""
    folder = tmp_path_factory.mktemp("members")
    paths = []
    for arch, tta, pretrained in zip(MEMBERS, ("flip", "none"), ("", "some-weights-package==1.2"), strict=True):
        ckpt = load_checkpoint(fresh_checkpoint(arch))
        ckpt["recipe"]["tta"] = tta
        ckpt["args"] = RunArgs(recipe_name=arch, pretrained=pretrained).to_dict()
        ckpt["epoch"] = ckpt["epochs"]
        path = folder / f"{arch}.pt"
        atomic_save(ckpt, path)
        paths.append(path)
    return paths


@pytest.fixture(scope="module")
def ensemble_run(members, tmp_path_factory):
    out = tmp_path_factory.mktemp("ensemble-run")
    assert ensemble_main([*map(str, members), "--out", str(out)]) == 0
    return out


def member_probabilities(path, images: np.ndarray) -> np.ndarray:
    """A member's probabilities as its own export would compute them: its normalization, its TTA."""
    ckpt = load_checkpoint(path)
    x = (images.astype(np.float32) / 255 - np.float32(ckpt["mean"])) / np.float32(ckpt["std"])
    model = with_tta(model_from_checkpoint(ckpt), ckpt["recipe"]["tta"])
    # the ensemble computes on its weights rounded to fp16: so does the reference
    with torch.no_grad():
        for p in model.state_dict().values():
            if p.is_floating_point():
                p.copy_(p.half().float())
        return model(torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))).softmax(1).numpy()


def test_an_ensemble_is_built_not_trained():
    assert "ensemble" not in list_models()  # training.run lists and trains what has a recipe
    assert not model_info("ensemble").trainable


def test_the_ensemble_answers_the_mean_of_its_members_probabilities(members, ensemble_run, cifar, tmp_path):
    images = cifar.test_images[:64]
    out = tmp_path / "ensemble.onnx"
    report = export_checkpoint(ensemble_run / "best.pt", out, data=cifar, parity_images=64, log=lambda _: None)
    assert report["passed"]
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    logits, probabilities = session.run(["logits", "probabilities"], {"image": images})
    expected = np.mean([member_probabilities(p, images) for p in members], axis=0)
    np.testing.assert_allclose(probabilities, expected, atol=2e-6)
    np.testing.assert_allclose(np.exp(logits), expected, rtol=1e-4, atol=1e-7)  # logits: log of the average


def test_weights_are_stored_in_fp16_and_the_onnx_file_holds_them_so(members, ensemble_run, cifar, tmp_path):
    ckpt = load_checkpoint(ensemble_run / "best.pt")
    floats = [v for v in ckpt["state_dict"].values() if v.is_floating_point()]
    assert floats and all(v.dtype == torch.float16 for v in floats)
    out = tmp_path / "ensemble.onnx"
    export_checkpoint(ensemble_run / "best.pt", out, data=cifar, parity_images=16, log=lambda _: None)
    proto = onnx.load(str(out))
    stored = {t.name: t.data_type for t in proto.graph.initializer}
    weights = sum(v.numel() for v in floats)
    in_fp16 = sum(int(np.prod(t.dims)) for t in proto.graph.initializer if t.data_type == onnx.TensorProto.FLOAT16)
    assert in_fp16 >= 0.99 * weights, "the members' weights are not stored as fp16"
    assert out.stat().st_size < 2.2 * weights  # two bytes a weight, plus the graph
    assert onnx.TensorProto.FLOAT16 in stored.values()


def test_store_fp16_changes_only_tensors_that_fp16_holds_exactly():
    exact = np.arange(-32, 32, dtype=np.float32).reshape(8, 8) / 16  # multiples of 1/16: fp16 holds them
    inexact = exact + np.float32(1e-4)
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("MatMul", ["x", "exact"], ["a"]),
         onnx.helper.make_node("MatMul", ["a", "inexact"], ["y"])],
        "g", [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 8])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 8])],
        [onnx.numpy_helper.from_array(exact, "exact"), onnx.numpy_helper.from_array(inexact, "inexact")])
    proto = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)], ir_version=8)
    x = np.arange(8, dtype=np.float32)[None]

    def run(model):
        session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
        return session.run(None, {"x": x})[0]

    before = run(proto)
    assert store_fp16(proto) == 1
    types = {t.name: t.data_type for t in proto.graph.initializer}
    assert types == {"exact_fp16": onnx.TensorProto.FLOAT16, "inexact": onnx.TensorProto.FLOAT}
    onnx.checker.check_model(proto, full_check=True)
    np.testing.assert_array_equal(run(proto), before)


def test_the_record_names_each_member_and_carries_a_pretrained_members_label(members, ensemble_run):
    ckpt = load_checkpoint(ensemble_run / "best.pt")
    recorded = ckpt["model_kwargs"]["members"]
    assert [m["name"] for m in recorded] == list(MEMBERS)
    assert [m["tta"] for m in recorded] == ["flip", "none"]
    assert all(len(m["checkpoint_sha256"]) == 64 for m in recorded)
    assert RunArgs.of(ckpt).pretrained == "some-weights-package==1.2"
    assert RunArgs.of(ckpt).command.startswith("python -m training.ensemble ")


def test_packaging_an_ensemble_labels_its_external_data(ensemble_run, data_archive, tmp_path, capsys):
    weights = tmp_path / "weights"
    assert package_main([f"{ensemble_run}:ensemble", "--data", str(data_archive), "--weights", str(weights),
                         "--docs", str(tmp_path / "docs")]) == 0
    entry = json.loads((weights / "MANIFEST.json").read_text())["models"]["ensemble"]
    assert entry["arch"] == "ensemble" and entry["parity"]["passed"]
    assert entry["pretrained"] == "ImageNet-1k pretrained (external data): some-weights-package==1.2"
    assert entry["recipe"]["members"] == list(MEMBERS)
    assert entry["complete"]


def test_bad_members_are_one_line_errors(members, ensemble_run, tmp_path, capsys):
    assert ensemble_main([str(members[0]), "--out", str(tmp_path / "one")]) == 2
    assert "at least two" in capsys.readouterr().err
    assert ensemble_main([str(members[0]), str(tmp_path / "missing.pt"), "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert "missing.pt" in err and len(err.strip().splitlines()) == 1
    assert ensemble_main([str(members[0]), str(ensemble_run / "best.pt"), "--out", str(tmp_path / "y")]) == 2
    assert "ensemble itself" in capsys.readouterr().err
    assert not (tmp_path / "one").exists() and not (tmp_path / "y" / "best.pt").exists()
    (tmp_path / "a-file").write_text("not a folder")
    assert ensemble_main([*map(str, members), "--out", str(tmp_path / "a-file")]) == 2
    err = capsys.readouterr().err
    assert "a-file" in err and len(err.strip().splitlines()) == 1
    with pytest.raises(CheckpointError):
        build_ensemble([members[0]])
