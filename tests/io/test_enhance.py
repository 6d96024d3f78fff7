"""X-ray enhancement (covidcxr.io.enhance): its contract, what each method does, and that the
method recorded in a weights spec is what training and both inference backends apply."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from covidcxr.config import CONFIGS_DIR, load_config
from covidcxr.io import NORMALIZATION, normalize, read_image
from covidcxr.io.enhance import ENHANCEMENTS, enhance, guided_filter
from covidcxr.io.resize import resize_aa
from covidcxr.specs import WeightSpec, shipped_spec_path
from covidcxr.views import lung_view

METHODS = [m for m in ENHANCEMENTS if m != "none"]
FIXTURES = Path(__file__).parents[1] / "fixtures"


def _image_and_mask() -> tuple[np.ndarray, np.ndarray]:
    """A real radiograph (512 px) and a box standing in for its lung mask."""
    image = read_image(FIXTURES / "nih_00000710_003.png")
    mask = np.zeros(image.shape, bool)
    h, w = image.shape
    mask[h // 5 : 4 * h // 5, w // 6 : 5 * w // 6] = True
    return image, mask


def _local_std(image: np.ndarray, block: int = 16) -> float:
    """Mean standard deviation of the image's block x block tiles (local contrast)."""
    h, w = (s - s % block for s in image.shape)
    tiles = image[:h, :w].reshape(h // block, block, w // block, block)
    return float(tiles.std(axis=(1, 3)).mean())


def _low_contrast(h: int = 256, w: int = 256) -> np.ndarray:
    """Smooth structure in a narrow band of grey levels, like an underexposed film."""
    yy, xx = np.mgrid[0:h, 0:w] / 32.0
    rng = np.random.default_rng(0)
    return (0.45 + 0.04 * np.sin(xx) * np.cos(yy) + 0.01 * rng.standard_normal((h, w))).astype(np.float32)


def _hazed_scene(h: int = 256, w: int = 256, atmosphere: float = 0.95):
    """A scene J that obeys the dark-channel prior, its transmission t and I = J t + A (1 - t)."""
    yy, xx = np.mgrid[0:h, 0:w] / 255.0
    scene = (0.35 + 0.25 * (1 + np.sin(6 * xx) * np.cos(4 * yy))).astype(np.float32)
    scene[::4, ::4] = 0.02  # a dark pixel in every patch: the prior holds
    scene[2::4, 2::4] = 0.02
    scene[:32] = atmosphere  # a region as bright as the veil (sky; in an X-ray, dense tissue)
    t = (0.45 + 0.35 * xx).astype(np.float32)
    return scene, t, (scene * t + atmosphere * (1 - t)).astype(np.float32)


# ---------------------------------------------------------------- contract


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("shape", [(1, 1), (5, 7), (37, 53), (255, 257), (2000, 1500)])
def test_shape_dtype_and_range_are_kept(method, shape):
    image = np.random.default_rng(1).random(shape)  # float64 in: float32 out
    out = enhance(image, method)
    assert out.shape == shape and out.dtype == np.float32
    assert out.min() >= 0.0 and out.max() <= 1.0 and np.isfinite(out).all()


@pytest.mark.parametrize("method", METHODS)
def test_values_outside_the_unit_range_and_constant_images(method):
    out = enhance(np.linspace(-0.5, 1.5, 64 * 48).reshape(64, 48), method)
    assert out.min() >= 0.0 and out.max() <= 1.0
    for value in (0.0, 0.5, 1.0):
        flat = enhance(np.full((40, 60), value, np.float32), method)
        assert np.ptp(flat) == 0.0  # no structure invented in a flat image


def test_none_is_the_identity():
    image = np.random.default_rng(2).random((31, 17)).astype(np.float32)
    assert enhance(image) is image and enhance(image, "none") is image


def test_unknown_method_names_the_known_ones():
    with pytest.raises(ValueError, match="'gamma'.*none, clahe, dehaze"):
        enhance(np.zeros((8, 8), np.float32), "gamma")


def test_more_than_two_dimensions_is_refused():
    with pytest.raises(ValueError, match=r"\(H, W\)"):
        enhance(np.zeros((1, 8, 8), np.float32), "clahe")


# ---------------------------------------------------------------- CLAHE


def test_clahe_raises_local_contrast():
    image = _low_contrast()
    out = enhance(image, "clahe")
    assert _local_std(out) > 2 * _local_std(image)


def test_clahe_keeps_the_order_of_a_ramp():
    ramp = np.tile(np.linspace(0.1, 0.9, 300, dtype=np.float32), (200, 1))
    out = enhance(ramp, "clahe")
    steps = np.diff(out, axis=1)
    assert (steps >= -1.5 / 255).mean() > 0.99  # monotone up to the 8-bit step
    assert np.corrcoef(out.ravel(), ramp.ravel())[0, 1] > 0.95


@pytest.mark.parametrize("method", METHODS)
def test_a_large_original_and_a_small_view_are_treated_alike(method):
    """Tile grid, patch and radius are fractions of the image: enhance-then-shrink ~ shrink-then-enhance.

    Sizes fixed in pixels (a 32-px CLAHE tile, a 7-px dark-channel patch) give mean
    differences of 0.06 to 0.09 here; fractions of the image stay under 0.02.
    """
    small = resize_aa(_image_and_mask()[0], (256, 256))
    large = np.clip(resize_aa(small, (2048, 2048)), 0, 1)
    assert np.abs(enhance(small, method) - small).mean() > 0.04  # the method does change the image
    differs = np.abs(resize_aa(enhance(large, method), small.shape) - enhance(small, method)).mean()
    assert differs < 0.025


# ---------------------------------------------------------------- dehazing


def test_dehaze_restores_contrast_and_recovers_the_scene():
    scene, _, hazed = _hazed_scene()
    out = enhance(hazed, "dehaze")
    assert out.std() > 1.3 * hazed.std()
    body = np.s_[40:]  # away from the edge of the bright region, which the guided filter blurs
    assert np.abs(out - scene)[body].mean() < 0.25 * np.abs(hazed - scene)[body].mean()


def test_dehaze_leaves_a_clear_scene_nearly_alone():
    scene, _, _ = _hazed_scene()
    hazed_error = np.abs(_hazed_scene()[2] - scene).mean()
    assert np.abs(enhance(scene, "dehaze") - scene).mean() < 0.5 * hazed_error


def test_guided_filter_follows_edges_and_the_fast_version_agrees():
    guide = np.zeros((120, 160), np.float32)
    guide[:, 80:] = 1.0
    noisy = guide + 0.2 * np.random.default_rng(3).standard_normal(guide.shape).astype(np.float32)
    out = guided_filter(guide, noisy, radius=8, eps=1e-3)
    assert np.abs(out - guide).mean() < 0.25 * np.abs(noisy - guide).mean()  # denoised, edge kept
    fast = guided_filter(guide, noisy, radius=8, eps=1e-3, subsample=2)
    assert np.abs(fast - out).mean() < 0.02


@pytest.mark.parametrize("method", METHODS)
def test_on_a_real_radiograph(fixtures, method):
    image = read_image(fixtures / "nih_00000710_003.png")
    out = enhance(image, method)
    assert out.shape == image.shape and out.dtype == np.float32 and out.min() >= 0 and out.max() <= 1
    assert 0.01 < np.abs(out - image).mean() < 0.5  # changed, but still the same picture
    assert np.corrcoef(out.ravel(), image.ravel())[0, 1] > 0.6
    assert _local_std(out) > _local_std(image)


# ---------------------------------------------------------------- recorded in the spec, applied at inference


def _spec(task: str, enhancement: str, **kw) -> WeightSpec:
    return WeightSpec(
        name="t",
        architecture="x",
        task=task,
        targets=["a"],
        input_size=(64, 64),
        normalization=NORMALIZATION,
        file="t.pt",
        enhancement=enhancement,
        **kw,
    )


def test_old_spec_without_the_field_loads_as_none(tmp_path):
    raw = json.loads(shipped_spec_path("diagnosis").read_text())
    raw.pop("enhancement", None)
    (tmp_path / "old.json").write_text(json.dumps(raw))
    assert WeightSpec.from_json(tmp_path / "old.json").enhancement == "none"
    spec = dataclasses.replace(WeightSpec.from_json(tmp_path / "old.json"), enhancement="dehaze")
    spec.to_json(tmp_path / "new.json")
    assert WeightSpec.from_json(tmp_path / "new.json").enhancement == "dehaze"


@pytest.mark.parametrize("method", ENHANCEMENTS)
def test_the_diagnoser_returns_the_view_enhanced_as_the_spec_says(method):
    from covidcxr.infer import CnnDiagnoser

    image, mask = _image_and_mask()
    spec = _spec("diagnosis", method, lung_input="masked", margin=0.1)
    plain, lungs = lung_view(image, mask, 64, margin=0.1)
    expected = enhance(plain[0], method)
    view, view_lungs = CnnDiagnoser(SimpleNamespace(spec=spec)).view(image, mask)  # the same on either runner
    assert view.shape == (1, 64, 64)
    np.testing.assert_array_equal(view[0], expected)
    np.testing.assert_array_equal(view_lungs, lungs)
    if method != "none":
        assert not np.array_equal(expected, plain[0])


@pytest.mark.parametrize("method", ENHANCEMENTS)
def test_the_segmenter_enhances_the_full_image_before_resizing(method):
    from covidcxr.infer import LungSegmenter

    image, _ = _image_and_mask()
    spec = _spec("lung-segmentation", method)
    expected = normalize(resize_aa(enhance(image, method), (64, 64))[None, None])
    np.testing.assert_array_equal(LungSegmenter(SimpleNamespace(spec=spec)).preprocess([image]), expected)
    if method != "none":
        assert not np.allclose(expected, normalize(resize_aa(image, (64, 64))[None, None]), atol=1e-3)


def test_a_spec_with_an_unknown_enhancement_is_refused():
    from covidcxr.infer import CnnDiagnoser, LungSegmenter

    with pytest.raises(ValueError, match="unknown X-ray enhancement 'sharpen'"):
        CnnDiagnoser(SimpleNamespace(spec=_spec("diagnosis", "sharpen", lung_input="crop")))
    with pytest.raises(ValueError, match="unknown X-ray enhancement 'sharpen'"):
        LungSegmenter(SimpleNamespace(spec=_spec("lung-segmentation", "sharpen")))


def test_view_cache_is_kept_per_enhancement(tmp_path, monkeypatch, fixtures):
    from covidcxr.infer import LungSegmenter
    from covidcxr.research.cnn_train import prepare_views, views_cache_dir

    monkeypatch.setenv("COVIDCXR_CACHE", str(tmp_path / "cache"))
    name = "ieee8023_2cd63b76.jpg"
    samples = [{"dataset": "fixtures", "filename": name, "path": str(fixtures / name), "label": 0}]
    segmenter = LungSegmenter.from_spec()
    views = {m: prepare_views(samples, segmenter, 64, 0.1, enhancement=m, progress=False) for m in ("none", "clahe")}
    assert len(list(views_cache_dir().glob("*.npz"))) == 2  # one file per method, not one overwriting the other
    plain, enhanced = views["none"]["images"][0], views["clahe"]["images"][0]
    assert not np.array_equal(plain, enhanced)
    # CLAHE of the stored plain view: the same up to the 8-bit rounding of the stored input.
    again = (enhance(plain / np.float32(255), "clahe") * 255 + 0.5).astype(np.uint8)
    assert np.abs(again.astype(int) - enhanced.astype(int)).mean() < 2
    cached = prepare_views(samples, segmenter, 64, 0.1, enhancement="clahe", progress=False)
    np.testing.assert_array_equal(cached["images"], views["clahe"]["images"])
    with pytest.raises(ValueError, match="unknown X-ray enhancement"):
        prepare_views(samples, segmenter, 64, 0.1, enhancement="CLAHE", progress=False)


def test_training_configs_default_to_none_and_take_an_override():
    from covidcxr.engine.lungs.train import SegTrainConfig
    from covidcxr.research.cnn_train import DiagTrainConfig

    configs = CONFIGS_DIR
    for cls, name in ((DiagTrainConfig, "diagnosis_cnn.yaml"), (SegTrainConfig, "segmentation.yaml")):
        assert load_config(cls, configs / name).enhancement == "none"  # the string, not YAML's null
        assert load_config(cls, configs / name, ["enhancement=dehaze"]).enhancement == "dehaze"


def test_segmentation_dataset_enhances_before_the_resize(fixtures):
    from covidcxr.data.segmentation import SegmentationDataset
    from covidcxr.data.transforms import resize_image

    sample = {
        "path": str(fixtures / "ieee8023_2cd63b76.jpg"),
        "mask_path": str(fixtures / "ieee8023_2cd63b76_lungs-v7labs.png"),
        "mask_source": "v7labs",
        "patient_id": "a",
    }
    plain = SegmentationDataset([sample], (64, 64), progress=False)
    enhanced = SegmentationDataset([sample], (64, 64), progress=False, enhancement="clahe")
    expected = resize_image(torch.from_numpy(enhance(read_image(sample["path"]), "clahe")), (64, 64))
    torch.testing.assert_close(enhanced.images[0], expected)
    assert not torch.allclose(plain.images[0], enhanced.images[0], atol=1e-3)
    torch.testing.assert_close(enhanced[0]["mask"], plain[0]["mask"])  # masks untouched
