"""The training engine's airbench-style pieces: triangle LR, Lookahead, BN-shift LR groups, alternating flip."""

import numpy as np
import pytest
import torch
import torch.nn as nn

from training.augment import Augment
from training.data import DeviceLoader
from training.engine import Lookahead, build_optimizer, build_scheduler, parameter_groups, restore_scheduler
from training.recipes import Recipe


def recipe(**changes) -> Recipe:
    base = dict(model="tutorial", epochs=4, batch_size=8, optimizer="sgd", lr=1.0, momentum=0.85, nesterov=True)
    return Recipe(**{**base, **changes})


def lrs(optimizer, scheduler, steps):
    out = []
    for _ in range(steps):
        out.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return out


def test_triangle_schedule_rises_linearly_to_the_peak_then_falls_to_the_end_factor():
    r = recipe(schedule="triangle", warmup_fraction=0.25, lr_start_factor=0.2, lr_end_factor=0.1)
    optimizer = build_optimizer(r, nn.Linear(2, 2))
    values = lrs(optimizer, build_scheduler(r, optimizer, steps_per_epoch=5), 21)  # 20 steps planned
    assert values[0] == pytest.approx(0.2)
    assert values[5] == pytest.approx(1.0)                       # the peak at 25% of 20 steps
    assert values[2] == pytest.approx(0.2 + 0.8 * 2 / 5)
    assert values[20] == pytest.approx(0.1)                      # the end factor at the last step
    assert np.all(np.diff(values[:6]) > 0) and np.all(np.diff(values[5:]) < 0)


def test_triangle_schedule_resumed_with_more_epochs_follows_the_longer_line():
    short = recipe(schedule="triangle", epochs=4)
    opt_a = build_optimizer(short, nn.Linear(2, 2))
    sched_a = build_scheduler(short, opt_a, 5)
    lrs(opt_a, sched_a, 20)
    longer = recipe(schedule="triangle", epochs=6)
    opt_b = build_optimizer(longer, nn.Linear(2, 2))
    opt_b.load_state_dict(opt_a.state_dict())
    sched_b = build_scheduler(longer, opt_b, 5)
    assert "rebuilt for 30 steps (was 20)" in restore_scheduler(sched_b, sched_a.state_dict(), longer, opt_b)
    opt_ref = build_optimizer(longer, nn.Linear(2, 2))
    reference = lrs(opt_ref, build_scheduler(longer, opt_ref, 5), 30)
    assert lrs(opt_b, sched_b, 10) == pytest.approx(reference[20:30])


def test_batchnorm_shifts_get_the_scaled_lr_and_the_same_absolute_decay():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.LazyLinear(2))
    model[1].weight.requires_grad_(False)  # a frozen BN scale is left out
    r = recipe(norm_bias_lr_scale=64.0, weight_decay=0.01)
    groups = parameter_groups(r, model)
    assert [len(g["params"]) for g in groups] == [4, 1] and groups[1]["params"][0] is model[1].bias
    optimizer = build_optimizer(r, model)
    shift = optimizer.param_groups[1]
    assert shift["lr"] == pytest.approx(64.0) and shift["lr"] * shift["weight_decay"] == pytest.approx(0.01)
    assert len(parameter_groups(recipe(), model)) == 1


def test_lookahead_pulls_weights_to_their_average_and_finishes_on_it():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 3), nn.BatchNorm1d(3))
    la = Lookahead(model, recipe(lookahead_every=2, lookahead_decay=0.5), total_steps=4)
    start = {k: v.clone() for k, v in model.state_dict().items() if v.is_floating_point()}
    with torch.no_grad():
        model[0].weight.add_(1.0)
    la.after_step(1)                                    # not a multiple of 2: nothing happens
    assert torch.equal(model[0].weight, start["0.weight"] + 1)
    la.after_step(2)                                    # decay 0.5 * (2/4)^3 = 1/16
    expected = start["0.weight"] + 1 - 1 / 16
    torch.testing.assert_close(model[0].weight.detach(), expected)
    with torch.no_grad():
        model[0].weight.add_(5.0)
    la.finish()                                         # the weights become the average
    torch.testing.assert_close(model[0].weight.detach(), expected)
    state = la.state_dict()
    other = Lookahead(model, recipe(lookahead_every=2), total_steps=4)
    other.load_state_dict(state)
    torch.testing.assert_close(other.average["0.weight"], expected)


def test_alternating_flip_shows_every_image_both_ways_every_two_epochs():
    images = np.zeros((64, 32, 32, 3), np.uint8)
    images[:, :, :16] = 255                              # left half white: a flip is visible
    loader = DeviceLoader(images, np.zeros(64, np.int64), 64, torch.device("cpu"), (0.0,) * 3, (1.0,) * 3,
                          Augment(flip=True, alternating_flip=True), shuffle=False, seed=3)
    flipped = []
    for epoch in range(4):
        loader.set_epoch(epoch)
        x, _ = next(iter(loader))
        flipped.append((x[:, 0, 0, 0] == 0).numpy())   # flipped: the left edge is now black
    assert 16 < flipped[0].sum() < 48                    # about half in the first epoch
    np.testing.assert_array_equal(flipped[1], ~flipped[0])
    np.testing.assert_array_equal(flipped[2], flipped[0])
    np.testing.assert_array_equal(flipped[3], flipped[1])


def test_alternating_flip_needs_flip():
    with pytest.raises(ValueError, match="alternating_flip needs flip"):
        Augment(alternating_flip=True)
