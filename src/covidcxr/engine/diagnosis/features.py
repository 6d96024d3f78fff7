"""Stage-2 inputs of every labelled frontal image, computed once and cached.

Path of the data: frontal, labelled X-rays of every source -> stage 1 (lung mask and the
encoder's feature maps, one pass) -> severity scorer (lesion maps, extent, opacity, Brixia
zones) -> findings (:func:`covidcxr.infer.findings.finding_facts`) and lung-pooled features:

- ``lungenc``: the stage-1 encoder's deepest map averaged inside the lungs (1280);
- ``imagenet``: an ImageNet MobileNetV2 (``../shared/pretrained``, frozen) on the masked lung
  view (everything outside the lungs set to 0), its last map averaged inside the lungs (1280);
- ``findings``: the :data:`covidcxr.infer.findings.FACTS`.

With ``blackout`` the same numbers are computed again with the lungs set to 0 in the input
image (``True``: the shortcut audit, what is left when the lungs are gone), or with everything
but the lungs set to 0 (``"outside"``: what the lungs alone carry). The lung masks are those
of the intact image.

One ``.npz`` per (model sha256s, sample list, blackout) under the cache folder.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from ...infer.findings import finding_facts
from ...io import ImageReadError, normalize, read_image
from ...io.resize import resize_aa
from ...views import apply_view, lung_view
from .views import views_cache_dir

log = logging.getLogger(__name__)

VIEW_SIZE = 224
MARGIN = 0.1


def lung_pooled(fmap: np.ndarray | torch.Tensor, lungs: list[np.ndarray]) -> np.ndarray:
    """Feature maps (N, C, h, w) averaged inside each lung mask (resized to h x w); (N, C) float32.

    A mask with no lung on the map's grid falls back to the plain spatial mean.
    """
    fmap = np.asarray(fmap, np.float32)
    h, w = fmap.shape[-2:]
    out = np.empty(fmap.shape[:2], np.float32)
    for i, m in enumerate(lungs):
        weight = np.clip(resize_aa(np.asarray(m, np.float32), (h, w)), 0, 1)
        total = weight.sum()
        out[i] = (fmap[i] * weight).sum(axis=(1, 2)) / total if total > 1e-3 else fmap[i].mean(axis=(1, 2))
    return out


def imagenet_backbone(path: str | Path, sha256: str | None = None) -> torch.nn.Module:
    """timm ``mobilenetv2_100``, one input channel, ImageNet weights from ``path``, eval mode."""
    from ...models import create_model
    from ...models.pretrained import IMAGENET_MOBILENET_V2_SHA256, load_imagenet

    model = create_model("mobilenet_v2", in_chans=1, num_classes=3)
    load_imagenet(model, path, sha256 or IMAGENET_MOBILENET_V2_SHA256)
    return model.eval().to(memory_format=torch.channels_last)


@torch.inference_mode()
def view_features(backbone: torch.nn.Module, images: list[np.ndarray], masks: list[np.ndarray]) -> np.ndarray:
    """Lung-pooled last feature map of ``backbone`` on each image's masked lung view; (N, 1280)."""
    views = [lung_view(im, m, VIEW_SIZE, margin=MARGIN) for im, m in zip(images, masks)]
    batch = torch.from_numpy(normalize(np.stack([apply_view(v, lungs, "masked") for v, lungs in views])))
    fmap = backbone.forward_features(batch.contiguous(memory_format=torch.channels_last)).float().numpy()
    return lung_pooled(fmap, [lungs[0] for _, lungs in views])


def compute_features(
    samples: list[dict],
    segmenter,
    scorer,
    backbone,
    blackout: bool | str = False,
    batch_size: int = 16,
    progress: bool = True,
) -> dict:
    """Findings and pooled features of ``samples`` (unreadable images are dropped and logged).

    Returns:
        dict of ``findings`` (N, len(FACTS)), ``lungenc`` (N, 1280), ``imagenet`` (N, 1280),
        ``lung_area`` (N,), ``names`` (N,) ``dataset/filename``.
    """
    cols: dict[str, list] = {"findings": [], "lungenc": [], "imagenet": [], "lung_area": [], "names": []}
    if blackout not in (False, True, "outside"):
        raise ValueError(f"blackout must be False, True (the lungs) or 'outside', got {blackout!r}")
    what = {False: "", True: " (lungs blacked out)", "outside": " (all but the lungs blacked out)"}[blackout]
    bar = tqdm(total=len(samples), desc="stage-2 features" + what, unit="image", disable=not progress)
    for start in range(0, len(samples), batch_size):
        chunk, images = [], []
        for s in samples[start : start + batch_size]:
            try:
                images.append(read_image(s["path"]))
                chunk.append(s)
            except ImageReadError as err:
                log.warning("skipping %s", err)
        bar.update(len(samples[start : start + batch_size]))
        if not images:
            continue
        maps, x, encoder = segmenter.forward(images)
        masks = segmenter.masks(maps)
        if blackout:
            images = [im * (1 - m) if blackout is True else im * m for im, m in zip(images, masks)]
            _, x, encoder = segmenter.forward(images)
        sev = scorer.score(images, masks)
        cols["findings"].extend(finding_facts(r["severity"], r["lesions"], r["zones"]) for r in sev)
        cols["lungenc"].append(lung_pooled(encoder[-1], masks))
        if backbone is not None:  # None: no ImageNet block (a smoke run of a findings-only design)
            cols["imagenet"].append(view_features(backbone, images, masks))
        cols["lung_area"].extend(float(m.mean()) for m in masks)
        cols["names"].extend(f"{s['dataset']}/{s['filename']}" for s in chunk)
    bar.close()
    return {
        "findings": np.array(cols["findings"], np.float32).reshape(
            -1, len(cols["findings"][0]) if cols["findings"] else 0
        ),
        "lungenc": np.concatenate(cols["lungenc"]) if cols["lungenc"] else np.zeros((0, 0), np.float32),
        "imagenet": np.concatenate(cols["imagenet"]) if cols["imagenet"] else np.zeros((0, 0), np.float32),
        "lung_area": np.array(cols["lung_area"], np.float32),
        "names": np.array(cols["names"]),
    }


def cached_features(
    samples: list[dict],
    segmenter,
    scorer,
    backbone,
    backbone_sha256: str,
    blackout: bool | str = False,
    progress: bool = True,
) -> dict:
    """:func:`compute_features`, kept as one ``.npz`` per setting and sample list."""
    setting = [
        segmenter.spec.sha256,
        scorer.lesion_spec.sha256,
        scorer.head_spec.sha256,
        backbone_sha256,
        blackout,
        VIEW_SIZE,
        MARGIN,
    ]
    key = hashlib.sha256(
        json.dumps([*setting, sorted(f"{s['dataset']}/{s['filename']}" for s in samples)]).encode()
    ).hexdigest()[:16]
    path = views_cache_dir().parent / "stage2" / f"{key}.npz"
    if path.is_file():
        with np.load(path) as data:
            return {k: data[k] for k in data.files}
    out = compute_features(samples, segmenter, scorer, backbone, blackout=blackout, progress=progress)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path.with_suffix(".tmp.npz"), **out)
    path.with_suffix(".tmp.npz").replace(path)
    return out
