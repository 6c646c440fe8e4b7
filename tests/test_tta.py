"""Test-time augmentation (``training/tta.py``): the views, the CLIs' ``--tta``, and TTA inside the ONNX graph."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F

from export.graph import export_graph
from export.onnx import export_checkpoint
from export.onnx import main as export_main
from export.onnx_accuracy import main as onnx_accuracy_main
from export.package import main as package_main
from training.checkpoint import atomic_save, load_checkpoint, model_from_checkpoint
from training.evaluate import main as evaluate_main
from training.models import create_model
from training.tta import TTA, TTA_MODES, with_tta

ARCH = "whitened_vgg_fast"
PARITY_IMAGES = 48


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # the other core may be training


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    net = create_model(ARCH).eval()
    net.init_whitening(torch.randn(16, 3, 32, 32))
    return net


def airbench_reference(net, x: torch.Tensor, mode: str) -> torch.Tensor:
    """airbench's ``infer`` levels 1 and 2 written out: mirror average; mirror + reflect-padded 1-pixel crops."""
    def mirror(inputs):
        return 0.5 * net(inputs) + 0.5 * net(inputs.flip(-1))

    if mode == "flip":
        return mirror(x)
    padded = F.pad(x, (1,) * 4, "reflect")
    translated = [mirror(padded[:, :, 0:32, 0:32]), mirror(padded[:, :, 2:34, 2:34])]
    return 0.5 * mirror(x) + 0.5 * torch.stack(translated).mean(0)


@pytest.mark.parametrize("mode", ["flip", "flip_translate"])
def test_tta_equals_airbench_inference(model, mode):
    x = torch.randn(5, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(TTA(model, mode)(x), airbench_reference(model, x, mode), atol=1e-5, rtol=1e-5)


def test_flip_tta_gives_an_image_and_its_mirror_the_same_logits(model, cifar):
    x = torch.from_numpy(cifar.test_images[:6]).permute(0, 3, 1, 2).float().div(255).sub(0.5).div(0.25)
    tta = TTA(model, "flip")
    with torch.no_grad():
        plain, mirrored = model(x), model(x.flip(-1))
        both, both_mirrored = tta(x), tta(x.flip(-1))
    assert (plain - mirrored).abs().max() > 1e-3  # the model alone is not mirror-invariant ...
    torch.testing.assert_close(both, both_mirrored, atol=1e-5, rtol=0)  # ... its flip TTA is


def test_none_is_the_model_itself_and_bad_modes_are_refused(model):
    assert with_tta(model, "none") is model
    assert isinstance(with_tta(model, "flip"), TTA) and not with_tta(model, "flip").training
    assert TTA_MODES == ("none", "flip", "flip_translate")
    with pytest.raises(ValueError, match="TTA mode must be one of none, flip, flip_translate"):
        TTA(model, "rotate")


def test_tta_under_bf16_autocast_and_channels_last(model):
    x = torch.randn(3, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = TTA(model, "flip_translate")(x)
    assert out.shape == (3, 10) and torch.isfinite(out.float()).all()


@pytest.fixture(scope="module")
def tta_export(fresh_checkpoint, data_archive, tmp_path_factory):
    """whitened_vgg_fast exported with ``--tta flip_translate`` through the CLI."""
    out = tmp_path_factory.mktemp("tta") / f"{ARCH}.onnx"
    code = export_main([str(fresh_checkpoint(ARCH)), "--out", str(out), "--data", str(data_archive),
                        "--parity-images", str(PARITY_IMAGES), "--tta", "flip_translate"])
    assert code == 0
    return out


def test_exported_tta_graph_passes_parity_and_says_its_mode(tta_export, fresh_checkpoint):
    report = json.loads(tta_export.with_name(f"{ARCH}.parity.json").read_text())
    assert report["passed"] and report["tta"] == "flip_translate" and report["source"] == "cifar10-test"
    assert report["images"] == PARITY_IMAGES and report["max_abs_diff_probabilities"] <= 1e-5
    assert report["top1_agreement"] == 1.0
    meta = ort.InferenceSession(str(tta_export), providers=["CPUExecutionProvider"]).get_modelmeta()
    assert meta.custom_metadata_map["tta"] == "flip_translate"
    assert json.loads(meta.custom_metadata_map["parity"])["passed"]
    # the model is in the graph once: its weights are not repeated per view
    size = tta_export.stat().st_size
    assert size < 1.2 * 4 * sum(p.numel() for p in create_model(ARCH).parameters())


def test_exported_tta_graph_matches_an_independent_reference_on_real_images(tta_export, fresh_checkpoint, cifar):
    """Preprocessing and airbench's six views computed here, not with the export code or training.tta."""
    images = cifar.test_images[:40]
    ckpt = load_checkpoint(fresh_checkpoint(ARCH))
    net = model_from_checkpoint(ckpt)
    mean, std = np.array(ckpt["mean"], np.float32), np.array(ckpt["std"], np.float32)
    x = torch.from_numpy(np.ascontiguousarray(((images / 255 - mean) / std).astype(np.float32).transpose(0, 3, 1, 2)))
    with torch.no_grad():
        ref = airbench_reference(net, x, "flip_translate")
    session = ort.InferenceSession(str(tta_export), providers=["CPUExecutionProvider"])
    logits, probs = session.run(["logits", "probabilities"], {"image": images})
    np.testing.assert_array_equal(logits.argmax(1), ref.argmax(1).numpy())
    np.testing.assert_allclose(probs, ref.softmax(1).numpy(), atol=1e-5, rtol=0)
    np.testing.assert_allclose(probs, torch.from_numpy(logits).softmax(1).numpy(), atol=1e-6, rtol=0)


OPENCV_SCRIPT = """
import sys, json, numpy as np, cv2
net = cv2.dnn.readNetFromONNX(sys.argv[1])
net.setInput(np.load(sys.argv[2]), "image")
logits, probs = net.forward(["logits", "probabilities"])
print(json.dumps({"top1": logits.argmax(1).tolist(), "probs": probs.tolist()}))
"""


def test_opencv_runs_the_tta_graph(tta_export, cifar, tmp_path):
    pytest.importorskip("cv2")
    images = cifar.test_images[:16]
    np.save(tmp_path / "images.npy", images)
    proc = subprocess.run([sys.executable, "-c", OPENCV_SCRIPT, str(tta_export), str(tmp_path / "images.npy")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-500:]
    result = json.loads(proc.stdout)
    logits, probs = ort.InferenceSession(str(tta_export), providers=["CPUExecutionProvider"]).run(
        ["logits", "probabilities"], {"image": images})
    assert result["top1"] == logits.argmax(1).tolist()
    np.testing.assert_allclose(np.array(result["probs"]), probs, atol=1e-5, rtol=0)


def test_default_export_has_no_tta_and_an_unchanged_graph(fresh_checkpoint, tmp_path):
    ckpt = fresh_checkpoint("tutorial")
    report = export_checkpoint(ckpt, tmp_path / "default.onnx", parity_images=16, log=lambda _: None)
    explicit = export_checkpoint(ckpt, tmp_path / "none.onnx", parity_images=16, tta="none", log=lambda _: None)
    assert "tta" not in report and "tta" not in explicit
    default, none = onnx.load(str(tmp_path / "default.onnx")), onnx.load(str(tmp_path / "none.onnx"))
    assert default.graph == none.graph
    assert "tta" not in {p.key for p in default.metadata_props}
    loaded = load_checkpoint(ckpt)
    plain = export_graph(model_from_checkpoint(loaded), loaded["mean"], loaded["std"])
    assert plain.graph == default.graph  # exactly the graph of the model without any TTA code


def test_recipe_tta_key_is_used_when_no_flag_is_given(fresh_checkpoint, tmp_path):
    ckpt = load_checkpoint(fresh_checkpoint("tutorial"))
    ckpt["recipe"] = {**ckpt["recipe"], "tta": "flip"}
    atomic_save(ckpt, tmp_path / "flip.pt")
    report = export_checkpoint(tmp_path / "flip.pt", tmp_path / "flip.onnx", parity_images=16, log=lambda _: None)
    assert report["passed"] and report["tta"] == "flip"
    assert {p.key: p.value for p in onnx.load(str(tmp_path / "flip.onnx")).metadata_props}["tta"] == "flip"
    overridden = export_checkpoint(tmp_path / "flip.pt", tmp_path / "o.onnx", parity_images=16, tta="none",
                                   log=lambda _: None)
    assert "tta" not in overridden


def test_onnx_accuracy_reports_the_mode(tta_export, cifar, tmp_path, capsys):
    code = onnx_accuracy_main([str(tta_export), "--data", str(cifar.source), "--limit", "32",
                               "--json", str(tmp_path / "e.json")])
    assert code == 0
    assert "(TTA flip_translate, in the graph)" in capsys.readouterr().out
    assert json.loads((tmp_path / "e.json").read_text())["tta"] == "flip_translate"


def test_training_evaluate_reports_tta_accuracy(fresh_checkpoint, cifar, tmp_path, capsys):
    ckpt = fresh_checkpoint(ARCH)
    code = evaluate_main([str(ckpt), "--data", str(cifar.source), "--limit", "40", "--tta", "flip",
                          "--json", str(tmp_path / "r.json")])
    assert code == 0
    assert "TTA flip" in capsys.readouterr().out.splitlines()[0]
    result = json.loads((tmp_path / "r.json").read_text())
    loaded = load_checkpoint(ckpt)
    net = model_from_checkpoint(loaded)
    mean, std = np.array(loaded["mean"], np.float32), np.array(loaded["std"], np.float32)
    images = cifar.test_images[:40]
    x = torch.from_numpy(np.ascontiguousarray(((images / 255 - mean) / std).astype(np.float32).transpose(0, 3, 1, 2)))
    with torch.no_grad():
        predicted = airbench_reference(net, x, "flip").argmax(1).numpy()
    assert result["tta"] == "flip" and result["images"] == 40
    assert result["test_accuracy"] == pytest.approx(float((predicted == cifar.test_labels[:40]).mean()))


@pytest.mark.parametrize("cli", ["export.onnx", "training.evaluate", "export.package"])
def test_bad_tta_value_is_a_one_line_error(cli, fresh_checkpoint, data_archive, tmp_path, capsys):
    ckpt = str(fresh_checkpoint("tutorial"))
    code = {"export.onnx": lambda: export_main([ckpt, "--out", str(tmp_path / "x.onnx"), "--tta", "mirror"]),
            "training.evaluate": lambda: evaluate_main([ckpt, "--data", str(data_archive), "--tta", "mirror"]),
            "export.package": lambda: package_main([ckpt, "--data", str(data_archive), "--weights",
                                                    str(tmp_path / "w"), "--tta", "mirror"])}[cli]()
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("error: --tta must be one of none, flip, flip_translate") and err.count("\n") == 1
    assert "'mirror'" in err and "Traceback" not in err
    assert not (tmp_path / "x.onnx").exists() and not (tmp_path / "w").exists()
