import sys

import pytest
import torch

from training.models import UnknownArchitectureError, count_parameters, create_model, list_models, model_info
from training.recipes import RECIPES

DOCUMENTED = {"tutorial", "tutorial_plus", "dwsep", "adaptive", "staged_baseline", "staged_attention",
              "staged_advanced", "backbone6"}
AIRBENCH = {"whitened_vgg_fast", "whitened_vgg_best"}  # from the airbench paper/repository, not a seed document
PRETRAINED = {"efficientnet_lite0"}  # ImageNet-1k pretrained (external data)


def test_registry_holds_every_documented_model_and_a_recipe_for_each():
    assert set(list_models()) == DOCUMENTED | AIRBENCH | PRETRAINED
    assert DOCUMENTED | AIRBENCH | PRETRAINED <= set(RECIPES)


@pytest.mark.parametrize("name", sorted(DOCUMENTED | AIRBENCH | PRETRAINED))
def test_model_builds_gives_ten_logits_and_has_the_parameter_count_its_docstring_states(name):
    torch.manual_seed(0)
    model = create_model(name).eval()
    with torch.no_grad():
        out = model(torch.randn(3, 3, 32, 32))
    assert out.shape == (3, 10)
    assert torch.isfinite(out).all()
    module_doc = sys.modules[type(model).__module__].__doc__
    assert f"{count_parameters(model):,}" in module_doc, "docstring must state the real parameter count"
    assert model_info(name).seed in module_doc  # names its seed document


def test_weights_of_every_model_fit_a_16_mib_file():
    for name in list_models():
        state = create_model(name).state_dict()
        assert sum(t.numel() * 4 for t in state.values() if t.is_floating_point()) < 16 * 2**20, name


def test_dwsep_reproduces_the_seed_layer_list():
    model = create_model("dwsep")
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    # 6 plain convs + 3 x (depthwise + pointwise) + 1 depthwise + 1x1 head = 14 conv layers
    assert len(convs) == 14
    assert [c.out_channels for c in convs[:6]] == [16, 32, 64, 64, 64, 96]
    assert [c.stride[0] for c in convs[:6]] == [1, 2, 1, 1, 1, 2]
    depthwise = [c for c in convs if c.groups > 1]
    assert len(depthwise) == 4 and all(c.groups == c.in_channels for c in depthwise)
    dropouts = [m.p for m in model.modules() if isinstance(m, torch.nn.Dropout)]
    assert dropouts == [0.05] * 8


def test_unknown_model_name_lists_the_known_ones():
    with pytest.raises(UnknownArchitectureError) as err:
        create_model("resnet9000")
    assert "resnet9000" in str(err.value) and "dwsep" in str(err.value)


def test_adaptive_conv_mixing_kernels_equals_mixing_outputs():
    """The fast training form (one grouped conv of per-sample mixed kernels) is the documented function."""
    import torch

    from training.models.adaptive import AdaptiveConv2d

    torch.manual_seed(0)
    layer = AdaptiveConv2d(32)
    x = torch.randn(6, 32, 16, 16)
    torch.testing.assert_close(layer.forward_mixed_kernels(x), layer.forward_mixed_outputs(x), rtol=1e-5, atol=1e-5)
    # the training path (>= 16x16) and the gradients agree too
    x.requires_grad_(True)
    layer(x).square().sum().backward()
    grads = [p.grad.clone() for p in layer.parameters()] + [x.grad.clone()]
    layer.zero_grad()
    x.grad = None
    layer.forward_mixed_outputs(x).square().sum().backward()
    for a, b in zip(grads, [p.grad for p in layer.parameters()] + [x.grad], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def test_adaptive_keeps_its_parameter_count_and_state_dict_keys():
    from training.models import count_parameters, create_model

    model = create_model("adaptive")
    assert count_parameters(model) == 3_860_106
    assert "features.0.adaptive.convs.weight" in model.state_dict()
    assert "features.2.adaptive.gate.2.bias" in model.state_dict()
