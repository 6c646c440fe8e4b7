"""Knowledge distillation: a trained teacher's softened answers as a second training target.

A recipe with ``teacher`` (a checkpoint path) trains its model on

    (1 - distill_alpha) * cross_entropy(student, labels) + distill_alpha * T^2 * KL(teacher_T || student_T)

where ``_T`` is a softmax at temperature ``T = distill_temperature`` (Hinton et al., 2015; the T^2 keeps
the soft term's gradients on the scale of the hard one). The teacher sees the augmented view the student
sees: the student's normalized batch is turned back into [0, 1] pixels and normalized the teacher's way, so
any trained model of this project can teach any other. With the recipe's ``teacher_sees_damage`` off, it sees
that view before the upload-path damage (resize round trip, JPEG re-save; training/augment.py), so a teacher
never trained on damaged uploads still says what the image shows (``DeviceLoader``'s undamaged twin).
The teacher runs in eval mode, without gradients, with the test-time augmentation the recipe's ``teacher_tta``
names (default none: one forward pass per batch; ``flip`` averages the view and its mirror, a better teacher at
twice its cost), in the student's precision: with bf16 autocast it costs a third of fp32 on a CPU with BF16 units
(whitened_vgg_best, batch 1024, 2 threads: 1,532 against 476 images/s), and its logits are only a soft target.

``teacher`` may name several checkpoints (a tuple in a recipe; ``--teacher A B``): each sees the view in its own
normalization, and the soft target is the mean of their class probabilities, an ensemble's answer without
building an ensemble checkpoint. A teacher's cost adds up: EfficientNet-Lite0 at 128 px answers 257 images/s
in bf16 on 2 threads, whitened_vgg_best 1,621 (batch 512, AMX Xeon).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from training.checkpoint import RunArgs, load_checkpoint, model_from_checkpoint
from training.tta import with_tta


class TeacherMember(nn.Module):
    """One teacher: its network with its test-time augmentation, fed the student's input in its own normalization."""

    def __init__(self, checkpoint_path: str | Path, student_mean, student_std, device: torch.device, tta: str):
        super().__init__()
        ckpt = load_checkpoint(checkpoint_path)
        # External data this teacher's weights hold ("package==version"; "" trained from scratch): a student
        # taught by it learns from that data too, and says so (training/run.py).
        self.pretrained = RunArgs.of(ckpt).pretrained
        self.path = str(checkpoint_path)
        self.model = with_tta(model_from_checkpoint(ckpt), tta).to(device).eval().requires_grad_(False)

        def column(values):
            return torch.tensor(values, dtype=torch.float32, device=device).view(1, 3, 1, 1)

        # teacher input = (student input * s_std + s_mean - t_mean) / t_std, as one scale and shift
        self.register_buffer("scale", column(student_std) / column(ckpt["std"]))
        self.register_buffer("shift", (column(student_mean) - column(ckpt["mean"])) / column(ckpt["std"]))

    def forward(self, student_input: torch.Tensor) -> torch.Tensor:
        x = student_input.float() * self.scale + self.shift
        if student_input.is_contiguous(memory_format=torch.channels_last):
            x = x.contiguous(memory_format=torch.channels_last)
        return self.model(x)


class Distillation(nn.Module):
    def __init__(self, teacher_checkpoints: str | Path | Sequence[str | Path], student_mean, student_std,
                 temperature: float, alpha: float, device: torch.device, amp: bool = False, tta: str = "none"):
        super().__init__()
        paths = [teacher_checkpoints] if isinstance(teacher_checkpoints, str | Path) else list(teacher_checkpoints)
        if not paths:
            raise ValueError("distillation needs at least one teacher checkpoint")
        self.teachers = nn.ModuleList(TeacherMember(p, student_mean, student_std, device, tta) for p in paths)
        self.temperature, self.alpha, self.amp = temperature, alpha, amp

    @property
    def external_data(self) -> str:
        """The pretrained weights the teachers learnt from, as the student's record states them; "" for none."""
        return "; ".join(f"{t.pretrained} (through the teacher {t.path})" for t in self.teachers if t.pretrained)

    @torch.no_grad()
    def teacher_logits(self, student_input: torch.Tensor) -> torch.Tensor:
        """One teacher: its logits. Several: the log of their mean class probabilities (how the shipped
        ensemble combines its members, training/models/ensemble.py), so no member outvotes the others
        with larger logits; a softmax of these "logits" at any temperature is then well defined."""
        with torch.autocast(student_input.device.type, dtype=torch.bfloat16, enabled=self.amp):
            logits = [teacher(student_input).float() for teacher in self.teachers]
        if len(logits) == 1:
            return logits[0]
        return torch.stack([z.log_softmax(dim=1) for z in logits]).logsumexp(dim=0) - math.log(len(logits))

    def loss(self, teacher_view: torch.Tensor, student_logits: torch.Tensor, labels: torch.Tensor,
             hard_loss: torch.Tensor) -> torch.Tensor:
        t = self.temperature
        soft = F.kl_div(F.log_softmax(student_logits / t, dim=1), F.log_softmax(self.teacher_logits(teacher_view) / t,
                        dim=1), reduction="batchmean", log_target=True) * (t * t)
        return (1 - self.alpha) * hard_loss + self.alpha * soft
