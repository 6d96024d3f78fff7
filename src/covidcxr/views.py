"""The lung view: the part of an X-ray the classifier reads, and heat maps mapped back (NumPy only).

Stage 2 reads the lungs that stage 1 found: the bounding box of the lung mask with a margin
(``crop``), the same with everything outside the lungs set to 0 (``masked``), or the whole
image (``whole``), resized to the classifier's input. :func:`lung_view` is the one code path
for training (stored views) and inference (both backends); :func:`to_image` puts a heat map
over the view back into the full image.
"""

from __future__ import annotations

import numpy as np

from .io import normalize
from .io.resize import resize_aa, resize_bilinear, resize_nearest

LUNG_INPUTS = ("crop", "masked", "whole")
#: What the classifier may be shown: the trained inputs, and the audit's counterfactual.
VIEW_MODES = (*LUNG_INPUTS, "lungs_blacked_out")


def lung_box(mask: np.ndarray, margin: float = 0.1) -> tuple[int, int, int, int]:
    """Bounding box ``(y0, y1, x0, x1)`` of the mask grown by ``margin`` of its size per side.

    An empty mask gives the whole image (the caller should warn: no lungs were found).
    """
    h, w = mask.shape
    ys, xs = np.nonzero(mask)
    if len(ys) == 0:
        return 0, h, 0, w
    y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    my, mx = int(round((y1 - y0) * margin)), int(round((x1 - x0) * margin))
    return max(0, y0 - my), min(h, y1 + my), max(0, x0 - mx), min(w, x1 + mx)


def lung_input(image: np.ndarray, mask: np.ndarray, mode: str = "crop", margin: float = 0.1) -> np.ndarray:
    """The part of an image the classifier sees.

    Args:
        image: (H, W) float in [0, 1].
        mask: (H, W) bool lung mask at the image's size.
        mode: ``crop`` (lung bounding box + margin), ``masked`` (crop, and pixels outside the
            lungs set to 0) or ``whole`` (the image unchanged; for shortcut studies).

    Returns:
        (h, w) float32 array.
    """
    if mode not in LUNG_INPUTS:
        raise ValueError(f"lung input mode must be one of {LUNG_INPUTS}, got {mode!r}")
    if image.shape != mask.shape:
        raise ValueError(f"image {image.shape} and lung mask {mask.shape} differ in size")
    if mode == "whole":
        return image.astype(np.float32, copy=False)
    y0, y1, x0, x1 = lung_box(mask, margin)
    out = image[y0:y1, x0:x1].astype(np.float32, copy=True)
    if mode == "masked":
        out[~mask[y0:y1, x0:x1]] = 0.0
    return out


def lung_view(
    image: np.ndarray, mask: np.ndarray, size: int, whole: bool = False, margin: float = 0.1
) -> tuple[np.ndarray, np.ndarray]:
    """The lung region at the classifier's input size: the image and its lung mask.

    The bounding box of the lungs grown by ``margin`` (or, with ``whole``, the whole image) is
    resized, aspect not kept, to ``size`` x ``size``; the mask goes through the same resize.
    Training stores these views and inference computes them, so both see the same pixels.

    Returns:
        (image (1, size, size) float32 in [0, 1], lungs (1, size, size) float32 in {0, 1}).
    """
    if image.shape != mask.shape:
        raise ValueError(f"image {image.shape} and lung mask {mask.shape} differ in size")
    y0, y1, x0, x1 = (0, image.shape[0], 0, image.shape[1]) if whole else lung_box(mask, margin)
    crop = np.asarray(image[y0:y1, x0:x1], np.float32)
    lungs = np.asarray(mask[y0:y1, x0:x1], np.float32)
    view = np.clip(resize_aa(crop, (size, size)), 0, 1)[None]
    return view, (resize_aa(lungs, (size, size)) > 0.5).astype(np.float32)[None]


#: The lesion model's input scaling (its specs record the name): the displayed intensity v in [0, 1]
#: inside the lungs as ``(v - 0.5) / 0.25``; everything outside the lungs black (v = 0). No
#: statistic of the image enters, so a pixel outside the lungs cannot change the input.
LUNGS_ONLY = "lungs_only_fixed"
LUNGS_ONLY_MEAN, LUNGS_ONLY_STD = 0.5, 0.25


def lungs_only(image: np.ndarray, mask: np.ndarray, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """What the lesion model reads: the lungs alone, stretched to ``size`` (the lung model's grid).

    The image is blacked out outside the lung mask at its own size first, so the antialiased
    resize mixes no outside pixel into a lung pixel; then everything outside the resized mask is
    black again, and the intensity is scaled by :data:`LUNGS_ONLY` (fixed constants).

    Returns:
        (view (1, *size) in [0, 1] before scaling, lungs (*size) bool); :func:`scale_lungs_only`
        gives the model input.
    """
    m = np.asarray(mask, bool)
    if np.shape(image) != m.shape:
        raise ValueError(f"image {np.shape(image)} and lung mask {m.shape} differ in size")
    lungs = resize_nearest(m, tuple(size))
    view = np.clip(resize_aa(np.where(m, np.asarray(image, np.float32), 0.0), tuple(size)), 0, 1) * lungs
    return view[None].astype(np.float32), lungs


def scale_lungs_only(view):
    """:data:`LUNGS_ONLY` scaling of a lungs-only view (NumPy or torch; outside pixels are 0 before it)."""
    return (view - LUNGS_ONLY_MEAN) / LUNGS_ONLY_STD


def apply_view(image, lungs, mode: str):
    """The pixels the classifier sees in ``mode`` (see ``VIEW_MODES``), before normalization.

    Works on NumPy arrays and torch tensors alike (training applies it after augmentation).

    ``crop`` and ``whole`` show the view as is; ``masked`` sets everything outside the lungs to
    0; ``lungs_blacked_out`` sets the lungs to 0 (shortcut audit only).
    """
    if mode in ("crop", "whole"):
        return image
    if mode == "masked":
        return image * lungs
    if mode == "lungs_blacked_out":
        return image * (1 - lungs)
    raise ValueError(f"view mode must be one of {VIEW_MODES}, got {mode!r}")


def to_image(view_map: np.ndarray, mask: np.ndarray, margin: float, whole: bool = False) -> np.ndarray:
    """A view-sized heat map placed into the lung box of the full image (zeros outside the box).

    Args:
        view_map: (S, S) map over the lung view.
        mask: (H, W) lung mask of the full image (gives the box, as in ``lung_view``).
    """
    h, w = mask.shape
    y0, y1, x0, x1 = (0, h, 0, w) if whole else lung_box(mask, margin)
    out = np.zeros((h, w), np.float32)
    out[y0:y1, x0:x1] = np.clip(resize_bilinear(view_map, (y1 - y0, x1 - x0)), 0, 1)
    return out


def lung_share(heat: np.ndarray, lungs: np.ndarray) -> float:
    """Fraction of the heat map's mass inside the lungs (NaN for an all-zero map)."""
    heat = np.asarray(heat, np.float64)
    total = float(heat.sum())
    return min(1.0, float(heat[lungs.astype(bool)].sum()) / total) if total > 0 else float("nan")


def heads_inputs(views, mode: str, grid: int, facts, n_facts: int) -> dict:
    """NumPy inputs of the source-blind model (shared by the PyTorch and onnxruntime backends)."""
    x = normalize(np.stack([apply_view(v, lungs, mode) for v, lungs in views]))
    weights = np.stack(
        [np.clip(resize_aa(np.asarray(lungs[0], np.float32), (grid, grid)), 0, 1)[None] for _, lungs in views]
    ).astype(np.float32)
    if facts is None:
        if n_facts:
            raise ValueError(
                "this diagnosis model reads the finding facts of the severity scorer; run it with severity scores on"
            )
        facts = np.zeros((len(views), 0), np.float32)
    return {
        "x": x,
        "weights": weights,
        "facts": np.asarray(np.stack(list(facts)) if len(facts) else np.zeros((0, n_facts)), np.float32),
    }


def cam_maps(cam: np.ndarray, targets: list[int], size: int) -> np.ndarray:
    """Maps (N, size, size) in [0, 1] of each row's target class from (N, K, h, w) activations."""
    picked = np.asarray(cam, np.float32)[np.arange(len(targets)), targets]
    maps = (
        np.stack([np.maximum(resize_bilinear(m, (size, size)), 0) for m in picked])
        if len(picked)
        else np.zeros((0, size, size), np.float32)
    )
    return maps / np.maximum(maps.reshape(len(maps), -1).max(axis=1), 1e-12)[:, None, None]


#: Lesion evidence grades how much lesion lies near each pixel: the lesion maps smoothed by a Gaussian
#: whose sigma is this share of the grid's side (8 px at 256). A plain lesion mask is 0 or 1, so its heat
#: map used only the top of the colour bar (94% of the sample's non-zero pixels at the maximum).
EVIDENCE_SIGMA = 1 / 32
#: The top of the scale: this percentile of a map's non-zero values maps to 1, so one dense spot does
#: not flatten the rest, and a plateau does not fill the map with the maximum.
EVIDENCE_PERCENTILE = 99.0
#: Values below this share of the top are set to 0: the Gaussian's far tails are not evidence.
EVIDENCE_FLOOR = 0.01


def robust_unit(heat: np.ndarray, percentile: float = EVIDENCE_PERCENTILE, floor: float = EVIDENCE_FLOOR) -> np.ndarray:
    """``heat`` scaled so that the ``percentile`` of its non-zero values is 1, clipped to [0, 1]; below ``floor``: 0.

    An all-zero map stays all zero.
    """
    heat = np.asarray(heat, np.float32)
    positive = heat[heat > 0]
    if not positive.size:
        return np.zeros_like(heat)
    out = np.clip(heat / np.float32(np.percentile(positive, percentile)), 0, 1)
    out[out < floor] = 0
    return out


def lesion_evidence(lesions: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Heat map (H, W) in [0, 1] of the lesions a findings-only diagnosis rests on, at the image's size.

    The density of lesion pixels around each point (:data:`EVIDENCE_SIGMA`) inside the lungs, scaled by
    :func:`robust_unit`: graded, so its colour bar is used; all zeros when no lesion was found.

    Args:
        lesions: (K, S, S) bool lesion maps on the lung model's input grid (the whole image stretched).
        mask: (H, W) bool lungs of the image.
    """
    from scipy import ndimage

    any_lesion = np.asarray(lesions, bool).any(axis=0).astype(np.float32)
    if not any_lesion.any():
        return np.zeros(mask.shape, np.float32)
    density = ndimage.gaussian_filter(any_lesion, sigma=EVIDENCE_SIGMA * any_lesion.shape[-1], mode="constant")
    heat = np.clip(resize_bilinear(density, tuple(mask.shape)), 0, None) * np.asarray(mask, np.float32)
    return robust_unit(heat)
