"""The whole pipeline on files: read, gate, segment, diagnose, explain, report.

For each input ``predict_files`` writes ``<stem>_lungs.png`` (the input's pixel size),
``<stem>_heatmap.png`` (Grad-CAM of the predicted class, 8-bit, the input's pixel size),
``<stem>_report.png`` and one line of ``predictions.jsonl``; an input it cannot read or
refuses gets a line with ``error`` instead.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from .batch import collect_inputs, read_batches, save_mask_png, unique_stems
from .data.classification import CLASSES
from .gate import blank_reason, refusal
from .models import load_weights
from .pipeline import Diagnoser, LungSegmenter
from .report import save_report
from .saliency import GradCam, lung_share, to_image

log = logging.getLogger(__name__)

#: Lung masks covering less (more) of the image than this get a warning.
LUNG_AREA_RANGE = (0.08, 0.75)
MIN_SIDE_WARN = 256


class Pipeline:
    """Stage 1, the gate, stage 2 and Grad-CAM, loaded from weights specs (default: shipped)."""

    def __init__(self, segmenter: LungSegmenter, diagnoser: Diagnoser, gate=None, gate_spec=None, use_gate: bool = True, saliency: bool = True) -> None:
        self.segmenter, self.diagnoser = segmenter, diagnoser
        self.gate, self.gate_spec, self.use_gate = gate, gate_spec, use_gate
        self.cam = GradCam(diagnoser.model, diagnoser.spec.architecture) if saliency else None

    @classmethod
    def load(cls, lungs: str | None = None, diagnosis: str | None = None, gate: str | None = None, use_gate: bool = True, saliency: bool = True) -> Pipeline:
        gate_model, gate_spec = load_weights(gate, kind="gate")
        return cls(LungSegmenter.from_spec(lungs), Diagnoser.from_spec(diagnosis), gate_model, gate_spec, use_gate, saliency)

    @property
    def models(self) -> dict:
        """Name and sha256 of every weight file used."""
        specs = {"lungs": self.segmenter.spec, "diagnosis": self.diagnoser.spec, "gate": self.gate_spec}
        return {k: {"name": s.name, "sha256": s.sha256} for k, s in specs.items() if s is not None}

    def run(self, images: list[np.ndarray]) -> list[dict]:
        """Results per image: ``refusal`` (str or None), ``mask``, ``probabilities``, ``heat``, ``warnings``…"""
        out: list[dict] = [{"warnings": [], "refusal": blank_reason(im)} for im in images]
        todo = [i for i, r in enumerate(out) if r["refusal"] is None]
        if not todo:
            return out
        masks, feats = self.segmenter.segment([images[i] for i in todo], features=True)
        p_frontal = self.gate.probability(feats, masks) if self.gate is not None else np.ones(len(todo))
        keep = []
        for j, i in enumerate(todo):
            res = out[i]
            res["mask"], res["gate_probability"] = masks[j], float(p_frontal[j])
            why = refusal(float(p_frontal[j]), self.gate_spec.threshold) if self.gate is not None else None
            if why and self.use_gate:
                res["refusal"] = why
                continue
            if why:
                res["warnings"].append(f"gate skipped (--no-gate): {why.split(';')[0]}")
            res["warnings"].extend(_warnings(images[i], masks[j]))
            keep.append(i)
        if not keep:
            return out
        views = [self.diagnoser.view(images[i], out[i]["mask"]) for i in keep]
        batch = self.diagnoser.inputs(views)
        probs = self.diagnoser.probabilities(batch)
        maps = self.cam(batch, probs.argmax(1).tolist()) if self.cam is not None else [None] * len(keep)
        for i, p, m in zip(keep, probs, maps):
            res = out[i]
            res["probabilities"] = {c: float(v) for c, v in zip(CLASSES, p)}
            res["prediction"] = CLASSES[int(p.argmax())]
            if m is not None:
                res["heat"] = to_image(m, res["mask"], self.diagnoser.spec.margin, whole=self.diagnoser.spec.lung_input == "whole")
                res["saliency_in_lungs"] = lung_share(res["heat"], res["mask"])
        return out


def _warnings(image: np.ndarray, mask: np.ndarray) -> list[str]:
    h, w = image.shape
    out = []
    area = float(mask.mean())
    if not LUNG_AREA_RANGE[0] <= area <= LUNG_AREA_RANGE[1]:
        out.append(f"the lungs found cover {area:.0%} of the image (expected {LUNG_AREA_RANGE[0]:.0%}-{LUNG_AREA_RANGE[1]:.0%}); check the lung outline before trusting the diagnosis")
    if min(h, w) < MIN_SIDE_WARN:
        out.append(f"low resolution ({w}x{h} px); the models read lungs at 224-256 px, fine detail is lost")
    return out


def predict_files(inputs: list[str], out_dir: str | Path, pipeline: Pipeline, batch_size: int = 8, report: bool = True, progress: bool = True) -> Iterator[dict]:
    """Run the pipeline on files and folders; yields each ``predictions.jsonl`` row as it is written."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files, errors = collect_inputs(inputs)
    stems = unique_stems(files)
    models = pipeline.models
    with open(out / "predictions.jsonl", "w") as fh:

        def emit(row: dict) -> dict:
            fh.write(json.dumps(row) + "\n")
            fh.flush()
            return row

        for err in errors:
            yield emit({"path": err.split(": ")[0], "error": err})
        bar = tqdm(total=len(files), desc="predict", unit="image", disable=not progress)
        for batch in read_batches(files, batch_size):
            good = [(i, im) for i, im, _ in batch if im is not None]
            for i, _, err in batch:
                if err is not None:
                    yield emit({"path": str(files[i]), "error": err})
            results = pipeline.run([im for _, im in good])
            for (i, image), res in zip(good, results):
                yield emit(_write_outputs(files[i], stems[i], image, res, out, models, report))
            bar.update(len(batch))
        bar.close()


def _write_outputs(path: Path, stem: str, image: np.ndarray, res: dict, out: Path, models: dict, report: bool) -> dict:
    if res.get("refusal"):
        return {"path": str(path), "error": f"{path}: {res['refusal']}"}
    row = {"path": str(path), "probabilities": res["probabilities"], "prediction": res["prediction"]}
    row["lung_mask"] = str(out / f"{stem}_lungs.png")
    save_mask_png(res["mask"], row["lung_mask"])
    heat = res.get("heat")
    row["heatmap"] = None
    if heat is not None:
        row["heatmap"] = str(out / f"{stem}_heatmap.png")
        from PIL import Image

        Image.fromarray((heat * 255 + 0.5).astype(np.uint8)).save(row["heatmap"], compress_level=1)
    row["report"] = None
    if report:
        row["report"] = str(out / f"{stem}_report.png")
        title = f"{path.name}: {res['prediction']} ({res['probabilities'][res['prediction']]:.0%})"
        save_report(row["report"], image, res["mask"], res["probabilities"], heat, title=title, warnings=res["warnings"], lung_share=res.get("saliency_in_lungs"))
    row["model"] = models
    row["warnings"] = res["warnings"]
    row["lung_area"] = round(float(res["mask"].mean()), 4)
    row["gate_probability"] = round(res.get("gate_probability", float("nan")), 4)
    if "saliency_in_lungs" in res:
        row["saliency_in_lungs"] = round(float(res["saliency_in_lungs"]), 4)
    return row

