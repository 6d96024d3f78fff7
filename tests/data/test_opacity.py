from __future__ import annotations

import pytest
import torch
from torchvision import tv_tensors

from covidcxr.data.opacity import PATTERNS, PaintedOpacity, paint
from covidcxr.data.transforms import segmentation_augment


def _chest(size: int = 128) -> tuple[torch.Tensor, torch.Tensor]:
    """Two dark 'lungs' (0.1) in bright 'tissue' (0.7), and their mask."""
    image = torch.full((1, size, size), 0.7)
    mask = torch.zeros(size, size, dtype=torch.long)
    for x0, x1 in ((15, 55), (73, 113)):
        image[0, 20:110, x0:x1] = 0.1
        mask[20:110, x0:x1] = 1
    return image, mask


@pytest.mark.parametrize("pattern", PATTERNS)
def test_each_pattern_brightens_only_the_lungs_towards_the_tissue(pattern):
    image, mask = _chest()
    lung = mask == 1
    out = paint(image, lung, pattern, 1.0, torch.Generator().manual_seed(3))
    assert out.shape == image.shape and float(out.min()) >= 0 and float(out.max()) <= 1
    gain = out[0] - image[0]
    assert float(gain[lung].max()) > 0.2  # somewhere the lung is painted (ground glass is the faintest)
    far = torch.ones_like(lung)
    far[15:115, 10:118] = False  # a few pixels' blur at the lung border is allowed, nothing beyond
    assert float(gain[far].abs().max()) < 1e-6


def test_lower_whiteout_is_densest_at_the_bases_and_strength_scales_it():
    image, mask = _chest()
    lung = mask == 1
    strong = paint(image, lung, "lower_whiteout", 1.0, torch.Generator().manual_seed(0))[0]
    weak = paint(image, lung, "lower_whiteout", 0.3, torch.Generator().manual_seed(0))[0]
    assert float(strong[95:108, 20:50].mean()) > 0.55  # the base reaches tissue brightness (0.7)
    assert float(strong[22:30, 20:50].mean()) < 0.2  # the apex stays dark
    assert float(weak[95:108, 20:50].mean()) < float(strong[95:108, 20:50].mean()) - 0.2
    assert torch.equal(paint(image, lung, "effusion", 0.0, torch.Generator()), image)


def test_a_seed_reproduces_the_painting_and_an_unknown_pattern_is_named():
    image, mask = _chest()
    a = paint(image, mask == 1, "peripheral_ggo", 0.8, torch.Generator().manual_seed(7))
    b = paint(image, mask == 1, "peripheral_ggo", 0.8, torch.Generator().manual_seed(7))
    assert torch.equal(a, b)
    with pytest.raises(ValueError, match="known: lower_whiteout"):
        paint(image, mask == 1, "pneumothorax", 1.0, torch.Generator())


def test_training_transform_keeps_the_mask_and_is_off_unless_asked():
    torch.manual_seed(0)
    image, mask = _chest()
    im, m = PaintedOpacity(p=1.0, strength=(1.0, 1.0))(tv_tensors.Image(image), tv_tensors.Mask(mask))
    assert torch.equal(m, mask) and isinstance(im, tv_tensors.Image)
    assert float(im[0][mask == 1].mean()) > 0.1 + 0.02  # some pattern painted (a cardiac blob is small)
    im, m = PaintedOpacity(p=0.0)(tv_tensors.Image(image), tv_tensors.Mask(mask))
    assert torch.equal(im, image)
    assert not any(isinstance(t, PaintedOpacity) for t in segmentation_augment().transforms)
    assert any(isinstance(t, PaintedOpacity) for t in segmentation_augment(opacity=0.5).transforms)
