"""A small model registry: ``create_model(name, ...)`` builds any registered architecture."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

_MODELS: dict[str, Callable[..., nn.Module]] = {}
#: Names that specs written by earlier versions carry, and the architecture each now goes by.
FORMER_NAMES = {"source_blind_mobilenet_v2": "source_blind_heads"}


def register_model(fn: Callable[..., nn.Module] | None = None, *, name: str | None = None, task: str = "segmentation"):
    """Register a model factory under ``name`` (default: its function name).

    Usable as ``@register_model`` or ``@register_model(name=..., task=...)``; ``task`` is
    ``"segmentation"`` (dense logits (N, K, H, W)), ``"classification"`` (logits (N, K)),
    ``"gate"`` (feature vectors in, one logit per image out) or ``"discriminator"``
    ((image, mask) pairs in, patch logits (N, 1, h, w) out; used only in training).
    """

    def wrap(f: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        f.task = task  # type: ignore[attr-defined]
        _MODELS[name or f.__name__] = f
        return f

    return wrap(fn) if fn is not None else wrap


def _lookup(name: str) -> Callable[..., nn.Module]:
    name = FORMER_NAMES.get(name, name)
    if name not in _MODELS:
        raise KeyError(f"unknown model {name!r}; known models: {', '.join(list_models())}")
    return _MODELS[name]


def model_task(name: str) -> str:
    """``"segmentation"``, ``"classification"``, ``"gate"`` or ``"discriminator"`` for a registered name."""
    return _lookup(name).task  # type: ignore[attr-defined]


def list_models(task: str | None = None) -> list[str]:
    """Names of the registered architectures (of one ``task`` if given)."""
    return sorted(n for n, f in _MODELS.items() if task is None or f.task == task)  # type: ignore[attr-defined]


def create_model(
    name: str, *, in_chans: int = 1, num_classes: int = 1, pretrained: str | None = None, **kwargs
) -> nn.Module:
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
    return _lookup(name)(in_chans=in_chans, num_classes=num_classes, pretrained=pretrained, **kwargs)
