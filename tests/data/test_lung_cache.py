from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from covidcxr.data.lung_cache import cached_lung_masks, load_cached_mask, mask_path
from covidcxr.infer import LungSegmenter


@pytest.fixture(scope="module")
def segmenter():
    return LungSegmenter.from_spec()


def test_masks_are_computed_once_and_keyed_by_weights(tmp_path, fixtures, segmenter, monkeypatch):
    records = [
        {"path": str(fixtures / "ieee8023_2cd63b76.jpg"), "dataset": "covid-chestxray", "filename": "2cd63b76.jpg"},
        {"path": str(fixtures / "nih_00000710_003.png"), "dataset": "nih-chestxray8", "filename": "00000710_003.png"},
        {"path": str(tmp_path / "broken.png"), "dataset": "nih-chestxray8", "filename": "broken.png"},
    ]
    (tmp_path / "broken.png").write_bytes(b"junk")
    got = cached_lung_masks(records, segmenter, tmp_path / "cache", batch_size=2, progress=False)
    assert set(got) == {records[0]["path"], records[1]["path"]}
    for rec in records[:2]:
        p = got[rec["path"]]
        assert p == mask_path(rec, segmenter.spec.sha256, tmp_path / "cache")
        assert segmenter.spec.sha256[:12] in str(p)
        mask = load_cached_mask(p)
        assert mask.shape == np.asarray(Image.open(rec["path"])).shape[:2] and 0.1 < mask.mean() < 0.6

    def fail(*a, **k):
        raise AssertionError("cached masks must not be recomputed")

    monkeypatch.setattr(segmenter, "segment", fail)
    again = cached_lung_masks(records[:2], segmenter, tmp_path / "cache", progress=False)
    assert again == {r["path"]: got[r["path"]] for r in records[:2]}
