"""The airbench-style models (``training/models/whitened_vgg.py``): size, structure, whitening, precision, state."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from training.checkpoint import make_checkpoint, model_from_checkpoint
from training.data import channel_stats
from training.engine import parameter_groups
from training.models import count_parameters, create_model
from training.models.whitened_vgg import ACTIVATIONS, WhitenedVGG
from training.recipes import RECIPES, default_recipe

NAMES = ("whitened_vgg_fast", "whitened_vgg_best")
# trainable (count_parameters) and all (with the frozen whitening filters and BN scales)
PARAMETERS = {"whitened_vgg_fast": (1_971_352, 1_972_792), "whitened_vgg_best": (3_571_096, 3_573_304)}


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # the other core may be training


def normalized(images_uint8: np.ndarray, mean, std) -> torch.Tensor:
    """(N, 32, 32, 3) uint8 -> normalized float NCHW, computed here (not with the training pipeline)."""
    x = torch.from_numpy(images_uint8).permute(0, 3, 1, 2).float() / 255
    return (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)


def patches_of(x: torch.Tensor) -> torch.Tensor:
    """Every 2x2 patch of ``x`` as a row of 12 values, ordered (channel, row, column) like a conv filter."""
    n, c, h, w = x.shape
    rows = [x[:, :, i:i + 2, j:j + 2].reshape(n, 12) for i in range(h - 1) for j in range(w - 1)]
    return torch.cat(rows).double()


@pytest.fixture(scope="module")
def real(cifar):
    """1,000 real training images normalized with their own statistics: 500 to whiten from, 500 held out."""
    images = cifar.train_images[:1000]
    mean, std = channel_stats(images[:500])
    x = normalized(images, mean, std)
    return x[:500], x[500:]


@pytest.mark.parametrize("name", NAMES)
def test_parameter_counts_are_the_documented_ones_and_fit_16_mib(name):
    model = create_model(name)
    trainable, total = PARAMETERS[name]
    assert count_parameters(model) == trainable
    assert sum(p.numel() for p in model.parameters()) == total
    doc = sys.modules[type(model).__module__].__doc__
    assert f"{trainable:,}" in doc and f"{total:,}" in doc
    state = sum(t.numel() * 4 for t in model.state_dict().values() if t.is_floating_point())
    assert state < 16 * 2**20
    if name == "whitened_vgg_fast":
        assert 1.9e6 < total < 2.1e6  # airbench94 is ~2M parameters


def test_fast_has_airbench94_structure():
    model = create_model("whitened_vgg_fast")
    w = model.whiten
    assert (w.in_channels, w.out_channels, w.kernel_size, w.padding) == (3, 24, (2, 2), (0, 0))
    assert w.bias is not None and not w.weight.requires_grad and w.bias.requires_grad
    convs = [m for m in model.groups.modules() if isinstance(m, nn.Conv2d)]
    assert [(c.in_channels, c.out_channels) for c in convs] == [(24, 64), (64, 64), (64, 256), (256, 256),
                                                                 (256, 256), (256, 256)]
    assert all(c.kernel_size == (3, 3) and c.padding == (1, 1) and c.bias is None for c in convs)
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert len(norms) == 6
    assert all(n.eps == 1e-12 and n.momentum == pytest.approx(0.4) for n in norms)
    assert all(not n.weight.requires_grad and n.bias.requires_grad for n in norms)
    assert model.head.bias is None and model.head.in_features == 256
    assert model.output_scale == pytest.approx(1 / 9)
    # airbench's partial identity init: the first c_in filters of every 3x3 conv pass their input through
    first = convs[0].weight[:24]
    assert torch.equal(first[:, :, 1, 1], torch.eye(24)) and first.abs().sum() == 24


def test_best_has_three_convs_per_group_with_a_residual_branch():
    model = create_model("whitened_vgg_best")
    assert [len(g.convs) + 1 for g in model.groups] == [3, 3, 3]
    assert [g.conv1.out_channels for g in model.groups] == [128, 256, 256]
    assert all(g.residual for g in model.groups)
    group = model.groups[0].eval()
    x = torch.randn(2, 24, 16, 16)
    with torch.no_grad():
        for norm in [group.norm1, *group.norms]:  # non-trivial BN statistics
            norm.running_mean.uniform_(-0.5, 0.5)
            norm.running_var.uniform_(0.5, 2)
        shortcut = group.act(group.norm1(group.pool(group.conv1(x))))
        branch = group.norms[1](group.convs[1](group.act(group.norms[0](group.convs[0](shortcut)))))
        torch.testing.assert_close(group(x), group.act(branch + shortcut))  # airbench96: act(branch + shortcut)
        assert not torch.allclose(group(x), group.act(branch))


def test_kwargs_override_the_registered_defaults():
    model = create_model("whitened_vgg_fast", widths=(32, 64, 128), depth=3, activation="relu", num_classes=7)
    assert isinstance(model, WhitenedVGG)
    assert [g.conv1.out_channels for g in model.groups] == [32, 64, 128] and model.groups[0].residual
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 7)
    assert isinstance(model.groups[0].act, nn.ReLU)
    with pytest.raises(ValueError, match="activation must be one of"):
        create_model("whitened_vgg_fast", activation="swish2")
    with pytest.raises(ValueError, match="three conv groups"):
        create_model("whitened_vgg_fast", widths=(64, 128))


def test_whitening_layer_whitens_real_cifar_patches(real):
    fit, held_out = real
    model = create_model("whitened_vgg_fast")
    model.init_whitening(fit)
    weight = model.whiten.weight.detach().double()
    filters = weight.reshape(24, 12)
    assert torch.equal(weight[12:], -weight[:12])  # the eigenvectors and their negatives

    # The reference: eigen-decomposition of the patches' second moment, computed here by numpy.
    p = patches_of(fit)
    moment = (p.T @ p / len(p)).numpy()
    eigenvalues = np.linalg.eigvalsh(moment)[::-1]
    expected = eigenvalues / (eigenvalues + model.whitening_eps)  # what eps leaves of the unit variance

    out = p @ filters[:12].T                                      # the conv's outputs (no bias) on every patch
    cov = (out.T @ out / len(out)).numpy()
    np.testing.assert_allclose(np.diag(cov), expected, rtol=1e-6, atol=1e-9)
    assert np.abs(cov - np.diag(np.diag(cov))).max() < 1e-5        # decorrelated (float32 filters)
    assert (np.diag(cov)[:6] > 0.99).all()                      # the strong directions have unit variance

    # The conv layer itself computes those outputs.
    with torch.no_grad():
        conv_out = F.conv2d(fit[:4], model.whiten.weight)           # (4, 24, 31, 31)
    manual = (patches_of(fit[:4]) @ filters.T).float()
    by_conv = conv_out.permute(2, 3, 0, 1).reshape(-1, 24)        # same (row, column, image) order as patches_of
    torch.testing.assert_close(by_conv, manual, atol=1e-4, rtol=1e-4)

    # Images it was not fitted on: still nearly white in the directions that carry the signal.
    q = patches_of(held_out) @ filters[:12].T
    held = (q.T @ q / len(q)).numpy()
    corr = held / np.sqrt(np.outer(np.diag(held), np.diag(held)))
    assert np.abs(corr - np.eye(12)).max() < 0.2
    assert np.allclose(np.diag(held)[:6], 1, atol=0.25)


def test_init_whitening_freezes_and_is_deterministic(real):
    fit, _ = real
    model = create_model("whitened_vgg_fast")
    model.whiten.weight.requires_grad_(True)  # even if someone unfroze it
    model.init_whitening(fit[:100])
    assert not model.whiten.weight.requires_grad
    assert model.whiten.weight not in {p for p in model.parameters() if p.requires_grad}
    again = create_model("whitened_vgg_fast")
    again.init_whitening(fit[:100].contiguous(memory_format=torch.channels_last))
    assert torch.equal(model.whiten.weight, again.whiten.weight)
    model.init_whitening(fit[:100])
    assert torch.equal(model.whiten.weight, again.whiten.weight)
    with pytest.raises(ValueError, match=r"\(N, 3, H, W\)"):
        model.init_whitening(fit[0])


def test_whitening_bias_is_the_trainable_bias_the_trainer_toggles():
    model = create_model("whitened_vgg_fast")
    bias = model.whitening_bias
    assert isinstance(bias, nn.Parameter) and bias is model.whiten.bias and bias.shape == (24,)
    assert bias.requires_grad and not bias.any()
    # the optimizer's groups (airbench's: BatchNorm shifts at 64x the LR) hold the bias from the start
    others, norm_shifts = parameter_groups(RECIPES["whitened_vgg_fast"], model)
    flat = others["params"] + norm_shifts["params"]
    assert len({id(p) for p in flat}) == len(flat) and any(p is bias for p in others["params"])
    assert {id(p) for p in flat} == {id(p) for p in model.parameters() if p.requires_grad}
    assert sum(p.numel() for p in norm_shifts["params"]) == 2 * (64 + 256 + 256)

    x, y = torch.randn(4, 3, 32, 32), torch.randint(0, 10, (4,))
    F.cross_entropy(model(x), y).backward()
    assert bias.grad is not None and model.whiten.weight.grad is None
    bias.grad = None
    bias.requires_grad_(False)  # what the trainer does after the first epochs
    F.cross_entropy(model(x), y).backward()
    assert bias.grad is None


@pytest.mark.parametrize("name", NAMES)
def test_forward_in_fp32_and_under_bf16_autocast_with_channels_last(name, real):
    fit, held_out = real
    model = create_model(name)
    model.init_whitening(fit[:64])
    x = held_out[:8].contiguous()
    model.train()
    out = model(x)
    assert out.shape == (8, 10) and out.dtype == torch.float32 and torch.isfinite(out).all()
    out.float().sum().backward()
    model.zero_grad(set_to_none=True)

    model = model.to(memory_format=torch.channels_last)
    xc = x.contiguous(memory_format=torch.channels_last)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out16 = model(xc)
    assert out16.shape == (8, 10) and out16.dtype == torch.bfloat16 and torch.isfinite(out16.float()).all()
    F.cross_entropy(out16.float(), torch.arange(8) % 10, label_smoothing=0.2).backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)

    model.eval()
    with torch.no_grad():
        ref = model(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = model(xc).float()
    assert (low - ref).abs().max() < 0.1 * ref.abs().max() + 1e-3  # bf16 is close to fp32


@pytest.mark.parametrize("activation", sorted(ACTIVATIONS))
def test_every_activation_builds_and_runs(activation):
    model = create_model("whitened_vgg_fast", activation=activation).eval()
    with torch.no_grad():
        assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)


@pytest.mark.parametrize("name", NAMES)
def test_state_dict_round_trip(name, real, tmp_path):
    fit, held_out = real
    torch.manual_seed(1)
    model = create_model(name)
    model.init_whitening(fit[:64])
    with torch.no_grad():
        model.whitening_bias.uniform_(-0.1, 0.1)
        model(fit[:64])  # train mode: moves the BN running statistics away from their init
    model.eval()
    torch.save(model.state_dict(), tmp_path / "state.pt")

    restored = create_model(name)
    restored.load_state_dict(torch.load(tmp_path / "state.pt", weights_only=True))
    restored.eval()
    assert not restored.whiten.weight.requires_grad  # frozen by construction, not by the state dict
    with torch.no_grad():
        assert torch.equal(restored(held_out[:8]), model(held_out[:8]))

    # and through a project checkpoint (what training writes and export reads)
    recipe = default_recipe(name)
    ckpt = make_checkpoint(model, recipe, (0.49, 0.48, 0.45), (0.25, 0.24, 0.26))
    with torch.no_grad():
        assert torch.equal(model_from_checkpoint(ckpt)(held_out[:8]), model(held_out[:8]))


@pytest.mark.parametrize("name", NAMES)
def test_the_serving_copy_gives_the_same_logits_from_raw_pixels(name, cifar):
    """``folded_for_inference`` (what export puts in the ONNX graph): normalization in the whitening conv, each
    group's BatchNorm before its pool, the output scale in the head; a group whose BN scale is not positive
    keeps its order, where moving it would change the answer."""
    pixels = cifar.train_images[:200]
    mean, std = channel_stats(pixels)
    torch.manual_seed(2)
    model = create_model(name)
    model.init_whitening(normalized(pixels[:100], mean, std))
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.uniform_(-1, 1)
                module.running_var.uniform_(0.2, 3)
                module.bias.uniform_(-0.5, 0.5)
        model.groups[2].norm1.weight[::2] = -1.0  # a shift-and-flip: max and min trade places under it
    model.eval()
    raw = torch.from_numpy(pixels[100:]).permute(0, 3, 1, 2).float()
    folded = model.folded_for_inference(mean, std)
    assert [g.norm_before_pool for g in folded.groups] == [True, True, False]
    assert not any(g.norm_before_pool for g in model.groups) and model.output_scale != 1  # the original is intact
    with torch.no_grad():
        expected = model(normalized(pixels[100:], mean, std))
        got = folded(raw)
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
        folded.groups[2].norm_before_pool = True  # the order matters for that group
        assert (folded(raw) - expected).abs().max() > 100 * (got - expected).abs().max()
