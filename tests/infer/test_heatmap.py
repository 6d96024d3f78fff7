"""The lesion-evidence heat map is graded (its colour bar is used), and an empty one says so."""

from __future__ import annotations

import numpy as np
from PIL import Image

from covidcxr.infer import Result
from covidcxr.report import save_report
from covidcxr.views import lesion_evidence, lung_share, robust_unit


def _lungs(shape=(512, 480)) -> np.ndarray:
    mask = np.zeros(shape, bool)
    mask[60:460, 40:220] = mask[60:460, 260:440] = True
    return mask


def _lesions(size: int = 256) -> np.ndarray:
    """Two lesion types on the lung model's grid: a large consolidated patch and a few small spots."""
    yy, xx = np.mgrid[:size, :size]
    lesions = np.zeros((2, size, size), bool)
    lesions[0] = (yy - 150) ** 2 + (xx - 70) ** 2 < 35**2
    for y, x in ((80, 180), (120, 200), (200, 190)):
        lesions[1] |= (yy - y) ** 2 + (xx - x) ** 2 < 6**2
    return lesions


def test_lesion_evidence_uses_the_whole_colour_bar():
    heat = lesion_evidence(_lesions(), _lungs())
    shown = heat[heat > 0]
    assert heat.max() == 1.0 and heat.min() == 0.0
    assert (shown >= 0.999).mean() < 0.05, "most of the map sits at the top of the scale"
    quarters = np.histogram(shown, bins=4, range=(0, 1))[0] / shown.size
    assert (quarters > 0.05).all(), f"a quarter of the colour bar is (almost) unused: {quarters.round(3)}"
    assert not heat[~_lungs()].any()  # inside the lungs only


def test_no_lesion_gives_an_empty_map_and_a_null_share():
    mask = _lungs()
    heat = lesion_evidence(np.zeros((2, 256, 256), bool), mask)
    assert heat.shape == mask.shape and not heat.any()
    row = Result(
        path="x.png",
        probabilities={"No finding": 1.0},
        prediction="No finding",
        lung_mask=mask,
        heatmap=heat,
        saliency_in_lungs=lung_share(heat, mask),
    ).to_dict()
    assert row["saliency_in_lungs"] is None  # valid JSON (not NaN): the page reads it as "no evidence"


def test_robust_unit_keeps_a_single_hot_pixel_from_flattening_the_rest():
    heat = np.linspace(0, 0.5, 10_000, dtype=np.float32).reshape(100, 100)
    heat[0, 0] = 100.0
    out = robust_unit(heat)
    assert np.median(out[out > 0]) > 0.4  # a plain max-scaling would put it at 0.0025


def test_report_says_when_there_is_no_lesion_evidence(tmp_path, monkeypatch):
    image = np.random.default_rng(0).random((300, 260)).astype(np.float32)
    mask = _lungs((300, 260))
    res = Result(
        path="scan.png",
        probabilities={"COVID-19": 0.2, "Other pneumonia": 0.2, "No finding": 0.6},
        prediction="No finding",
        lung_mask=mask,
        heatmap=np.zeros(image.shape, np.float32),
        saliency_method="lesion evidence",
    )
    from matplotlib.figure import Figure

    texts = []
    original = Figure.savefig

    def capture(self, *args, **kwargs):
        texts.extend(t.get_text() for ax in self.axes for t in ax.texts)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", capture)
    save_report(tmp_path / "r.png", image, res)
    assert "no lesion evidence found" in texts
    assert Image.open(tmp_path / "r.png").size[0] > 0
