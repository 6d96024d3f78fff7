"""Weight files and the spec that travels with each one.

A spec (JSON beside the ``.pt`` file) says what the weights expect: architecture and its
arguments, input size, the normalization name, output names, threshold, storage dtype,
sha256, how they were trained and what they scored. Inference rebuilds preprocessing from
the spec. Weights are plain state_dicts, loaded with ``weights_only=True`` after the
sha256 is checked.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from .registry import create_model

WEIGHTS_DIR = Path(__file__).resolve().parents[1] / "weights"
SHIPPED = {"lungs": "unet_mobilenetv2_lungs", "diagnosis": "mobilenet_v2_diagnosis", "gate": "frontal_cxr_gate"}


@dataclass
class WeightSpec:
    """What a weight file is and expects."""

    name: str
    architecture: str
    task: str
    targets: list[str]
    input_size: tuple[int, int]
    normalization: str
    file: str
    sha256: str = ""
    in_chans: int = 1
    model_kwargs: dict = field(default_factory=dict)
    resize: str = "stretch"  # stretch: whole image to input_size; lung-box: the lung box (+ margin) to input_size
    threshold: float = 0.5
    dtype: str = "float16"  # storage dtype; weights are cast to float32 at load
    lung_input: str = ""  # diagnosis: crop | masked (see covidcxr.data.classification)
    margin: float = 0.0  # diagnosis: lung box grown by this fraction per side
    temperature: float = 1.0  # diagnosis: calibrated probabilities are softmax(logits / temperature)
    lung_weights: str = ""  # diagnosis: sha256 of the lung model whose masks it was trained on
    training: dict = field(default_factory=dict)
    metrics: dict = field(default_factory=dict)

    @classmethod
    def from_json(cls, path: str | Path) -> WeightSpec:
        data = json.loads(Path(path).read_text())
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"{path}: unknown spec fields {sorted(unknown)}")
        data["input_size"] = tuple(data["input_size"])
        return cls(**data)

    def to_json(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(dataclasses.asdict(self), indent=2) + "\n")


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def shipped_spec_path(kind: str = "lungs") -> Path:
    """Spec file of a shipped model (``kind``: one of ``SHIPPED``)."""
    if kind not in SHIPPED:
        raise KeyError(f"no shipped model {kind!r}; shipped: {', '.join(SHIPPED)}")
    return WEIGHTS_DIR / f"{SHIPPED[kind]}.json"


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
