"""Figures a person would rather look at than read: curves, overlays, metric summaries."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def pyplot():
    """pyplot, headless (Agg) unless the session already chose a backend.

    A choice is ``MPLBACKEND`` or pyplot already imported: Jupyter's inline backend must
    survive, or every figure a notebook shows after a package plot would be lost. The
    package's figures are saved and closed, never shown, so any backend draws them.
    """
    import os
    import sys

    import matplotlib

    if not os.environ.get("MPLBACKEND") and "matplotlib.pyplot" not in sys.modules:
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


_METRIC_NAMES = {
    "val_dice": ("Dice", "Validation Dice", "Dice + BCE loss"),
    "val_auroc": ("macro AUROC", "Validation macro AUROC", "cross-entropy"),
}


def learning_curve(history: list[dict], path: str | Path, metric: str = "val_dice") -> None:
    """Training/validation loss and a validation metric (``val_dice`` or ``val_auroc``) per epoch."""
    ylabel, title, loss_name = _METRIC_NAMES[metric]
    plt = pyplot()
    epochs = [h["epoch"] for h in history]
    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.5))
    a.plot(epochs, [h["train_loss"] for h in history], label="train")
    a.plot(epochs, [h["val_loss"] for h in history], label="validation")
    a.set(xlabel="epoch", ylabel=loss_name, title="Loss")
    a.legend()
    b.plot(epochs, [h[metric] for h in history], color="C2")
    b.set(xlabel="epoch", ylabel=ylabel, title=title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def overlay(image: np.ndarray, mask: np.ndarray, reference: np.ndarray | None = None) -> np.ndarray:
    """RGB uint8 image with the predicted mask tinted green and its outline (and a reference outline in red).

    Args:
        image: (H, W) float in [0, 1].
        mask: (H, W) bool prediction.
        reference: optional (H, W) bool mask to outline in red.
    """
    from scipy import ndimage

    rgb = np.repeat((np.clip(image, 0, 1) * 255).astype(np.uint8)[..., None], 3, axis=2).astype(np.float32)
    m = mask.astype(bool)
    rgb[m] = rgb[m] * 0.7 + np.array([0, 255, 0]) * 0.3
    edge = m & ~ndimage.binary_erosion(m, iterations=max(1, min(image.shape) // 256))
    rgb[edge] = (0, 255, 0)
    if reference is not None:
        r = reference.astype(bool)
        rgb[r & ~ndimage.binary_erosion(r, iterations=max(1, min(image.shape) // 256))] = (255, 0, 0)
    return rgb.astype(np.uint8)


def segmentation_overlays(model, dataset, path: str | Path, n: int = 8) -> None:
    """Predictions (green) and manual masks (red outline) on the first ``n`` items of ``dataset``."""
    import torch

    from .models import eval_mode

    plt = pyplot()
    n = min(n, len(dataset))
    if n == 0:
        return
    cols = min(n, 4)
    rows = -(-n // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3 * cols, 3 * rows), squeeze=False)
    idx = np.linspace(0, len(dataset) - 1, n).astype(int)
    with eval_mode(model), torch.inference_mode():
        for ax, i in zip(axes.flat, idx):
            item = dataset[int(i)]
            pred = model(item["image"][None]).float()[0, 0] > 0
            img = dataset.images[int(i)][0].numpy()
            ax.imshow(overlay(img, pred.numpy(), (item["mask"] == 1).numpy()))
            ax.set_title(f"{item['mask_source']}", fontsize=8)
    for ax in axes.flat:
        ax.axis("off")
    fig.suptitle("green: model, red outline: manual mask", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


#: Lesion overlay colours: ground-glass yellow, consolidation red.
LESION_COLORS = ((255, 200, 0), (230, 30, 30))


def lesion_overlay(image: np.ndarray, lesions: np.ndarray, lungs: np.ndarray | None = None) -> np.ndarray:
    """RGB uint8: lesion classes tinted (see :data:`LESION_COLORS`) over the X-ray, lung outline in cyan."""
    from scipy import ndimage

    rgb = np.repeat((np.clip(image, 0, 1) * 255)[..., None], 3, axis=2).astype(np.float32)
    for k, m in enumerate(lesions):
        rgb[m] = rgb[m] * 0.55 + np.array(LESION_COLORS[k % len(LESION_COLORS)]) * 0.45
    if lungs is not None:
        rgb[lungs & ~ndimage.binary_erosion(lungs, iterations=max(1, min(image.shape) // 256))] = (0, 229, 255)
    return rgb.astype(np.uint8)


def lesion_examples(examples: list[tuple], names: tuple[str, ...], path: str | Path) -> None:
    """Rows of (image, radiologists' lesions, model lesions, lungs): marked vs out-of-fold prediction."""
    plt = pyplot()
    if not examples:
        return
    fig, axes = plt.subplots(len(examples), 2, figsize=(6, 3 * len(examples)), squeeze=False)
    for row, (image, truth, pred, lungs) in zip(axes, examples):
        row[0].imshow(lesion_overlay(image, truth, lungs))
        row[1].imshow(lesion_overlay(image, pred, lungs))
    axes[0, 0].set_title("radiologists", fontsize=9)
    axes[0, 1].set_title("model (out of fold)", fontsize=9)
    for ax in axes.flat:
        ax.axis("off")
    fig.suptitle(" / ".join(f"{n}: {c}" for n, c in zip(names, ("yellow", "red"))), fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def severity_scatter(truth: dict[str, np.ndarray], predicted: dict[str, np.ndarray], path: str | Path) -> None:
    """Predicted (mean over the splits an image was held out in) against the raters' score, one panel per score."""
    plt = pyplot()
    fig, axes = plt.subplots(1, len(truth), figsize=(3.6 * len(truth), 3.6), squeeze=False)
    for ax, name in zip(axes[0], truth):
        y, p = np.asarray(truth[name], float), np.asarray(predicted[name], float)
        hi = max(y.max(), p.max()) * 1.05 + 1e-6
        ax.plot([0, hi], [0, hi], color="0.6", lw=1)
        ax.scatter(y, p, s=12, alpha=0.7)
        ax.set(
            xlim=(0, hi),
            ylim=(0, hi),
            xlabel="raters",
            ylabel="model, mean over the splits holding it out",
            title=f"{name.replace('_', ' ')}\n(MAE of the averaged prediction {np.abs(y - p).mean():.2f})",
        )
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
