"""Weights specs: what a weight file is and expects (no PyTorch import).

A spec (JSON beside the weight file) says what the weights expect: architecture and its
arguments, input size, the X-ray enhancement and the normalization name, output names,
threshold, storage dtype, sha256, how they were trained and what they scored. Inference
rebuilds preprocessing from the spec, on either backend (PyTorch ``.pt`` or ONNX ``.onnx``).
A field added later has a default that means "as before", so older spec files still load.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
#: The ONNX graphs of the shipped models (``covidcxr export onnx --shipped``): what the light install runs.
SHIPPED_ONNX_DIR = WEIGHTS_DIR / "onnx"
SHIPPED = {
    "lungs": "unet_mobilenetv2_lungs",
    "diagnosis": "source_blind_diagnosis",
    "gate": "frontal_cxr_gate",
    "lesions": "unet_mobilenetv2_lesions",
    "severity": "severity_linear",
}

#: Names of the lung encoder's feature maps in the inference graphs (coarser to the right).
ENCODER_FEATURES = ("f1", "f2", "f3", "f4", "f5")


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
    enhancement: str = "none"  # X-ray enhancement applied before the model (covidcxr.io.enhance: none | clahe | dehaze)
    threshold: float = 0.5
    dtype: str = "float16"  # storage dtype; weights are cast to float32 at load
    lung_input: str = ""  # diagnosis: crop | masked (see covidcxr.data.classification)
    margin: float = 0.0  # diagnosis: lung box grown by this fraction per side
    temperature: float = 1.0  # diagnosis: calibrated probabilities are softmax(logits / temperature)
    lung_weights: str = ""  # diagnosis, gate, lesions: sha256 of the lung model whose masks / encoder it was trained on
    intensity_check: dict = field(
        default_factory=dict
    )  # gate: mean, precision and limit of the intensity-facts distance (empty: off)
    uncertainty: dict = field(default_factory=dict)  # diagnosis: thresholds of the "uncertain" rule (empty: never)
    # diagnosis: the headline's thresholds, p_abnormal and covid_given_abnormal (empty: the largest probability)
    operating_point: dict = field(default_factory=dict)
    training: dict = field(default_factory=dict)
    metrics: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        from .io.enhance import check_enhancement  # one check for every model that reads a spec

        check_enhancement(self.enhancement)

    @classmethod
    def from_json(cls, path: str | Path) -> WeightSpec:
        try:
            data = json.loads(Path(path).read_text())
        except json.JSONDecodeError as err:
            raise ValueError(
                f"{path}: not a weights spec: broken JSON ({err}); pass the .json file written with the weights"
            ) from None
        if not isinstance(data, dict):
            raise ValueError(f"{path}: not a weights spec: expected a JSON object of fields, got {type(data).__name__}")
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


def source_sha256(spec: WeightSpec) -> str:
    """The sha256 of the trained weights a spec stands for: its own, or for an ONNX export the PyTorch file it came from."""
    return spec.training.get("exported_from", {}).get("sha256") or spec.sha256
