"""Stage 2 has two kinds, picked by the graph's inputs, and one answer: ``read() -> Reading``."""

from __future__ import annotations

from dataclasses import replace
from types import SimpleNamespace

import numpy as np
import pytest

from covidcxr.infer import CnnDiagnoser, Diagnoser, FindingsDiagnoser, diagnoser_for
from covidcxr.models.weights import shipped_spec_path
from covidcxr.specs import WeightSpec

TARGETS = ["COVID-19", "Other pneumonia", "No finding"]


def _cnn(logits: np.ndarray, operating_point: dict | None = None) -> CnnDiagnoser:
    """A CNN diagnoser over a runner that answers fixed logits and a class-activation map lit in one corner."""
    spec = replace(
        WeightSpec.from_json(shipped_spec_path("diagnosis")),
        architecture="mobilenet_v2",
        model_kwargs={},
        input_size=(64, 64),
        operating_point=operating_point or {},
    )

    def run(x):
        n = len(x)
        cam = np.zeros((n, 3, 2, 2), np.float32)
        cam[:, :, 0, 0] = 1.0  # the view's top left: the patient's upper right lung zone
        return [np.repeat(np.asarray(logits, np.float32)[None], n, 0), cam]

    return diagnoser_for(SimpleNamespace(spec=spec, inputs=("x",), run=run))


def _image_and_lungs():
    image = np.random.default_rng(0).random((300, 260)).astype(np.float32)
    lungs = np.zeros(image.shape, bool)
    lungs[40:260, 30:120] = lungs[40:260, 140:230] = True
    return image, lungs


def test_the_graph_inputs_pick_the_kind():
    shipped = Diagnoser.from_spec()
    assert isinstance(shipped, FindingsDiagnoser) and shipped.reads_facts
    assert isinstance(_cnn(np.zeros(3)), CnnDiagnoser) and not _cnn(np.zeros(3)).reads_facts


def test_a_cnn_reading_calls_the_largest_class_and_places_its_map_in_the_image():
    image, lungs = _image_and_lungs()
    reading = _cnn(np.array([0.0, 2.0, 0.0])).read([image, image], [lungs, lungs])
    assert reading.probabilities.shape == (2, 3) and np.allclose(reading.probabilities.sum(1), 1)
    assert reading.called.tolist() == [1, 1]  # no operating point: the most probable class
    heat = reading.heatmaps[0]
    assert heat.shape == image.shape and heat.max() == pytest.approx(1.0, abs=1e-6)
    ys, xs = np.nonzero(heat > 0.5)
    assert ys.mean() < 150 and xs.mean() < 130  # the lit corner of the view lands at the lung box's top left
    assert not heat[:, 250:].any()  # nothing outside the lung box


def test_the_operating_point_decides_the_called_class():
    image, lungs = _image_and_lungs()
    logits = np.log([0.25, 0.15, 0.60])  # P(abnormal) 0.40: disease at a 0.30 threshold, not at 0.5
    low = _cnn(logits, {"p_abnormal": 0.30, "covid_given_abnormal": 0.5}).read([image], [lungs])
    high = _cnn(logits, {"p_abnormal": 0.50, "covid_given_abnormal": 0.5}).read([image], [lungs])
    assert [TARGETS[int(k)] for k in (low.called[0], high.called[0])] == ["COVID-19", "No finding"]


def test_no_heat_map_without_saliency_and_nothing_from_no_image():
    image, lungs = _image_and_lungs()
    cnn = _cnn(np.zeros(3))
    assert cnn.read([image], [lungs], saliency=False).heatmaps == [None]
    empty = cnn.read([], [])
    assert empty.probabilities.shape == (0, 3) and empty.heatmaps == []


def test_the_findings_model_refuses_to_read_without_the_findings():
    image, lungs = _image_and_lungs()
    shipped = Diagnoser.from_spec()
    with pytest.raises(ValueError, match="finding facts"):
        shipped.read([image], [lungs])
    reading = shipped.read([image], [lungs], np.zeros((1, 16), np.float32))
    assert reading.heatmaps == [None]  # findings only: no map over the view (the predictor shows the lesions)
