from __future__ import annotations

import pytest
import torch
from torchvision import tv_tensors

from covidcxr.data.transforms import resize_image, resize_mask, segmentation_augment, upsample_logits


def test_augmented_image_still_lines_up_with_its_mask():
    torch.manual_seed(1)
    image = torch.zeros(1, 128, 128)
    mask = torch.zeros(128, 128, dtype=torch.long)
    image[0, 30:70, 20:60] = 0.8
    mask[30:70, 20:60] = 1
    tf = segmentation_augment(rotation=20, translate=0.1, scale=(0.8, 1.2))
    for _ in range(10):
        im, m = tf(tv_tensors.Image(image), tv_tensors.Mask(mask))
        assert m.shape == (128, 128) and set(m.unique().tolist()) <= {0, 1}
        inside = im[0][m == 1].mean()
        outside = im[0][m == 0].mean()
        assert inside > outside + 0.3


def test_resize_keeps_labels_and_sizes():
    m = torch.randint(0, 3, (300, 211), dtype=torch.uint8)
    r = resize_mask(m, (64, 64))
    assert r.shape == (64, 64) and set(r.unique().tolist()) <= {0, 1, 2}
    im = resize_image(torch.rand(300, 211), (64, 64))
    assert im.shape == (1, 64, 64)
    assert upsample_logits(torch.randn(1, 1, 64, 64), (300, 211)).shape == (1, 1, 300, 211)


@pytest.mark.data
def test_crop_training_yields_crops_and_validates_on_whole_images():
    from covidcxr.config import load_config
    from covidcxr.engine.lungs.train import SegTrainConfig, _datasets

    cfg = load_config(SegTrainConfig, None, ["limit=4", "input_size=96", "crop_size=64"])
    train, val = _datasets(cfg)
    item = train[0]
    assert item["image"].shape == (1, 64, 64) and item["mask"].shape == (64, 64)
    assert val[0]["image"].shape == (1, 96, 96)
