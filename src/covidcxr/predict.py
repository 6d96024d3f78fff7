"""The whole pipeline on files: read, gate, segment, diagnose, score severity, explain, report.

For each input ``predict_files`` writes ``<stem>_lungs.png`` (the input's pixel size),
``<stem>_heatmap.png`` (Grad-CAM of the predicted class, 8-bit, the input's pixel size),
``<stem>_report.png`` and one line of ``predictions.jsonl``; an input it cannot read or
refuses gets a line with ``error`` instead.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator, Sequence
from itertools import chain
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from .batch import (
    Done,
    RunCounts,
    drop_error_rows,
    expand_inputs,
    read_batches,
    read_predictions,
    save_mask_png,
    trim_heap,
    unique_stems,
)
from .findings import finding_facts, findings_summary
from .gate import blank_reason, gate_refusal, pooled_features, refusal_reason
from .report import save_report
from .severity import SeverityScorer
from .specs import source_sha256
from .views import lesion_evidence, lung_share, to_image

BACKENDS = ("torch", "onnxruntime")

log = logging.getLogger(__name__)

#: Lung masks covering less (more) of the image than this get a warning.
LUNG_AREA_RANGE = (0.08, 0.75)
MIN_SIDE_WARN = 256


class Pipeline:
    """Stage 1, the gate, stage 2, severity and saliency, loaded from weights specs (default: shipped).

    The components are duck-typed so that both backends fit: PyTorch (:mod:`covidcxr.pipeline`)
    and onnxruntime (:mod:`covidcxr.runtime`, no PyTorch import).

    Args:
        segmenter: ``forward(images) -> (maps, x, encoder)``, ``masks(maps)``, ``spec``.
        diagnoser: ``view``, ``inputs``, ``probabilities``, ``saliency(batch, targets)``, ``spec``.
        gate: ``probability(features, masks)`` (None: no gate); gate_spec: its spec.
        severity: a :class:`covidcxr.severity.SeverityScorer` reading the segmenter's encoder, or None.
    """

    def __init__(
        self,
        segmenter,
        diagnoser,
        gate=None,
        gate_spec=None,
        use_gate: bool = True,
        saliency: bool = True,
        severity: SeverityScorer | None = None,
        show_severity: bool = True,
    ) -> None:
        if getattr(diagnoser, "reads_facts", False) and severity is None:
            raise ValueError(
                f"diagnosis model {diagnoser.spec.name} reads the lesion and severity findings; load a severity scorer with it"
            )
        self.segmenter, self.diagnoser = segmenter, diagnoser
        self.show_severity = show_severity
        self.gate, self.gate_spec, self.use_gate = gate, gate_spec, use_gate
        self.saliency = saliency
        if severity is not None and severity.lesion_spec.lung_weights != source_sha256(segmenter.spec):
            raise ValueError(
                f"the lesion weights read the encoder of lung model {severity.lesion_spec.lung_weights[:12]}…, not of {segmenter.spec.sha256[:12]}… "
                "(--lung-weights); pass matching --lesion-weights or --no-severity"
            )
        self.severity = severity

    @classmethod
    def load(
        cls,
        lungs: str | None = None,
        diagnosis: str | None = None,
        gate: str | None = None,
        use_gate: bool = True,
        saliency: bool = True,
        severity: bool = True,
        lesions: str | None = None,
        severity_head: str | None = None,
        backend: str = "torch",
        onnx_dir: str | None = None,
    ) -> Pipeline:
        """Every model from its spec. ``backend="onnxruntime"`` reads the ONNX files in ``onnx_dir``
        (``covidcxr export onnx``) instead, and imports no PyTorch."""
        if backend == "onnxruntime":
            from .runtime import load_components

            segmenter, diagnoser, gate_model, gate_spec, scorer = load_components(onnx_dir, severity=True)
            return cls(segmenter, diagnoser, gate_model, gate_spec, use_gate, saliency, scorer, show_severity=severity)
        if backend != "torch":
            raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
        try:
            from .models import load_weights
            from .pipeline import LungSegmenter, load_diagnoser
        except ImportError as err:
            raise RuntimeError(
                f"the PyTorch backend needs the torch extra ({err.name} is missing): pip install 'covidcxr[torch]', or use --backend onnxruntime"
            ) from err
        gate_model, gate_spec = load_weights(gate, kind="gate")
        diagnoser = load_diagnoser(diagnosis)
        # A diagnosis that reads the findings needs the scorer; without --severity only the scores are left out.
        needs = severity or getattr(diagnoser, "reads_facts", False)
        scorer = SeverityScorer.from_spec(lesions, severity_head) if needs else None
        return cls(
            LungSegmenter.from_spec(lungs),
            diagnoser,
            gate_model,
            gate_spec,
            use_gate,
            saliency,
            scorer,
            show_severity=severity,
        )

    @property
    def models(self) -> dict:
        """Name and sha256 of every weight file used."""
        specs = {"lungs": self.segmenter.spec, "diagnosis": self.diagnoser.spec, "gate": self.gate_spec}
        if self.severity is not None and (self.show_severity or getattr(self.diagnoser, "reads_facts", False)):
            specs |= {"lesions": self.severity.lesion_spec, "severity": self.severity.head_spec}
        return {k: {"name": s.name, "sha256": s.sha256} for k, s in specs.items() if s is not None}

    def run(self, images: list[np.ndarray]) -> list[dict]:
        """Results per image: ``refusal`` (str or None), ``mask``, ``probabilities``, ``heat``, ``warnings``…"""
        out: list[dict] = [{"warnings": [], "refusal": blank_reason(im)} for im in images]
        todo = [i for i, r in enumerate(out) if r["refusal"] is None]
        if not todo:
            return out
        maps, x, encoder = self.segmenter.forward([images[i] for i in todo])
        masks = self.segmenter.masks(maps)
        p_frontal = (
            self.gate.probability(pooled_features(encoder), masks) if self.gate is not None else np.ones(len(todo))
        )
        keep = []
        for j, i in enumerate(todo):
            res = out[i]
            res["mask"], res["gate_probability"] = masks[j], float(p_frontal[j])
            why = (
                gate_refusal(float(p_frontal[j]), images[i], masks[j], self.gate_spec)
                if self.gate is not None
                else None
            )
            if why and self.use_gate:
                res["refusal"] = why
                continue
            if why:
                res["warnings"].append(f"gate skipped (--no-gate): {why.split(';')[0]}")
            res["warnings"].extend(_warnings(images[i], masks[j]))
            keep.append(i)
        if not keep:
            return out
        if self.severity is not None:
            rows = [todo.index(i) for i in keep]
            for i, sev in zip(
                keep, self.severity.score(x[rows], [f[rows] for f in encoder], [out[i]["mask"] for i in keep])
            ):
                out[i].update(sev)
        views = [self.diagnoser.view(images[i], out[i]["mask"]) for i in keep]
        facts = (
            [finding_facts(out[i]["severity"], out[i]["lesions"], out[i]["zones"]) for i in keep]
            if self.severity is not None
            else None
        )
        batch = (
            self.diagnoser.inputs(views, facts=facts)
            if getattr(self.diagnoser, "reads_facts", False)
            else self.diagnoser.inputs(views)
        )
        probs = self.diagnoser.probabilities(batch)
        maps = self.diagnoser.saliency(batch, probs.argmax(1).tolist()) if self.saliency else [None] * len(keep)
        targets = list(self.diagnoser.spec.targets)
        for j, (i, p, m) in enumerate(zip(keep, probs, maps)):
            res = out[i]
            res["probabilities"] = {c: float(v) for c, v in zip(targets, p)}
            res["prediction"] = targets[int(p.argmax())]
            if facts is not None:
                res["findings"] = findings_summary(res["probabilities"], facts[j])
            if m is not None:
                res["saliency_method"] = getattr(self.diagnoser, "saliency_method", "Grad-CAM")
                res["heat"] = to_image(
                    m, res["mask"], self.diagnoser.spec.margin, whole=self.diagnoser.spec.lung_input == "whole"
                )
                res["saliency_in_lungs"] = lung_share(res["heat"], res["mask"])
            elif (
                self.saliency and "lesions" in res
            ):  # a findings-only diagnosis: its evidence is the lesions it measured
                res["saliency_method"] = "lesion evidence"
                res["heat"] = lesion_evidence(res["lesions"], res["mask"])
                res["saliency_in_lungs"] = lung_share(res["heat"], res["mask"])
            if not self.show_severity:  # computed for the diagnosis only
                for key in ("severity", "lesions", "zones"):
                    res.pop(key, None)
        return out


def _warnings(image: np.ndarray, mask: np.ndarray) -> list[str]:
    h, w = image.shape
    out = []
    area = float(mask.mean())
    if not LUNG_AREA_RANGE[0] <= area <= LUNG_AREA_RANGE[1]:
        out.append(
            f"the lungs found cover {area:.0%} of the image (expected {LUNG_AREA_RANGE[0]:.0%}-{LUNG_AREA_RANGE[1]:.0%}); check the lung outline before trusting the diagnosis"
        )
    if min(h, w) < MIN_SIDE_WARN:
        out.append(f"low resolution ({w}x{h} px); the models read lungs at 224-256 px, fine detail is lost")
    return out


def predict_files(
    inputs: list[str],
    out_dir: str | Path,
    pipeline: Pipeline,
    batch_size: int = 8,
    report: bool = True,
    progress: bool = True,
    *,
    csv_files: Sequence[str | Path] = (),
    workers: int = 0,
    overwrite: bool = False,
    retry_errors: bool = False,
    counts: RunCounts | None = None,
) -> Iterator[dict]:
    """Run the pipeline on files, folders, glob patterns and CSV lists; yields each new row as it is written.

    Resumable: rows are appended to ``OUT/predictions.jsonl`` and inputs that already have a row
    there are skipped, those whose row is an error too unless ``retry_errors`` (their error rows
    are then removed and the inputs run again). An output stem, once written, stays with its
    input, and the same input list always gives the same stems, so a resumed run names its files
    as one uninterrupted run would have.

    Memory does not grow with the number of inputs: only the paths (with their output stems) and
    the paths already done are held; decoded images live for one batch and rows go to disk at once.

    Args:
        inputs: files, folders and glob patterns (see :func:`covidcxr.batch.expand_inputs`).
        out_dir: output folder.
        pipeline: the loaded models.
        batch_size: images decoded and run together.
        report: write the report PNGs (slow).
        progress: show a progress bar.
        csv_files: CSV files listing more inputs (see :func:`covidcxr.batch.read_csv_paths`).
        workers: processes decoding images in parallel (0: in this process); models always run here.
        overwrite: start ``predictions.jsonl`` afresh instead of appending to it.
        retry_errors: run again the inputs whose earlier row is an error.
        counts: filled in as the run goes (inputs, skipped, done, failed), for a summary.

    Yields:
        Each row appended to ``predictions.jsonl``: results, or ``path`` and ``error``.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    jsonl = out / "predictions.jsonl"
    counts = counts if counts is not None else RunCounts()
    files, missing = expand_inputs(inputs, csv_files)
    done = Done() if overwrite else read_predictions(jsonl)
    models = pipeline.models
    if done.models - {json.dumps(models, sort_keys=True)}:
        raise ValueError(
            f"{jsonl} holds rows made by other weights or options (--no-severity?) than this run's {sorted(models)}; "
            "pass the same ones to resume, or --overwrite to start afresh, or another --out"
        )
    if retry_errors and done.errors:
        retry = {p for p in chain(files, (raw for raw, _ in missing)) if p in done.errors}
        drop_error_rows(jsonl, retry)
        done.errors -= retry
    stems = unique_stems(files, done.stems)  # over the full list, so names do not depend on what was done
    todo = [i for i, f in enumerate(files) if f not in done]
    counts.inputs = len(files) + len(missing)
    counts.skipped = counts.inputs - len(todo) - sum(raw not in done for raw, _ in missing)
    counts.skipped_errors = sum(p in done.errors for p in chain(files, (raw for raw, _ in missing)))
    if counts.skipped:
        log.info(
            "%s: %d of %d inputs already done, skipped (%d with errors%s)",
            jsonl,
            counts.skipped,
            counts.inputs,
            counts.skipped_errors,
            "; --retry-errors runs them again" if counts.skipped_errors else "",
        )
    bar = tqdm(total=len(files), initial=len(files) - len(todo), desc="predict", unit="image", disable=not progress)
    with open(jsonl, "w" if overwrite else "a") as fh, bar:

        def emit(row: dict) -> dict:
            fh.write(json.dumps(row) + "\n")
            fh.flush()  # a killed run loses at most the row being written
            if "error" in row:
                counts.failed += 1
            else:
                counts.done += 1
            bar.set_postfix(done=counts.done, failed=counts.failed, refresh=False)
            return row

        for raw, msg in missing:
            if raw not in done:
                yield emit({"path": raw, "error": f"{raw}: {msg}"})
        for batch in read_batches([files[i] for i in todo], batch_size, workers):
            for j, _, err in batch:
                if err is not None:
                    yield emit({"path": files[todo[j]], "error": err})
            good = [(todo[j], im) for j, im, _ in batch if im is not None]
            results = pipeline.run([im for _, im in good]) if good else []
            for (i, image), res in zip(good, results):
                try:
                    row = _write_outputs(Path(files[i]), stems[i], image, res, out, models, report)
                except Exception as err:  # one input's outputs (its name, a full disk) cost its row, not the batch
                    log.info("%s: writing the outputs failed", files[i], exc_info=True)  # the traceback with -v only
                    row = {
                        "path": files[i],
                        "error": f"{files[i]}: could not write its outputs ({type(err).__name__}: {err}); "
                        "fix the cause and run again with --retry-errors",
                    }
                yield emit(row)
            bar.update(len(batch))
            del batch, good, results
            trim_heap()  # memory stays flat over thousands of batches (see covidcxr.batch.trim_heap)


def _write_outputs(path: Path, stem: str, image: np.ndarray, res: dict, out: Path, models: dict, report: bool) -> dict:
    if res.get("refusal"):
        return {
            "path": str(path),
            "error": f"{path}: {res['refusal']}",
            "refusal_reason": refusal_reason(res["refusal"]),
        }
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
        save_report(
            row["report"],
            image,
            res["mask"],
            res["probabilities"],
            heat,
            title=title,
            warnings=res["warnings"],
            lung_share=res.get("saliency_in_lungs"),
            severity=res.get("severity"),
            lesions=res.get("lesions"),
            zones=res.get("zones"),
            findings=res.get("findings"),
            saliency_name=res.get("saliency_method", "Grad-CAM"),
        )
    row["model"] = models
    row["warnings"] = res["warnings"]
    row["lung_area"] = round(float(res["mask"].mean()), 4)
    row["gate_probability"] = round(res.get("gate_probability", float("nan")), 4)
    if "saliency_in_lungs" in res:
        row["saliency_in_lungs"] = round(float(res["saliency_in_lungs"]), 4)
    if "findings" in res:
        row["findings"] = res["findings"]
    if "severity" in res:
        row["severity"] = res["severity"]
    return row
