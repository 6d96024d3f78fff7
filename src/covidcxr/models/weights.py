"""Weight files and the spec that travels with each one.

A spec (JSON beside the ``.pt`` file) says what the weights expect: architecture and its
arguments, input size, the normalization name, output names, threshold, storage dtype,
sha256, how they were trained and what they scored. Inference rebuilds preprocessing from
the spec. Weights are plain state_dicts, loaded with ``weights_only=True`` after the
sha256 is checked.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from ..specs import SHIPPED, WEIGHTS_DIR, WeightSpec, sha256_file, shipped_spec_path  # noqa: F401  (re-exported)
from .registry import create_model


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
        ValueError: sha256 mismatch (the file is not the one the spec describes).
    """
    spec_path = Path(spec_path) if spec_path is not None else shipped_spec_path(kind)
    if not spec_path.is_file():
        raise FileNotFoundError(f"{spec_path}: weights spec not found")
    spec = WeightSpec.from_json(spec_path)
    weights_path = spec_path.parent / spec.file
    if not weights_path.is_file():
        raise FileNotFoundError(f"{weights_path}: weights file named by {spec_path.name} not found")
    digest = sha256_file(weights_path)
    if digest != spec.sha256:
        raise ValueError(f"{weights_path}: sha256 {digest} does not match the spec's {spec.sha256}")
    state = torch.load(weights_path, map_location="cpu", weights_only=True)
    model = create_model(spec.architecture, in_chans=spec.in_chans, num_classes=len(spec.targets), **spec.model_kwargs)
    model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()})
    model.eval()
    return model, spec
