"""Does a 224 px copy of a film read as less diseased than the film? (a measurement, nothing is fitted)

covid19-radiography holds its films at 224 px only; its LOSO sensitivity at the operating point
(0.423) may then understate what the model does on full-size films. This reads the same films twice
with the shipped chain (gate off, no heat map): as stored and shrunk so that the
shorter side is 224 px (area resampling), and reports P(abnormal) and the share read as disease at
the shipped operating point. Hannover COVID-19 films (all 161) and NIH-14 "No Finding" films (the
first 160 by file name) stand for the two classes. No model, threshold or rule is changed by it.

Usage:
    python docs/results/resolution/run.py --out docs/results/resolution
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from covidcxr import Predictor, read_image
from covidcxr.data import load_records


def shrink(image: np.ndarray, side: int = 224) -> np.ndarray:
    h, w = image.shape
    s = side / min(h, w)
    size = (max(1, round(w * s)), max(1, round(h * s)))
    return np.asarray(Image.fromarray(image.astype(np.float32), "F").resize(size, Image.Resampling.BOX), np.float32)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="docs/results/resolution")
    ap.add_argument("--n-normal", type=int, default=160)
    args = ap.parse_args()
    records = sorted(load_records(), key=lambda r: r["filename"])  # the data root: --data-root's rules
    groups = {
        "hannover COVID-19": [r["path"] for r in records if r["dataset"] == "hannover"],
        "nih-chestxray14 No Finding": [
            r["path"] for r in records if r["dataset"] == "nih-chestxray14" and r["finding"] == "No Finding"
        ][: args.n_normal],
    }
    pipe = Predictor.load(use_gate=False, saliency=False)
    threshold = pipe.diagnoser.threshold
    out: dict = {"threshold": threshold, "groups": {}}
    for name, paths in groups.items():
        p = {"stored": [], "224 px": []}
        sides = []
        for path in tqdm(paths, desc=name, unit="film"):
            image = read_image(path)
            sides.append(min(image.shape))
            for kind, im in (("stored", image), ("224 px", shrink(image))):
                (res,) = pipe.run([im])
                p[kind].append(1 - res.probabilities["No finding"])
        row = {"n": len(paths), "median shorter side (stored)": float(np.median(sides))}
        for kind, v in p.items():
            v = np.array(v)
            row[kind] = {"median P(abnormal)": float(np.median(v)), "read as disease": float((v >= threshold).mean())}
        row["224 px minus stored, median"] = float(np.median(np.array(p["224 px"]) - np.array(p["stored"])))
        out["groups"][name] = row
        print(name, json.dumps(row))
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "resolution.json").write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
