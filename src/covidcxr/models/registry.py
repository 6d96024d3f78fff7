"""A small model registry: ``create_model(name, ...)`` builds any registered architecture."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

_MODELS: dict[str, Callable[..., nn.Module]] = {}


def register_model(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    """Register a model factory under its function name."""
    _MODELS[fn.__name__] = fn
    return fn


def list_models() -> list[str]:
    """Names of all registered architectures."""
    return sorted(_MODELS)


def create_model(name: str, *, in_chans: int = 1, num_classes: int = 1, pretrained: str | None = None, **kwargs) -> nn.Module:
    """Build a registered architecture.

    Args:
        name: registered name, e.g. ``"unet_mobilenetv2"``.
        in_chans: input channels (1 for radiographs).
        num_classes: output channels / logits.
        pretrained: ``None`` (random init, works offline) or the name of encoder weights
            the underlying library can fetch (e.g. ``"imagenet"``: needs internet once).
        **kwargs: architecture-specific options.

    Raises:
        KeyError: unknown name; the message lists the known ones.
    """
    if name not in _MODELS:
        raise KeyError(f"unknown model {name!r}; known models: {', '.join(list_models())}")
    return _MODELS[name](in_chans=in_chans, num_classes=num_classes, pretrained=pretrained, **kwargs)
