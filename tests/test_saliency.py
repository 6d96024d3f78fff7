"""Grad-CAM maps, their placement on the X-ray and the share inside the lungs."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from covidcxr.models import create_model
from covidcxr.models.classifier import CAM_LAYERS
from covidcxr.saliency import GradCam, lung_share, to_image


@pytest.mark.parametrize("name", sorted(CAM_LAYERS))
def test_gradcam_every_backbone(name):
    torch.manual_seed(0)
    model = create_model(name, in_chans=1, num_classes=3).eval()
    maps = GradCam(model, name)(torch.randn(2, 1, 64, 64), [0, 2])
    assert maps.shape == (2, 64, 64)
    assert maps.min() >= 0 and maps.max() <= 1
    assert all(m.max() in (0.0, 1.0) or np.isclose(m.max(), 1.0) for m in maps)
    assert not model.training  # eval mode restored


def test_gradcam_unknown_architecture():
    with pytest.raises(KeyError, match="Grad-CAM"):
        GradCam(create_model("resnet18", in_chans=1, num_classes=3), "vgg")


def test_to_image_and_lung_share():
    mask = np.zeros((200, 300), bool)
    mask[50:150, 60:240] = True
    heat = to_image(np.ones((32, 32), np.float32), mask, margin=0.1)
    assert heat.shape == mask.shape
    # all heat sits in the lung box grown by 10%: rows 40-160, columns 42-258
    assert heat[:40].sum() == 0 and heat[161:].sum() == 0 and heat[:, :41].sum() == 0
    assert heat[50:150, 60:240].min() > 0.99
    share = lung_share(heat, mask)
    assert 0.6 < share < 0.8  # the box margin holds the rest
    assert lung_share(np.where(mask, 1.0, 0.0), mask) == 1.0
    assert np.isnan(lung_share(np.zeros_like(heat), mask))
