"""``python -m training.soup``: runs of one network averaged into one checkpoint that exports like a trained one."""

from __future__ import annotations

import pytest
import torch

from training.checkpoint import atomic_save, load_checkpoint, make_checkpoint, model_from_checkpoint
from training.models import create_model
from training.recipes import default_recipe
from training.soup import main as soup_main

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def trained_like(arch: str, seed: int, folder, epochs: int = 3, teacher: str | tuple[str, ...] = "") -> str:
    """A checkpoint of ``arch`` with seeded random weights and BatchNorm statistics, as a run would leave it."""
    torch.manual_seed(seed)
    model = create_model(arch)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-1, 1)
                module.running_var.uniform_(0.5, 2)
                module.num_batches_tracked.fill_(100 + seed)
    recipe = default_recipe(arch).replace(teacher=teacher)
    ckpt = make_checkpoint(model, recipe, (0.5,) * 3, (0.25,) * 3, epoch=epochs, test_accuracy=0.5 + seed / 100,
                           metrics=[{"epoch": e + 1, "epoch_seconds": 10.0} for e in range(epochs)],
                           args={"command": f"python -m training.run --seed {seed}", "recipe_name": arch,
                                 "precision": "bf16"})
    path = folder / f"run{seed}" / "best.pt"
    path.parent.mkdir()
    atomic_save(ckpt, path)
    return str(path)


def test_the_soup_is_the_mean_of_every_weight_and_statistic(tmp_path, capsys):
    runs = [trained_like("whitened_vgg_fast", seed, tmp_path, teacher="weights/whitened_vgg_best.pt")
            for seed in (1, 2, 3)]
    assert soup_main([*runs, "--out", str(tmp_path / "soup")]) == 0
    assert "soup of run1, run2, run3" in capsys.readouterr().out
    soup = load_checkpoint(tmp_path / "soup" / "best.pt")
    states = [load_checkpoint(r)["state_dict"] for r in runs]
    for key, value in soup["state_dict"].items():
        if value.is_floating_point():
            torch.testing.assert_close(value, sum(s[key] for s in states) / 3, rtol=1e-6, atol=1e-7)
        else:
            assert torch.equal(value, states[0][key])  # num_batches_tracked: the first run's
    recipe = soup["recipe"]
    assert recipe["soup_of"] == ["run1", "run2", "run3"] and recipe["teacher"] == "weights/whitened_vgg_best.pt"
    assert [i["test_accuracy"] for i in recipe["ingredients"]] == [0.51, 0.52, 0.53]
    assert soup["train_seconds"] == 90.0 and soup["epoch"] == soup["epochs"] == 0  # no epochs of its own
    assert soup["args"]["recipe_name"] == "soup" and soup["args"]["precision"] == "bf16"
    assert soup["args"]["command"].startswith("python -m training.soup ")
    model = model_from_checkpoint(soup)  # loads into the network, answers
    with torch.no_grad():
        assert model(torch.rand(2, 3, 32, 32)).shape == (2, 10)


def test_a_soup_of_one_run_twice_answers_as_that_run(tmp_path):
    run = trained_like("whitened_vgg_fast", 4, tmp_path)
    assert soup_main([run, run, "--out", str(tmp_path / "soup")]) == 0
    x = torch.rand(4, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model_from_checkpoint(load_checkpoint(tmp_path / "soup" / "best.pt"))(x),
                                   model_from_checkpoint(load_checkpoint(run))(x))


@pytest.mark.parametrize("problem", ["one", "other_network", "other_normalization", "missing"])
def test_what_cannot_be_averaged_is_a_one_line_error(tmp_path, capsys, problem):
    first = trained_like("whitened_vgg_fast", 5, tmp_path)
    if problem == "one":
        others, expected = [], "at least two checkpoints"
    elif problem == "other_network":
        others, expected = [trained_like("tutorial", 6, tmp_path)], "architecture"
    elif problem == "other_normalization":
        ckpt = load_checkpoint(first)
        ckpt["mean"] = [0.4, 0.4, 0.4]
        atomic_save(ckpt, tmp_path / "renormalized.pt")
        others, expected = [str(tmp_path / "renormalized.pt")], "normalization"
    else:
        others, expected = [str(tmp_path / "nowhere.pt")], "not found"
    assert soup_main([first, *others, "--out", str(tmp_path / "soup")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and expected in err and err.count("\n") == 1
    assert not (tmp_path / "soup" / "best.pt").exists()


def test_a_soup_names_every_teacher_its_ingredients_learnt_from(tmp_path):
    runs = [trained_like("whitened_vgg_fast", 1, tmp_path, teacher="weights/whitened_vgg_best.pt"),
            trained_like("whitened_vgg_fast", 2, tmp_path, teacher="weights/whitened_vgg_best.pt"),
            trained_like("whitened_vgg_fast", 3, tmp_path,
                         teacher=("weights/whitened_vgg_best.pt", "weights/efficientnet_lite0.pt"))]
    assert soup_main([*runs, "--out", str(tmp_path / "soup")]) == 0
    teacher = load_checkpoint(tmp_path / "soup" / "best.pt")["recipe"]["teacher"]
    assert teacher == ["weights/whitened_vgg_best.pt", "weights/efficientnet_lite0.pt"]
