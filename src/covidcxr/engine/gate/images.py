"""Images the gate learns from besides the data: photograph and synthetic negatives, hospital-style frontal copies."""

from __future__ import annotations

import numpy as np

from ...io.resize import resize_aa, resize_bilinear

#: scikit-image sample images used as photograph negatives, split by identity.
PHOTOS = {
    "train": (
        "astronaut",
        "camera",
        "chelsea",
        "coffee",
        "coins",
        "horse",
        "hubble_deep_field",
        "immunohistochemistry",
        "moon",
        "page",
        "grass",
        "brick",
        "checkerboard",
        "colorwheel",
        "logo",
        "binary_blobs",
    ),
    "val": ("cat", "gravel"),
    "test": ("text", "rocket", "clock", "retina", "cell", "shepp_logan_phantom", "microaneurysms"),
}
SYNTHETIC = ("noise", "gradient", "shapes", "texture")


def _gray(img: np.ndarray) -> np.ndarray:
    img = np.asarray(img, np.float32)
    if img.ndim == 3:
        img = img[..., :3].mean(axis=2)
    lo, hi = float(img.min()), float(img.max())
    return (img - lo) / (hi - lo) if hi > lo else np.zeros_like(img)


def _synthetic(kind: str, rng: np.random.Generator) -> np.ndarray:
    h, w = int(rng.integers(180, 700)), int(rng.integers(180, 700))
    if kind == "noise":
        return np.clip(rng.normal(rng.uniform(0.2, 0.8), rng.uniform(0.05, 0.3), (h, w)), 0, 1)
    if kind == "gradient":
        yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
        a, b = rng.normal(size=2)
        return _gray(a * yy + b * xx + rng.normal(0, 0.02, (h, w)))
    if kind == "shapes":
        img = np.full((h, w), rng.uniform(0, 1), np.float32)
        yy, xx = np.mgrid[0:h, 0:w]
        for _ in range(int(rng.integers(2, 12))):
            cy, cx, ry, rx = rng.uniform(0, h), rng.uniform(0, w), rng.uniform(10, h / 2), rng.uniform(10, w / 2)
            img[((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 < 1] = rng.uniform(0, 1)
        return img
    if kind == "texture":
        import torch

        small = rng.normal(size=(int(rng.integers(3, 24)), int(rng.integers(3, 24))))
        t = torch.nn.functional.interpolate(
            torch.from_numpy(small).float()[None, None], size=(h, w), mode="bicubic", align_corners=False
        )[0, 0].numpy()
        return _gray(t + rng.normal(0, 0.05, (h, w)))
    raise ValueError(kind)


def negative_images(
    split: str, n_synthetic: int = 60, variants: int = 10, seed: int = 0
) -> list[tuple[str, np.ndarray]]:
    """Non-X-ray images for a split: photographs (crops, turns) and synthetic images."""
    import skimage.data

    rng = np.random.default_rng([seed, ("train", "val", "test").index(split)])
    out = []
    for name in PHOTOS[split]:
        photo = _gray(getattr(skimage.data, name)())
        for v in range(variants):
            h, w = photo.shape
            ch, cw = int(h * rng.uniform(0.6, 1.0)), int(w * rng.uniform(0.6, 1.0))
            y, x = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
            crop = np.rot90(photo[y : y + ch, x : x + cw], int(rng.integers(0, 4)))
            out.append((f"photo:{name}:{v}", np.ascontiguousarray(crop)))
    for kind in SYNTHETIC:
        for v in range(n_synthetic // len(SYNTHETIC)):
            out.append((f"synthetic:{kind}:{v}", _synthetic(kind, rng).astype(np.float32)))
    return out


#: What :func:`augment_frontal` adds to a frontal film (the shipped gate's recipe), each with probability one half
#: (at least one), in the order they are applied: geometry last but one, downscaling last.
HOSPITAL_MARKS = ("tubes", "ecg", "text", "border", "turn", "small")
_LABELS = (
    "L",
    "R",
    "AP",
    "PORTABLE",
    "SUPINE",
    "ICU",
    "SITTING",
    "12/04/2020",
    "08:31",
    "BED 7",
    "CHEST AP",
    "UPRIGHT",
)


def _draw(image: np.ndarray, paint, value: float | None = None) -> np.ndarray:
    """``image`` with what ``paint(ImageDraw, scale)`` draws blended in at ``value`` (default: bright)."""
    from PIL import Image, ImageDraw

    layer = Image.new("L", image.shape[::-1], 0)
    paint(ImageDraw.Draw(layer), max(image.shape) / 512)
    alpha = np.asarray(layer, np.float32) / 255
    return image * (1 - alpha) + alpha * (value if value is not None else 1.0)


def _tubes(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One to four thick bright curves (tubes, lines, drains, pacemaker wires), most of them through the upper middle."""
    h, w = image.shape

    def paint(draw, s):
        for _ in range(int(rng.integers(1, 5))):
            x0 = rng.uniform(0.3, 0.7) * w if rng.random() < 0.7 else rng.uniform(0, w)
            pts = np.array(
                [
                    [x0, rng.uniform(-0.05, 0.3) * h],
                    [rng.uniform(0.2, 0.8) * w, rng.uniform(0.2, 0.7) * h],
                    [rng.uniform(0, 1) * w, rng.uniform(0.3, 1.05) * h],
                ]
            )
            t = np.linspace(0, 1, 40)[:, None]
            curve = (1 - t) ** 2 * pts[0] + 2 * t * (1 - t) * pts[1] + t**2 * pts[2]  # quadratic Bezier
            draw.line(
                [tuple(p) for p in curve], fill=int(rng.integers(150, 256)), width=max(1, int(rng.uniform(2, 9) * s))
            )

    return _draw(image, paint, value=rng.uniform(0.85, 1.0))


def _ecg(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Two to seven ECG-lead circles (bright rings or discs) with a wire or two."""
    h, w = image.shape

    def paint(draw, s):
        for _ in range(int(rng.integers(2, 8))):
            cx, cy, r = rng.uniform(0.1, 0.9) * w, rng.uniform(0.05, 0.8) * h, rng.uniform(6, 16) * s
            box = (cx - r, cy - r, cx + r, cy + r)
            if rng.random() < 0.5:
                draw.ellipse(box, fill=255)
            else:
                draw.ellipse(box, outline=255, width=max(1, int(r / 3)))
            if rng.random() < 0.4:
                draw.line(
                    [(cx, cy), (cx + rng.uniform(-0.3, 0.3) * w, cy + rng.uniform(-0.3, 0.3) * h)],
                    fill=200,
                    width=max(1, int(2 * s)),
                )

    return _draw(image, paint, value=rng.uniform(0.85, 1.0))


def _text(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Burnt-in side markers and text (bright or dark), mostly near the edges."""
    from PIL import ImageFont

    h, w = image.shape

    def paint(draw, s):
        for _ in range(int(rng.integers(1, 5))):
            font = ImageFont.load_default(size=max(8, int(rng.uniform(10, 36) * s)))
            x = rng.choice([rng.uniform(0.0, 0.2), rng.uniform(0.6, 0.85), rng.uniform(0, 0.85)]) * w
            y = rng.choice([rng.uniform(0.0, 0.1), rng.uniform(0.85, 0.95), rng.uniform(0, 0.95)]) * h
            draw.text((x, y), str(rng.choice(_LABELS)), fill=255, font=font)
            if rng.random() < 0.3:  # a marker box
                r = rng.uniform(10, 25) * s
                draw.rectangle((x, y, x + r, y + r), outline=255, width=max(1, int(2 * s)))

    return _draw(image, paint, value=1.0 if rng.random() < 0.8 else 0.0)


def _border(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The film shrunk inside black, white or grey bands (letterbox, pillarbox or a frame), same size."""
    h, w = image.shape
    top, bottom, left, right = (rng.uniform(0, 0.15, 4) * [h, h, w, w]).astype(int)
    kind = rng.integers(3)
    if kind == 0:
        left = right = 0  # letterbox
    elif kind == 1:
        top = bottom = 0  # pillarbox
    out = np.full((h, w), rng.choice([0.0, 0.0, 1.0, rng.uniform(0.1, 0.6)]), np.float32)
    ih, iw = h - top - bottom, w - left - right
    if ih >= 16 and iw >= 16:
        out[top : top + ih, left : left + iw] = resize_aa(image, (ih, iw))
        return out
    return image


def _turn(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A turn of up to 15 degrees (black or edge-filled corners) and a crop to 75-100% per side, back to the same size."""
    from scipy import ndimage

    h, w = image.shape
    ch, cw = int(h * rng.uniform(0.75, 1.0)), int(w * rng.uniform(0.75, 1.0))
    y, x = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
    mode = "constant" if rng.random() < 0.5 else "nearest"
    turned = ndimage.rotate(
        image[y : y + ch, x : x + cw], rng.uniform(-15, 15), reshape=False, order=1, mode=mode, cval=0.0
    )
    return resize_aa(turned, (h, w))


def _small(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The film as a 224-px copy (longer side), blown back up to its size: the detail of a 224 x 224 download."""
    h, w = image.shape
    f = 224 / max(h, w)
    if f >= 1:
        return image
    return resize_bilinear(resize_aa(image, (max(8, round(h * f)), max(8, round(w * f)))), (h, w))


def augment_frontal(image: np.ndarray, rng: np.random.Generator, marks: tuple[str, ...] = HOSPITAL_MARKS) -> np.ndarray:
    """A frontal film as a hospital might send it: lines and tubes, ECG leads, text, borders, turned and cropped, 224 px.

    Each of ``marks`` is applied with probability one half (at least one is), so the gate
    learns that such films are still frontal chest X-rays.

    Args:
        image: (H, W) float32 in [0, 1].
        rng: the random generator (the draws, not global state, decide what is added).
        marks: which of :data:`HOSPITAL_MARKS` may be applied (default: all).

    Returns:
        (H, W) float32 in [0, 1]: same size as ``image``.
    """
    ops = {
        "tubes": _tubes,
        "ecg": _ecg,
        "text": _text,
        "border": _border,
        "turn": _turn,
        "small": _small,
    }
    unknown = sorted(set(marks) - set(ops))
    if unknown:
        raise ValueError(f"unknown marks {unknown}; known: {list(HOSPITAL_MARKS)}")
    chosen = [m for m in marks if rng.random() < 0.5] or [marks[int(rng.integers(len(marks)))]]
    out = np.asarray(image, np.float32)
    for m in (m for m in HOSPITAL_MARKS if m in chosen):
        out = ops[m](out, rng)
    return np.clip(out, 0, 1).astype(np.float32)
