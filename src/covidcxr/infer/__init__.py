"""Inference: the four stages, written once, on either backend.

- :class:`LungSegmenter` (stage 1), :class:`Gate`, :class:`SeverityScorer`, :class:`Diagnoser`
  (stage 2: :class:`CnnDiagnoser` or :class:`FindingsDiagnoser`, answering a :class:`Reading`): NumPy pre- and post-processing and the spec checks, around a
  :class:`~covidcxr.infer.runners.Runner`;
- runners (:mod:`covidcxr.infer.runners`): :class:`TorchRunner` (``.pt`` weights) and
  :class:`OrtRunner` (ONNX, no PyTorch import), arrays in, arrays out;
- :class:`Predictor`: the stages in order, images in, :class:`Result` objects out.
"""

from .diagnosis import CnnDiagnoser, Diagnoser, FindingsDiagnoser, Reading, diagnoser_for
from .gate import Gate, GateDecision
from .lungs import LungPass, LungSegmenter
from .predictor import Predictor
from .result import Result
from .runners import BACKENDS, OrtRunner, Runner, TorchRunner, default_onnx_dir, load_runner
from .severity import SeverityScorer

__all__ = [
    "BACKENDS",
    "CnnDiagnoser",
    "Diagnoser",
    "FindingsDiagnoser",
    "Gate",
    "GateDecision",
    "LungPass",
    "LungSegmenter",
    "OrtRunner",
    "Predictor",
    "Reading",
    "Result",
    "Runner",
    "SeverityScorer",
    "TorchRunner",
    "default_onnx_dir",
    "diagnoser_for",
    "load_runner",
]
