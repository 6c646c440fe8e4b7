"""Ensemble: trained models in one module, their class probabilities averaged.

Not trained by ``training.run``: ``python -m training.ensemble CKPT CKPT...`` builds one from shipped
checkpoints, and it exports, checks parity and serves like every model (one ONNX file, same contract).

Each member keeps what made it: its architecture and weights, its own input normalization (mean/std)
and its own test-time augmentation. The ensemble itself therefore takes images in [0, 1] (its
checkpoint's mean is 0 and std 1) and normalizes for each member inside.

Why probabilities: each member's vote is then bounded (one overconfident member cannot outvote the
others with extreme logits), and the answer is the mean of what the members would each serve. On the
shipped files it makes no difference: ``whitened_vgg_best`` + ``efficientnet_lite0`` (96 px) give 93.76%
averaging probabilities and 93.77% averaging logits on the 10,000 test images (the better member alone:
92.81%).

The forward pass returns the log of the averaged probabilities as the "logits": their softmax is the
averaged probabilities again, so the exported graph's two outputs keep their meaning.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from training.models import create_model, register_model

# The logits are log-probabilities; an underflow to 0 must not become -inf (parity compares logits).
_LOG_FLOOR = torch.finfo(torch.float32).tiny


class Member(nn.Module):
    """One member: normalization, the network, its test-time augmentation; probabilities out."""

    def __init__(self, arch: str, model_kwargs: dict, mean, std, tta: str = "none"):
        super().__init__()
        from training.tta import with_tta  # training.tta imports this package

        self.model = with_tta(create_model(arch, **model_kwargs), tta)
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model((x - self.mean) / self.std).softmax(dim=1)


@register_model("ensemble", seed="ensemble", trainable=False,
                summary="trained models' probabilities averaged in one graph (python -m training.ensemble)")
class Ensemble(nn.Module):
    def __init__(self, members: tuple[dict, ...] = ()):
        """``members``: per member its ``arch``, ``model_kwargs``, ``mean``, ``std`` and ``tta`` (as its
        checkpoint has them); other keys (its name, provenance) are the builder's record and ignored here."""
        super().__init__()
        if len(members) < 2:
            raise ValueError("an ensemble needs at least two members")
        self.members = nn.ModuleList(
            Member(m["arch"], dict(m.get("model_kwargs") or {}), m["mean"], m["std"], m.get("tta", "none"))
            for m in members)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        probabilities = torch.stack([member(x) for member in self.members]).mean(dim=0)
        return probabilities.clamp_min(_LOG_FLOOR).log()
