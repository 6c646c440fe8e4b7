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
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from training.checkpoint import load_checkpoint, model_from_checkpoint
from training.tta import with_tta


class Distillation(nn.Module):
    def __init__(self, teacher_checkpoint: str | Path, student_mean, student_std, temperature: float,
                 alpha: float, device: torch.device, amp: bool = False, tta: str = "none"):
        super().__init__()
        ckpt = load_checkpoint(teacher_checkpoint)
        self.teacher = with_tta(model_from_checkpoint(ckpt), tta).to(device).eval().requires_grad_(False)
        self.temperature, self.alpha, self.amp = temperature, alpha, amp

        def column(values):
            return torch.tensor(values, dtype=torch.float32, device=device).view(1, 3, 1, 1)

        # teacher input = (student input * s_std + s_mean - t_mean) / t_std, as one scale and shift
        self.register_buffer("scale", column(student_std) / column(ckpt["std"]))
        self.register_buffer("shift", (column(student_mean) - column(ckpt["mean"])) / column(ckpt["std"]))

    @torch.no_grad()
    def teacher_logits(self, student_input: torch.Tensor) -> torch.Tensor:
        x = student_input.float() * self.scale + self.shift
        if student_input.is_contiguous(memory_format=torch.channels_last):
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=self.amp):
            return self.teacher(x).float()

    def loss(self, teacher_view: torch.Tensor, student_logits: torch.Tensor, labels: torch.Tensor,
             hard_loss: torch.Tensor) -> torch.Tensor:
        t = self.temperature
        soft = F.kl_div(F.log_softmax(student_logits / t, dim=1), F.log_softmax(self.teacher_logits(teacher_view) / t,
                        dim=1), reduction="batchmean", log_target=True) * (t * t)
        return (1 - self.alpha) * hard_loss + self.alpha * soft
