"""Model registry: every documented model is a plain ``nn.Module`` registered by name.

    >>> from training.models import create_model, list_models
    >>> model = create_model("dwsep")

Each model module's docstring names the seed document it comes from and lists where that
document is ambiguous and what was chosen.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch.nn as nn

from common.contract import NUM_CLASSES  # noqa: F401 - the models' output width is the exported graph's


@dataclass(frozen=True)
class ModelInfo:
    name: str
    seed: str  # the seed document (file name under ../shared/seeds/) the model reproduces
    builder: Callable[..., nn.Module]
    summary: str
    trainable: bool = True  # False: built from trained models (an ensemble), not by training.run


_REGISTRY: dict[str, ModelInfo] = {}


class UnknownArchitectureError(KeyError):
    """A name that is not in the registry."""

    def __str__(self) -> str:  # KeyError quotes its message; a user wants plain text
        return self.args[0]


class PretrainedWeightsError(Exception):
    """Pretrained weights that cannot be had or do not fit the model; the message is for the user as is."""


def register_model(name: str, seed: str, summary: str, trainable: bool = True):
    """Class decorator adding a model to the registry under ``name``."""

    def decorate(cls):
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} registered twice")
        _REGISTRY[name] = ModelInfo(name, seed, cls, summary, trainable)
        return cls

    return decorate


def list_models() -> list[str]:
    """The models ``training.run`` trains (each has a recipe); ``model_info`` also knows the built ones."""
    return sorted(name for name, info in _REGISTRY.items() if info.trainable)


def model_info(name: str) -> ModelInfo:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise UnknownArchitectureError(
            f"unknown model {name!r}; choose one of: {', '.join(list_models())}"
        ) from None


def create_model(name: str, **kwargs) -> nn.Module:
    return model_info(name).builder(**kwargs)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def saved_kwargs(value):
    """Model kwargs as a checkpoint stores them (lists, JSON-like) back into the tuples the constructors take."""
    if isinstance(value, dict):
        return {k: saved_kwargs(v) for k, v in value.items()}
    return tuple(saved_kwargs(v) for v in value) if isinstance(value, (list, tuple)) else value


# Importing the modules registers their models.
from training.models import (  # noqa: E402,F401
    adaptive,
    backbone6,
    dwsep,
    efficientnet_lite,
    ensemble,
    staged,
    tutorial,
    whitened_vgg,
)
