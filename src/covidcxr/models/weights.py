"""Weight files and the spec that travels with each one.

A spec (JSON beside the ``.pt`` file) says what the weights expect: architecture and its
arguments, input size, the normalization name, output names, threshold, storage dtype,
sha256, how they were trained and what they scored. Inference rebuilds preprocessing from
the spec. Weights are plain state_dicts, loaded with ``weights_only=True`` after the
sha256 is checked.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from ..specs import SHIPPED, WEIGHTS_DIR, WeightSpec, sha256_file, shipped_spec_path  # noqa: F401  (re-exported)
from .registry import create_model

log = logging.getLogger(__name__)


def save_weights(model: nn.Module, spec: WeightSpec, directory: str | Path) -> Path:
    """Write ``spec.file`` (state_dict in ``spec.dtype``) and its spec JSON with the sha256.

    Returns:
        Path of the spec JSON.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    dtype = getattr(torch, spec.dtype)
    state = {k: (v.to(dtype) if v.is_floating_point() else v).contiguous() for k, v in model.state_dict().items()}
    weights_path = directory / spec.file
    torch.save(state, weights_path)
    spec.sha256 = sha256_file(weights_path)
    spec_path = weights_path.with_suffix(".json")
    spec.to_json(spec_path)
    return spec_path


def load_weights(spec_path: str | Path | None = None, kind: str = "lungs") -> tuple[nn.Module, WeightSpec]:
    """Build the model a spec describes and load its verified weights (float32, eval mode).

    Args:
        spec_path: a spec JSON; ``None`` for the shipped model of ``kind``.

    Raises:
        FileNotFoundError: spec or weights missing.
        ValueError: the spec names a file outside its own folder, sha256 mismatch (the file is
            not the one the spec describes), or the file is no state dict of the spec's
            architecture (a pickled model, a checkpoint, another format); one sentence.
    """
    spec_path = Path(spec_path) if spec_path is not None else shipped_spec_path(kind)
    if not spec_path.is_file():
        raise FileNotFoundError(f"{spec_path}: weights spec not found")
    spec = WeightSpec.from_json(spec_path)
    weights_path = spec_path.parent / spec.file
    if Path(spec.file).is_absolute() or ".." in Path(spec.file).parts:  # by name: a link beside the spec is fine
        raise ValueError(
            f"{spec_path}: its 'file' {spec.file!r} lies outside the spec's folder; put the weights beside the spec and name them there"
        )
    if not weights_path.is_file():
        raise FileNotFoundError(f"{weights_path}: weights file named by {spec_path.name} not found")
    digest = sha256_file(weights_path)
    if digest != spec.sha256:
        raise ValueError(f"{weights_path}: sha256 {digest} does not match the spec's {spec.sha256}")
    # PyTorch's own message for a file weights_only refuses suggests weights_only=False, which would
    # run whatever code the file holds: say what is wrong instead, and keep its text for -v.
    fix = "export the weights again with covidcxr.models.save_weights (a plain state dict), or pass the spec of a valid export"
    try:
        with warnings.catch_warnings(record=True) as said:  # torch's warnings about a file it then refuses are noise
            warnings.simplefilter("always")
            state = torch.load(weights_path, map_location="cpu", weights_only=True)
    except Exception as err:
        log.info("%s: torch.load failed", weights_path, exc_info=True)
        raise ValueError(
            f"{weights_path}: not a PyTorch state dict that loads safely ({type(err).__name__}); {fix}"
        ) from None
    for w in said:
        warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    if not isinstance(state, Mapping):
        raise ValueError(f"{weights_path}: holds a {type(state).__name__}, not a state dict; {fix}")
    if not all(isinstance(v, torch.Tensor) for v in state.values()):
        keys = ", ".join(map(str, list(state)[:4]))
        raise ValueError(
            f"{weights_path}: holds a dict of more than tensors (a training checkpoint? keys {keys}), not a state dict; {fix}"
        )
    model = create_model(spec.architecture, in_chans=spec.in_chans, num_classes=len(spec.targets), **spec.model_kwargs)
    try:
        fit = model.load_state_dict(
            {k: v.float() if v.is_floating_point() else v for k, v in state.items()}, strict=False
        )
    except RuntimeError as err:  # a tensor of another shape
        log.info("%s: load_state_dict failed", weights_path, exc_info=True)
        detail = next((line.strip() for line in str(err).splitlines()[1:] if line.strip()), str(err))[:200]
        raise ValueError(
            f"{weights_path}: its tensors do not fit a {spec.architecture} as {spec_path.name} describes it ({detail}); {fix}"
        ) from None
    if fit.missing_keys or fit.unexpected_keys:
        example = (fit.missing_keys or fit.unexpected_keys)[0]
        raise ValueError(
            f"{weights_path}: not the state dict of a {spec.architecture} as {spec_path.name} describes it ({len(fit.missing_keys)} tensors "
            f"missing, {len(fit.unexpected_keys)} unknown, e.g. {example}); {fix}"
        )
    model.eval()
    return model, spec
