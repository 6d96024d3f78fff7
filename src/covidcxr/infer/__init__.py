"""Inference: the four stages, written once, on either backend.

- :class:`LungSegmenter` (stage 1), :class:`Gate`, :class:`SeverityScorer`, :class:`Diagnoser`
  (stage 2): NumPy pre- and post-processing and the spec checks, around a
  :class:`~covidcxr.infer.runners.Runner`;
- runners (:mod:`covidcxr.infer.runners`): :class:`TorchRunner` (``.pt`` weights) and
  :class:`OrtRunner` (ONNX, no PyTorch import), arrays in, arrays out;
- :class:`Predictor`: the stages in order, images in, :class:`Result` objects out.
"""

from .diagnosis import Diagnoser
from .gate import Gate, GateDecision
from .lungs import LungPass, LungSegmenter
from .predictor import Predictor
from .result import Result
from .runners import BACKENDS, OrtRunner, Runner, TorchRunner, default_onnx_dir, load_runner
from .severity import SeverityScorer

__all__ = [
    "BACKENDS",
    "Diagnoser",
    "Gate",
    "GateDecision",
    "LungPass",
    "LungSegmenter",
    "OrtRunner",
    "Predictor",
    "Result",
    "Runner",
    "SeverityScorer",
    "TorchRunner",
    "default_onnx_dir",
    "load_runner",
]
