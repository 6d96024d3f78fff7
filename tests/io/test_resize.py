"""The NumPy resizes equal the PyTorch ones training used (the claim of covidcxr.io.resize)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from covidcxr.io.resize import resize_aa, resize_bilinear, resize_nearest

SIZES = [((97, 130), (64, 64)), ((64, 64), (256, 200)), ((300, 41), (256, 256)), ((256, 256), (256, 256))]


@pytest.mark.parametrize(("src", "dst"), SIZES)
def test_resize_aa_is_torch_bilinear_antialiased(src, dst):
    x = np.random.default_rng(0).random(src).astype(np.float32)
    ref = F.interpolate(torch.from_numpy(x)[None, None], size=dst, mode="bilinear", antialias=True, align_corners=False)
    np.testing.assert_allclose(resize_aa(x, dst), ref[0, 0].numpy(), atol=1e-5)


@pytest.mark.parametrize(("src", "dst"), SIZES)
def test_resize_bilinear_is_torch_bilinear(src, dst):
    x = np.random.default_rng(1).normal(size=(2, *src)).astype(np.float32)  # leading axes are kept
    ref = F.interpolate(torch.from_numpy(x)[None], size=dst, mode="bilinear", align_corners=False)
    np.testing.assert_allclose(resize_bilinear(x, dst), ref[0].numpy(), atol=3e-5)  # float32 rounding of N(0, 1) values


@pytest.mark.parametrize(("src", "dst"), SIZES)
def test_resize_nearest_is_torch_nearest_exact(src, dst):
    x = np.random.default_rng(2).integers(0, 3, size=src).astype(np.uint8)
    ref = F.interpolate(torch.from_numpy(x)[None, None].float(), size=dst, mode="nearest-exact")
    np.testing.assert_array_equal(resize_nearest(x, dst), ref[0, 0].numpy().astype(np.uint8))
