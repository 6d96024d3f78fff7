"""Model registry, architectures and weights specs."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from torch import nn

from . import classifier, gate, severity, source_blind, unet  # noqa: F401  (registers the architectures)
from .registry import create_model, list_models, model_task, register_model
from .weights import WeightSpec, load_weights, save_weights, shipped_spec_path


@contextmanager
def eval_mode(*models: nn.Module) -> Iterator[None]:
    """Put models in eval mode for the block, then restore each one's previous mode."""
    modes = [m.training for m in models]
    try:
        for m in models:
            m.eval()
        yield
    finally:
        for m, mode in zip(models, modes):
            m.train(mode)


__all__ = [
    "create_model",
    "list_models",
    "model_task",
    "register_model",
    "eval_mode",
    "WeightSpec",
    "load_weights",
    "save_weights",
    "shipped_spec_path",
]
