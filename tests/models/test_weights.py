"""Shipped weights: size, spec, hash check, and golden outputs on a fixture image."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from covidcxr.infer import LungSegmenter
from covidcxr.io import read_image
from covidcxr.metrics import dice
from covidcxr.models import create_model, load_weights, save_weights, shipped_spec_path
from covidcxr.models.weights import WeightSpec, sha256_file

GOLDEN = "golden/ieee8023_2cd63b76_lungs.png"


def test_shipped_weights_are_small_and_match_their_spec():
    spec_path = shipped_spec_path("lungs")
    spec = WeightSpec.from_json(spec_path)
    weights = spec_path.parent / spec.file
    assert weights.stat().st_size <= 10 * 1024 * 1024
    assert sha256_file(weights) == spec.sha256
    assert spec.architecture == "unet_mobilenetv2" and spec.normalization == "per_image_zscore"
    assert spec.training["data"]["split_version"] == "v2" and spec.training["command"].startswith(
        "covidcxr train segmentation"
    )
    assert set(spec.metrics["dice"]) >= {"v7labs", "generalblockchain", "kermany-v7labs", "all_manual"}
    state = torch.load(weights, map_location="cpu", weights_only=True)
    assert all(v.dtype == torch.float16 for v in state.values() if v.is_floating_point())


def test_tampered_weights_are_refused(tmp_path):
    spec_path = shipped_spec_path("lungs")
    spec = WeightSpec.from_json(spec_path)
    shutil.copy(spec_path, tmp_path / spec_path.name)
    data = bytearray((spec_path.parent / spec.file).read_bytes())
    data[-10] ^= 0xFF
    (tmp_path / spec.file).write_bytes(bytes(data))
    with pytest.raises(ValueError, match="sha256"):
        load_weights(tmp_path / spec_path.name)


def test_save_and_load_round_trip(tmp_path):
    torch.manual_seed(0)
    model = create_model("unet_mobilenetv2")
    spec = WeightSpec(
        name="t",
        architecture="unet_mobilenetv2",
        task="lung-segmentation",
        targets=["lungs"],
        input_size=(64, 64),
        normalization="per_image_zscore",
        file="t.pt",
    )
    path = save_weights(model, spec, tmp_path)
    loaded, spec2 = load_weights(path)
    assert spec2.sha256 == json.loads(path.read_text())["sha256"] and spec2.input_size == (64, 64)
    x = torch.randn(1, 1, 64, 64)
    with torch.no_grad():
        model.eval()
        # float16 storage: outputs agree to half precision
        torch.testing.assert_close(loaded(x), model(x), atol=0.05, rtol=0.05)


def test_golden_output_on_fixture(fixtures):
    """The shipped model's mask for a fixed test-split image matches the recorded one."""
    image = read_image(fixtures / "ieee8023_2cd63b76.jpg")
    seg = LungSegmenter.from_spec()
    prob = seg.probabilities([image])[0]
    mask = seg.segment([image])[0]
    golden = np.asarray(Image.open(fixtures / GOLDEN)) > 0
    assert mask.shape == golden.shape == image.shape
    assert dice(mask, golden) > 0.995
    assert abs(mask.mean() - golden.mean()) < 0.002
    manual = np.asarray(Image.open(fixtures / "ieee8023_2cd63b76_lungs-v7labs.png"))
    assert dice(mask, manual == 255, manual != 127) > 0.9
    assert prob.dtype == np.float32 and prob.min() >= 0 and prob.max() <= 1


def test_the_default_lung_model_is_the_imagenet_start_trained_through_painted_opacity():
    """The shipped lung model's spec says how it was made (docs/experiments/lungs-through-opacity.md) and what it scored."""
    spec = json.loads(shipped_spec_path("lungs").read_text())
    config = spec["training"]["config"]
    assert config["init"].startswith("imagenet-file:") and config["opacity"] == 0.5
    assert spec["metrics"]["split"] == "test" and spec["metrics"]["dice"]["all_manual"]["value"] >= 0.960
