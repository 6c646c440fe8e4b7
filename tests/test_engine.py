"""The training engine's pieces: closed-form LR schedules, Lookahead, BN-shift LR groups, alternating flip."""

import numpy as np
import pytest
import torch
import torch.nn as nn

from training.augment import Augment
from training.data import DeviceLoader
from training.engine import Lookahead, build_optimizer, parameter_groups
from training.recipes import Recipe
from training.schedules import build_schedule, restore_schedule


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
    values = lrs(optimizer, build_schedule(r, optimizer, steps_per_epoch=5), 21)  # 20 steps planned
    assert values[0] == pytest.approx(0.2)
    assert values[5] == pytest.approx(1.0)                       # the peak at 25% of 20 steps
    assert values[2] == pytest.approx(0.2 + 0.8 * 2 / 5)
    assert values[20] == pytest.approx(0.1)                      # the end factor at the last step
    assert np.all(np.diff(values[:6]) > 0) and np.all(np.diff(values[5:]) < 0)


def test_triangle_schedule_resumed_with_more_epochs_follows_the_longer_line():
    short = recipe(schedule="triangle", epochs=4)
    opt_a = build_optimizer(short, nn.Linear(2, 2))
    sched_a = build_schedule(short, opt_a, 5)
    lrs(opt_a, sched_a, 20)
    longer = recipe(schedule="triangle", epochs=6)
    opt_b = build_optimizer(longer, nn.Linear(2, 2))
    opt_b.load_state_dict(opt_a.state_dict())
    sched_b = build_schedule(longer, opt_b, 5)
    assert "rebuilt for 30 steps (was 20)" in restore_schedule(sched_b, sched_a.state_dict())
    opt_ref = build_optimizer(longer, nn.Linear(2, 2))
    reference = lrs(opt_ref, build_schedule(longer, opt_ref, 5), 30)
    assert lrs(opt_b, sched_b, 10) == pytest.approx(reference[20:30])


def torch_reference(kind: str, r: Recipe, optimizer, total: int):
    """torch's own scheduler for what a recipe asks, the closed forms' reference."""
    sched = torch.optim.lr_scheduler
    if kind == "onecycle":
        return sched.OneCycleLR(optimizer, max_lr=r.lr, total_steps=total, pct_start=r.warmup_fraction)
    if kind == "cosine":
        return sched.CosineAnnealingLR(optimizer, T_max=total)
    return sched.MultiStepLR(optimizer, milestones=[m * 5 for m in r.milestones], gamma=r.gamma)


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
@pytest.mark.parametrize("kind", ["onecycle", "cosine", "step"])
def test_closed_form_schedules_match_torch_step_for_step(kind, optimizer):
    r = recipe(schedule=kind, optimizer=optimizer, epochs=7, warmup_fraction=0.3, milestones=(2, 5), gamma=0.2)
    ours_opt, torch_opt = (build_optimizer(r, nn.Linear(2, 2)) for _ in range(2))
    ours, reference = build_schedule(r, ours_opt, 5), torch_reference(kind, r, torch_opt, 35)
    for step in range(36):  # every step of the plan, the last scheduler step included
        for a, b in zip(ours_opt.param_groups, torch_opt.param_groups, strict=True):
            assert a["lr"] == pytest.approx(b["lr"], rel=1e-9, abs=1e-15), step
            if kind == "onecycle":  # one-cycle also cycles the momentum (Adam: beta1)
                key = "betas" if optimizer == "adam" else "momentum"
                assert a[key] == pytest.approx(b[key], rel=1e-12), step
        if step < 35:
            ours_opt.step(), torch_opt.step()
            ours.step(), reference.step()


def test_a_checkpoint_from_a_torch_scheduler_resumes_at_its_step():
    """Runs saved before the closed forms hold torch's scheduler state: the step count is what carries over."""
    r = recipe(schedule="onecycle", epochs=4)
    torch_opt = build_optimizer(r, nn.Linear(2, 2))
    reference = torch_reference("onecycle", r, torch_opt, 20)
    for _ in range(7):
        torch_opt.step(), reference.step()
    ours_opt = build_optimizer(r, nn.Linear(2, 2))
    ours = build_schedule(r, ours_opt, 5)
    ours_opt.load_state_dict(torch_opt.state_dict())
    assert restore_schedule(ours, reference.state_dict()) is None  # same length: nothing rebuilt
    assert ours.step_count == 7
    assert ours_opt.param_groups[0]["lr"] == pytest.approx(torch_opt.param_groups[0]["lr"], rel=1e-12)
    assert ours_opt.param_groups[0]["momentum"] == pytest.approx(torch_opt.param_groups[0]["momentum"])
    longer = recipe(schedule="onecycle", epochs=6)
    rebuilt = build_schedule(longer, build_optimizer(longer, nn.Linear(2, 2)), 5)
    assert "one-cycle schedule rebuilt for 30 steps (was 20)" in restore_schedule(rebuilt, reference.state_dict())


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
