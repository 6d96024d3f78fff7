"""The Python API: ``from covidcxr import Predictor``; every usual kind of input gives a result or a sentence."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from covidcxr.cli import SAMPLE


@pytest.fixture(scope="module")
def predictor():
    from covidcxr import Predictor

    return Predictor.load(saliency=False)


@pytest.fixture(scope="module")
def reference(predictor):
    return predictor.predict(str(SAMPLE))


def test_import_covidcxr_loads_no_torch():
    code = "import sys, covidcxr; covidcxr.Predictor; covidcxr.read_image; print('torch' in sys.modules)"
    assert (
        subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
        == "False"
    )


def _kinds():
    pil = Image.open(SAMPLE)
    grey = np.asarray(pil.convert("L"))
    return {
        "path str": str(SAMPLE),
        "path": SAMPLE,
        "bytes": SAMPLE.read_bytes(),
        "PIL": pil,
        "uint8": grey,
        "uint16": grey.astype(np.uint16) * 257,
        "float in [0, 1]": grey / 255.0,
        "float32 other range": grey.astype(np.float32) * 4 - 100,
        "RGB": np.stack([grey] * 3, axis=-1),
        "RGBA opaque": np.dstack([grey] * 3 + [np.full_like(grey, 255)]),
        "(H, W, 1)": grey[..., None],
    }


@pytest.mark.parametrize("kind", list(_kinds()))
def test_every_input_kind_reads_like_the_file(predictor, reference, kind):
    if kind == "float32 other range":  # no display range: min-max scaled, as documented; the lesion
        grey = np.asarray(Image.open(SAMPLE).convert("L"), np.float64)  # model reads displayed intensity
        reference = predictor.predict((grey - grey.min()) / (grey.max() - grey.min()))
    res = predictor.predict(_kinds()[kind])
    assert res.ok, res.error
    assert res.prediction == reference.prediction
    for c, p in reference.probabilities.items():
        assert res.probabilities[c] == pytest.approx(p, abs=2e-3), kind
    assert res.lung_mask.shape == reference.lung_mask.shape and res.lung_mask.dtype == bool


def test_a_list_gives_a_list_in_order_and_bad_items_say_why(predictor):
    grey = np.asarray(Image.open(SAMPLE).convert("L"))
    out = predictor.predict([grey, "missing.png", np.zeros((4, 4, 4, 4)), 3.5, np.full((64, 64), 7, np.uint8)])
    assert [r.ok for r in out] == [True, False, False, False, False]
    assert "missing.png" in out[1].error and "not found" in out[1].error
    assert "shape (4, 4, 4, 4)" in out[2].error and "(H, W)" in out[2].error
    assert "float" in out[3].error and "NumPy array" in out[3].error
    assert "blank" in out[4].error
    for r in out[1:]:
        assert "--" not in r.error  # no command-line flags in Python


def test_a_refusal_speaks_python(predictor):
    rng = np.random.default_rng(0)
    photo = (rng.random((300, 300, 3)) * 255).astype(np.uint8)  # noise: not an X-ray
    res = predictor.predict(photo)
    assert not res.ok and res.refusal_reason is not None
    assert "--no-gate" not in res.error and "use_gate=False" in res.error


def test_the_result_is_the_jsonl_row(predictor, reference):
    row = reference.to_dict()
    assert list(row)[:5] == ["path", "probabilities", "prediction", "uncertain", "uncertain_reason"]
    assert row["lung_area"] == pytest.approx(float(reference.lung_mask.mean()), abs=1e-4)
    assert row["findings"] == reference.findings and row["model"] == predictor.models
    assert isinstance(reference.uncertain, bool) and (reference.uncertain_reason is None) != reference.uncertain
