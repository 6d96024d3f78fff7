"""Grad-CAM of two diagnosis models side by side on the same test X-rays.

Usage:
    python scripts/compare_saliency.py A.json B.json --out saliency_compare.png [--per-source 2]

For the first ``--per-source`` test-split images of each source (sorted by file name): the
X-ray with its stage-1 lung outline, then each model's Grad-CAM of its predicted class,
titled with the prediction and the share of the heat inside the lungs.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import matplotlib
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))  # the checkout under test

from covidcxr.data import load_records  # noqa: E402
from covidcxr.data.classification import CLASSES, classification_samples  # noqa: E402
from covidcxr.io import read_image  # noqa: E402
from covidcxr.pipeline import Diagnoser, LungSegmenter  # noqa: E402
from covidcxr.views import lung_share, to_image  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("weights", nargs=2, help="two diagnosis weights specs (JSON)")
    ap.add_argument("--names", nargs=2, default=None, help="column titles (default: the spec files' folder names)")
    ap.add_argument("--data-root")
    ap.add_argument("--per-source", type=int, default=2)
    ap.add_argument("--out", default="saliency_compare.png")
    args = ap.parse_args()
    samples, _ = classification_samples(load_records(args.data_root), "test")
    picked = []
    for source in sorted({s["dataset"] for s in samples}):
        picked += sorted((s for s in samples if s["dataset"] == source), key=lambda s: s["filename"])[: args.per_source]
    segmenter = LungSegmenter.from_spec()
    models = [Diagnoser.from_spec(w) for w in args.weights]
    names = args.names or [Path(w).parent.parent.name for w in args.weights]
    matplotlib.use("Agg")  # a script that only writes a file
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(picked), 3, figsize=(9, 3 * len(picked)))
    for row, s in zip(np.atleast_2d(axes), picked):
        image = read_image(s["path"])
        mask = segmenter.segment([image])[0]
        row[0].imshow(image, cmap="gray")
        row[0].contour(mask, levels=[0.5], colors="lime", linewidths=0.8)
        row[0].set_title(f"{s['dataset']}\n{s['label_name']}", fontsize=8)
        for ax, name, model in zip(row[1:], names, models):
            batch = model.inputs([model.view(image, mask)])
            probs = model.probabilities(batch)[0]
            target = int(probs.argmax())
            heat = to_image(model.saliency(batch, [target])[0], mask, model.spec.margin)
            ax.imshow(image, cmap="gray")
            ax.imshow(heat, cmap="jet", alpha=0.45 * (heat > 0.05))
            ax.contour(mask, levels=[0.5], colors="white", linewidths=0.6)
            ax.set_title(
                f"{name}: {CLASSES[target]} {probs[target]:.0%}\nin lungs {lung_share(heat, mask):.0%}", fontsize=8
            )
        for ax in row:
            ax.axis("off")
    fig.tight_layout()
    fig.savefig(args.out, dpi=90)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
