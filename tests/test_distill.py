"""Distillation as a recipe field: the teacher answers the very views the student trains on."""

from __future__ import annotations

import dataclasses

import pytest
import torch

import training.distill as distill_module
from training.data import DeviceLoader
from training.distill import Distillation
from training.recipes import HALF, RECIPES
from training.run import main as run_main


def test_teacher_sees_the_students_pixels_in_its_own_normalization(fresh_checkpoint):
    teacher_ckpt = fresh_checkpoint("tutorial")  # trained with HALF: (x - 0.5) / 0.5
    student_mean, student_std = (0.49, 0.48, 0.45), (0.25, 0.24, 0.26)
    distill = Distillation(teacher_ckpt, student_mean, student_std, temperature=4.0, alpha=0.8,
                           device=torch.device("cpu"))
    seen = []
    distill.teachers[0].model.register_forward_pre_hook(lambda _module, args: seen.append(args[0]))
    pixels = torch.rand(5, 3, 32, 32)
    mean, std = torch.tensor(student_mean).view(1, 3, 1, 1), torch.tensor(student_std).view(1, 3, 1, 1)
    distill.teacher_logits((pixels - mean) / std)
    torch.testing.assert_close(seen[0], (pixels - HALF[0][0]) / HALF[1][0], rtol=1e-5, atol=1e-5)


def test_soft_targets_pull_the_loss_towards_the_teacher(fresh_checkpoint):
    distill = Distillation(fresh_checkpoint("tutorial"), *HALF, temperature=2.0, alpha=1.0, device=torch.device("cpu"))
    x = torch.rand(4, 3, 32, 32) * 2 - 1
    labels = torch.zeros(4, dtype=torch.long)
    agreeing = distill.loss(x, distill.teacher_logits(x), labels, torch.tensor(0.0))
    disagreeing = distill.loss(x, -distill.teacher_logits(x) * 5, labels, torch.tensor(0.0))
    assert agreeing.item() < 1e-5 < disagreeing.item()


def test_a_tiny_run_calls_the_teacher_on_every_augmented_view(fresh_checkpoint, data_archive, tmp_path, monkeypatch):
    teacher_inputs, student_inputs = [], []
    original = Distillation.teacher_logits

    def recording(self, student_input):
        teacher_inputs.append(student_input)
        return original(self, student_input)

    monkeypatch.setattr(distill_module.Distillation, "teacher_logits", recording)

    def student_hook(module, args):
        if module.training and type(module).__name__ == "TutorialNet":
            student_inputs.append(args[0])

    handle = torch.nn.modules.module.register_module_forward_pre_hook(student_hook)
    try:
        code = run_main(["--model", "tutorial", "--teacher", str(fresh_checkpoint("tutorial")), "--data",
                         str(data_archive), "--limit", "96", "--eval-limit", "50", "--val-size", "0", "--epochs", "1",
                         "--batch-size", "32", "--out", str(tmp_path / "run"), "--no-progress", "--threads", "1"])
    finally:
        handle.remove()
    assert code == 0
    assert len(teacher_inputs) == len(student_inputs) == 3  # 96 images in batches of 32
    assert all(t is s for t, s in zip(teacher_inputs, student_inputs, strict=True))  # the same augmented views
    assert (tmp_path / "run" / "last.pt").exists()


def test_a_teacher_kept_from_the_damage_is_shown_the_undamaged_twins(fresh_checkpoint, data_archive, tmp_path,
                                                                     monkeypatch):
    """Recipe whitened_vgg_fast_clean_teacher (teacher_sees_damage off): the teacher answers each batch's
    undamaged twin, not the re-saved, resized copy the student trains on."""
    teacher_inputs, batches = [], []
    original_logits, original_iter = Distillation.teacher_logits, DeviceLoader.__iter__

    def recording_logits(self, view):
        teacher_inputs.append(view)
        return original_logits(self, view)

    def recording_iter(self):
        for batch in original_iter(self):
            batches.append(batch)
            yield batch

    monkeypatch.setattr(distill_module.Distillation, "teacher_logits", recording_logits)
    monkeypatch.setattr(DeviceLoader, "__iter__", recording_iter)
    code = run_main(["--recipe", "whitened_vgg_fast_clean_teacher", "--teacher", str(fresh_checkpoint("tutorial")),
                     "--data", str(data_archive), "--limit", "96", "--eval-limit", "50", "--val-size", "0",
                     "--epochs", "1", "--batch-size", "32", "--out", str(tmp_path / "run"), "--no-progress",
                     "--threads", "1", "--precision", "fp32"])
    assert code == 0
    training_batches = [b for b in batches if len(b) == 3]  # evaluation batches come as (images, labels)
    assert len(teacher_inputs) == len(training_batches) == 3
    for view, (damaged, _labels, undamaged) in zip(teacher_inputs, training_batches, strict=True):
        assert view is undamaged and not torch.equal(damaged, undamaged)


def test_a_missing_teacher_is_a_one_line_error(data_archive, tmp_path, capsys):
    code = run_main(["--model", "tutorial", "--teacher", str(tmp_path / "nope.pt"), "--data", str(data_archive),
                     "--limit", "32", "--val-size", "0", "--epochs", "1", "--out", str(tmp_path / "run"),
                     "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "nope.pt" in err[0]


@pytest.mark.parametrize("amp", [False, True])
def test_the_teacher_runs_in_the_students_precision(fresh_checkpoint, amp):
    """bf16 students get a bf16 teacher (a third of the fp32 cost on CPUs with bf16 units); the soft targets
    come back as fp32 either way."""
    distill = Distillation(fresh_checkpoint("tutorial"), *HALF, temperature=4.0, alpha=0.8,
                           device=torch.device("cpu"), amp=amp)
    states = []
    distill.teachers[0].model.register_forward_pre_hook(lambda _m, _a: states.append(torch.is_autocast_enabled("cpu")))
    logits = distill.teacher_logits(torch.rand(2, 3, 32, 32))
    assert states == [amp] and logits.dtype == torch.float32


def test_a_flip_tta_teacher_answers_with_the_average_of_the_view_and_its_mirror(fresh_checkpoint):
    one_pass = Distillation(fresh_checkpoint("tutorial"), *HALF, temperature=4.0, alpha=0.8,
                            device=torch.device("cpu"))
    flip = Distillation(fresh_checkpoint("tutorial"), *HALF, temperature=4.0, alpha=0.8,
                        device=torch.device("cpu"), tta="flip")
    x = torch.rand(3, 3, 32, 32) * 2 - 1
    expected = (one_pass.teacher_logits(x) + one_pass.teacher_logits(x.flip(-1))) / 2
    torch.testing.assert_close(flip.teacher_logits(x), expected, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(flip.teacher_logits(x), one_pass.teacher_logits(x), atol=1e-4)
    with pytest.raises(ValueError, match="teacher_tta"):
        dataclasses.replace(RECIPES["whitened_vgg_fast_robust"], teacher_tta="rotate")


def test_several_teachers_answer_with_the_mean_of_their_probabilities(fresh_checkpoint):
    """``teacher`` naming two checkpoints (each its own normalization) teaches their ensemble's answer."""
    first, second = fresh_checkpoint("tutorial"), fresh_checkpoint("dwsep")
    student = ((0.49, 0.48, 0.45), (0.25, 0.24, 0.26))
    both = Distillation([first, second], *student, temperature=4.0, alpha=0.8, device=torch.device("cpu"))
    alone = [Distillation(p, *student, temperature=4.0, alpha=0.8, device=torch.device("cpu")) for p in (first, second)]
    x = torch.randn(6, 3, 32, 32)
    expected = torch.stack([d.teacher_logits(x).softmax(dim=1) for d in alone]).mean(dim=0)
    torch.testing.assert_close(both.teacher_logits(x).softmax(dim=1), expected, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(expected, alone[0].teacher_logits(x).softmax(dim=1), atol=1e-3)


def test_a_recipe_names_several_teachers_as_a_tuple_and_one_as_a_path():
    recipe = RECIPES["whitened_vgg_fast_ensemble_teacher"]
    assert recipe.teacher == ("weights/whitened_vgg_best.pt", "weights/efficientnet_lite0.pt")
    assert recipe.replace(teacher=["a.pt", "b.pt"]).teacher == ("a.pt", "b.pt")  # a list from JSON or argparse
    assert recipe.replace(teacher=["a.pt"]).teacher == "a.pt"
    assert recipe.replace(teacher="a.pt").teachers == ("a.pt",) and recipe.replace(teacher="").teachers == ()


def test_a_student_of_a_pretrained_teacher_records_the_external_data(fresh_checkpoint, data_archive, tmp_path):
    """What a teacher learnt from ImageNet reaches the student through its soft targets: the run says so, and
    packaging labels it "ImageNet-1k pretrained (external data)" like the teacher."""
    from training.checkpoint import atomic_save, load_checkpoint, make_checkpoint
    from training.models import create_model
    from training.recipes import default_recipe

    pretrained_teacher = tmp_path / "pretrained_teacher.pt"
    atomic_save(make_checkpoint(create_model("tutorial").eval(), default_recipe("tutorial"), *HALF,
                                args={"pretrained": "some-imagenet-weights==1.0"}), pretrained_teacher)
    code = run_main(["--model", "tutorial", "--teacher", str(fresh_checkpoint("tutorial")), str(pretrained_teacher),
                     "--data", str(data_archive), "--limit", "64", "--eval-limit", "32", "--val-size", "0",
                     "--epochs", "1", "--batch-size", "32", "--out", str(tmp_path / "run"), "--no-progress",
                     "--threads", "1"])
    assert code == 0
    student = load_checkpoint(tmp_path / "run" / "last.pt")
    assert student["args"]["pretrained"] == f"some-imagenet-weights==1.0 (through the teacher {pretrained_teacher})"
    assert len(student["recipe"]["teacher"]) == 2
