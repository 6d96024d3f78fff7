"""X-ray enhancement before a model reads an image: CLAHE and dark-channel-prior dehazing (NumPy + OpenCV).

One function, :func:`enhance`, shared by training and inference on both backends (no PyTorch
import: the onnxruntime install uses it too). Which method a model was trained with is
recorded in its weights spec (``WeightSpec.enhancement``), and inference applies exactly that.

OpenCV is imported only when a method other than ``none`` runs: the shipped models use none,
and the light install (``pip install covidcxr``) does not carry OpenCV (the train extra does).

Every size-dependent parameter (CLAHE tile grid, dark-channel patch, guided-filter radius) is
a fixed fraction of the image, so a 256-px view and a 3000-px original are treated alike.
The remaining constants are part of a method's definition: the spec records only the
method's name, so a change to them needs a new name, or shipped weights would silently see
other pixels than they were trained on.
"""

from __future__ import annotations

import numpy as np

ENHANCEMENTS = ("none", "clahe", "dehaze")

# CLAHE: an 8 x 8 grid of tiles whatever the image size; histogram bins clipped at
# CLAHE_CLIP times their mean height (OpenCV's clipLimit is relative to the mean bin).
CLAHE_GRID = 8
CLAHE_CLIP = 2.0
# Dehazing (He et al. 2009; guided filter: He et al. 2010), sizes as fractions of the shorter side.
DEHAZE_PATCH = 1 / 40  # dark-channel patch side (15 px at 600 px, as in the paper)
DEHAZE_RADIUS = 1 / 10  # guided-filter radius (60 px at 600 px, as in the guided-filter paper)
DEHAZE_EPS = 1e-3  # guided-filter regularisation, intensities in [0, 1]
DEHAZE_OMEGA = 0.95  # share of the haze removed: a little is kept so depth still reads
DEHAZE_T0 = (
    0.2  # lower bound of the transmission: contrast stretched 5x at most (paper: 0.1), against noise and JPEG blocks
)
DEHAZE_TOP = 0.001  # share of the brightest dark-channel pixels that estimates the atmospheric light
DEHAZE_WORK = 512  # guided-filter coefficients computed with the shorter side brought down to about this


def _cv2():
    """OpenCV, or a sentence saying how to install it."""
    try:
        import cv2
    except ImportError as err:
        raise RuntimeError(
            "this model's spec names an X-ray enhancement (CLAHE or dehazing), which needs OpenCV: "
            "pip install 'covidcxr[train]' (or opencv-python-headless)"
        ) from err
    return cv2


def check_enhancement(method: str) -> str:
    """``method`` if it is a known enhancement, else a ValueError that lists the known ones."""
    if method not in ENHANCEMENTS:
        raise ValueError(
            f"unknown X-ray enhancement {method!r}; known: {', '.join(ENHANCEMENTS)} "
            "(a weights spec naming another one was written by a newer covidcxr: upgrade it)"
        )
    return method


def enhance(image: np.ndarray, method: str = "none") -> np.ndarray:
    """Enhance a grayscale X-ray with ``method`` (one of ``ENHANCEMENTS``).

    Args:
        image: (H, W) float in [0, 1], any size.
        method: ``none`` (the input itself is returned, not a copy, whatever its dtype),
            ``clahe`` (:func:`clahe`) or ``dehaze`` (:func:`dehaze`).

    Returns:
        (H, W) float32 in [0, 1].

    Raises:
        ValueError: unknown method, or an image that is not 2-D.
    """
    check_enhancement(method)
    if method == "none":
        return image
    image = np.asarray(image)
    if image.ndim != 2:
        raise ValueError(
            f"enhance expects one grayscale image (H, W), got shape {image.shape}; enhance each image (or channel) separately"
        )
    image = np.clip(image, 0.0, 1.0, dtype=np.float32)
    return clahe(image) if method == "clahe" else dehaze(image)


def clahe(image: np.ndarray) -> np.ndarray:
    """Contrast-limited adaptive histogram equalisation (Zuiderveld 1994) with OpenCV.

    The image is split into a ``CLAHE_GRID`` x ``CLAHE_GRID`` grid of tiles (fewer along a
    side shorter than 64 px, so a tile keeps 8 px at least); each tile's histogram is
    clipped at ``CLAHE_CLIP`` times its mean bin height, the excess spread over all bins,
    and its cumulative sum is the tile's grey-level map; each pixel's output interpolates bilinearly between the maps of the four
    nearest tiles. Works on an 8-bit copy: OpenCV's 16-bit CLAHE uses 65,536 bins whose
    (integer) clip limit rounds to 1 on small tiles, so its result would depend on the image
    size; 8 bits is the precision of every image of the development data.

    Args:
        image: (H, W) float32 in [0, 1].

    Returns:
        (H, W) float32 in [0, 1], in steps of 1/255.
    """
    h, w = image.shape
    grid = (max(1, min(CLAHE_GRID, w // 8)), max(1, min(CLAHE_GRID, h // 8)))  # OpenCV: (columns, rows)
    eight_bit = (image * 255 + 0.5).astype(np.uint8)
    cv2 = _cv2()
    out = cv2.createCLAHE(clipLimit=CLAHE_CLIP, tileGridSize=grid).apply(eight_bit)
    return out.astype(np.float32) / np.float32(255)


def dehaze(image: np.ndarray) -> np.ndarray:
    """Dark-channel-prior contrast restoration (He, Sun & Tang, CVPR 2009) for one channel.

    Haze model: ``I = J * t + A * (1 - t)``, a veil of brightness ``A`` laid over the scene
    ``J`` with transmission ``t``. The prior: in a clear image almost every patch holds a
    dark pixel. In a chest X-ray that is the air in the lungs and around the body; dense
    regions without dark pixels (mediastinum, heart, diaphragm) are read as veiled, and
    their contrast is stretched, while the lung fields stay nearly as they are.

    1. Dark channel: ``D = min over a patch of I`` (patch side ``DEHAZE_PATCH`` of the
       shorter side; one channel, so there is no minimum over colours).
    2. Atmospheric light: ``A`` = mean of ``I`` over the ``DEHAZE_TOP`` share of pixels
       with the brightest dark channel (the paper takes their brightest pixel; the mean is
       less swayed by a burnt-in label or marker).
    3. Transmission: ``t = 1 - omega * D / A`` with ``omega = DEHAZE_OMEGA``.
    4. Refinement: ``t`` smoothed by a guided filter with ``I`` as guide
       (:func:`guided_filter`), which puts its edges where the image has them.
    5. Restoration: ``J = (I - A) / max(t, t0) + A`` (``t0 = DEHAZE_T0``), clipped to [0, 1].

    Args:
        image: (H, W) float32 in [0, 1].

    Returns:
        (H, W) float32 in [0, 1].
    """
    short = min(image.shape)
    patch = max(3, int(round(short * DEHAZE_PATCH)) | 1)  # odd, so the window is centred
    cv2 = _cv2()
    dark = cv2.erode(image, cv2.getStructuringElement(cv2.MORPH_RECT, (patch, patch)), borderType=cv2.BORDER_REPLICATE)
    k = max(1, int(dark.size * DEHAZE_TOP))
    brightest = np.argpartition(dark.ravel(), dark.size - k)[-k:]
    atmosphere = max(float(image.ravel()[brightest].mean()), 1e-3)
    t = 1 - DEHAZE_OMEGA * dark / np.float32(atmosphere)
    t = guided_filter(
        image,
        t,
        radius=max(1, int(round(short * DEHAZE_RADIUS))),
        eps=DEHAZE_EPS,
        subsample=max(1, short // DEHAZE_WORK),
    )
    t = np.maximum(t, np.float32(DEHAZE_T0))
    out = (image - np.float32(atmosphere)) / t + np.float32(atmosphere)
    return np.clip(out, 0.0, 1.0).astype(np.float32, copy=False)


def guided_filter(guide: np.ndarray, src: np.ndarray, radius: int, eps: float, subsample: int = 1) -> np.ndarray:
    """Edge-preserving smoothing of ``src`` by ``guide`` (He, Sun & Tang, ECCV 2010), from box means.

    In every window ``w`` of side ``2 * radius + 1`` the output is a linear function of the
    guide, ``q = a_w * I + b_w``, with
    ``a_w = cov_w(I, p) / (var_w(I) + eps)`` and ``b_w = mean_w(p) - a_w * mean_w(I)``;
    each pixel takes the mean ``a`` and ``b`` of the windows that cover it.

    With ``subsample`` s > 1 (the fast guided filter, He & Sun 2015), ``a`` and ``b`` are
    computed on ``I`` and ``p`` shrunk s times (radius r / s) and their means brought back
    to full size bilinearly; ``q`` is still formed from the full-size guide. The means are
    smooth over windows much larger than s, so little changes, at about 1 / s^2 of the cost.

    Args:
        guide: (H, W) float32 guide image ``I``.
        src: (H, W) float32 image ``p`` to filter.
        radius: window radius in pixels (of the full-size image).
        eps: regularisation; larger means smoother, less edge-following.
        subsample: shrink factor of the coefficient computation; 1 is the exact filter.

    Returns:
        (H, W) float32.
    """
    cv2 = _cv2()
    h, w = guide.shape
    small = (max(1, round(w / subsample)), max(1, round(h / subsample)))  # OpenCV: (width, height)
    if subsample > 1:
        guide_s = cv2.resize(guide, small, interpolation=cv2.INTER_AREA)
        src_s = cv2.resize(src, small, interpolation=cv2.INTER_AREA)
    else:
        guide_s, src_s = guide, src
    r = max(1, int(round(radius / subsample)))
    size = (2 * r + 1, 2 * r + 1)

    def mean(x: np.ndarray) -> np.ndarray:
        return cv2.boxFilter(x, cv2.CV_32F, size, borderType=cv2.BORDER_REFLECT)

    mean_i, mean_p = mean(guide_s), mean(src_s)
    cov_ip = mean(guide_s * src_s) - mean_i * mean_p
    var_i = mean(guide_s * guide_s) - mean_i * mean_i
    a = cov_ip / (var_i + np.float32(eps))
    b = mean_p - a * mean_i
    mean_a, mean_b = mean(a), mean(b)
    if subsample > 1:
        mean_a = cv2.resize(mean_a, (w, h), interpolation=cv2.INTER_LINEAR)
        mean_b = cv2.resize(mean_b, (w, h), interpolation=cv2.INTER_LINEAR)
    return (mean_a * guide + mean_b).astype(np.float32, copy=False)
