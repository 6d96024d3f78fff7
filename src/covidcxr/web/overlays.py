"""What the page draws: the image as read, shrunk, and transparent layers over it (lungs, heat map, lesions, zones)."""

from __future__ import annotations

import base64
from io import BytesIO

import numpy as np
from PIL import Image

from ..infer import Result
from ..infer.zones import zone_borders
from ..io import png_bytes, rgb_png
from ..plots import LESION_COLORS  # the report's colours

#: Longer side of the image and overlays the page draws, at most.
DISPLAY_SIDE = 1024
#: Overlay colours (RGB): lung outline cyan, lesions ground-glass yellow and consolidation red, zone borders white.
LUNG_COLOR = (0, 229, 255)
ZONE_COLOR = (255, 255, 255)

#: Heat map: values below this are not drawn; opacity grows with the value up to HEAT_ALPHA at 1.
HEAT_MIN = 0.15
HEAT_ALPHA = 0.75
#: Opacity of the lesion colours.
LESION_ALPHA = 0.55


def png_field(data: bytes) -> dict:
    """A PNG file as the API sends it: ``{"png_base64": ...}``."""
    return {"png_base64": base64.b64encode(data).decode("ascii")}


def _resized(array: np.ndarray, size: tuple[int, int], resample: Image.Resampling) -> np.ndarray:
    """``array`` (H, W) stretched to ``size`` (width, height): bool and uint8 as uint8, floats as float32."""
    if array.shape == (size[1], size[0]):
        return array
    if array.dtype == bool:
        array = array.astype(np.uint8)
    img = Image.fromarray(array if array.dtype == np.uint8 else np.asarray(array, np.float32))
    return np.asarray(img.resize(size, resample))


def _edges(mask: np.ndarray, width: int) -> np.ndarray:
    from scipy import ndimage

    return mask & ~ndimage.binary_erosion(mask, iterations=width)


def _rgba(shape: tuple[int, int]) -> np.ndarray:
    return np.zeros((*shape, 4), np.uint8)


def overlays(result: Result, size: tuple[int, int]) -> dict[str, np.ndarray | None]:
    """The page's layers of a reading, RGBA (h, w, 4) uint8 at ``size`` (width, height): None where there is nothing to draw.

    The lung mask and the heat map are at the image's size; lesions and zones on the lung
    model's grid, stretched to the image (nearest neighbour), as the report draws them.
    """
    shape = (size[1], size[0])
    line = max(1, max(size) // 400)  # about 2 px on a 1024-px image
    out: dict[str, np.ndarray | None] = {"lungs": _rgba(shape), "heatmap": None, "lesions": None, "zones": None}
    lungs = _resized(result.lung_mask, size, Image.Resampling.NEAREST) > 0
    out["lungs"][_edges(lungs, line)] = (*LUNG_COLOR, 255)
    if result.heatmap is not None:
        from matplotlib import colormaps

        heat = np.clip(_resized(result.heatmap, size, Image.Resampling.BILINEAR), 0, 1)
        rgba = colormaps["jet"](heat, bytes=True)
        rgba[..., 3] = np.where(heat < HEAT_MIN, 0, np.round(heat * HEAT_ALPHA * 255)).astype(np.uint8)
        out["heatmap"] = rgba
    if result.lesions is not None:
        rgba = _rgba(shape)
        for k, lesion in enumerate(result.lesions):  # later classes (consolidation) drawn over earlier ones
            rgba[_resized(lesion, size, Image.Resampling.NEAREST) > 0] = (
                *LESION_COLORS[k % len(LESION_COLORS)],
                round(LESION_ALPHA * 255),
            )
        out["lesions"] = rgba
    if result.zones is not None:
        from scipy import ndimage

        z = _resized(np.asarray(result.zones, np.uint8), size, Image.Resampling.NEAREST)
        border = zone_borders(z)
        if line > 1:
            border = ndimage.binary_dilation(border, iterations=line // 2)
        rgba = _rgba(shape)
        rgba[border] = (*ZONE_COLOR, 255)
        out["zones"] = rgba
    return out


def display_pngs(result: Result, image: np.ndarray) -> dict:
    """``image`` (the grey X-ray as read, shrunk to :data:`DISPLAY_SIDE`) and ``overlays`` at its size, inline."""
    grey = (np.clip(image, 0, 1) * 255 + 0.5).astype(np.uint8)
    png = png_bytes(rgb_png, grey, max_side=DISPLAY_SIDE)
    with Image.open(BytesIO(png)) as shown:  # the header only: the size rgb_png shrank it to
        size = shown.size
    layers = overlays(result, size)
    return {
        "image": png_field(png),
        "overlays": {
            k: None if v is None else png_field(png_bytes(rgb_png, v, max_side=DISPLAY_SIDE)) for k, v in layers.items()
        },
    }
