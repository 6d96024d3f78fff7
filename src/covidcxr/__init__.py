"""covidcxr: chest X-ray lung segmentation and COVID-19 pneumonia reading.

The public API, imported on first use (``import covidcxr`` stays fast and loads no PyTorch)::

    from covidcxr import Predictor
    predictor = Predictor.load()              # the shipped models (backend="onnxruntime": no PyTorch)
    result = predictor.predict("scan.dcm")    # or a PIL image, a NumPy array, a list of them
    result.prediction, result.probabilities, result.uncertain, result.to_dict()

- :class:`Predictor`, :class:`Result`: the reading (:mod:`covidcxr.infer`);
- :func:`read_image`: any PNG/JPEG/TIFF/BMP/DICOM file as the float image the models read;
- :func:`create_model`: a registered architecture, for training and research.
"""

from __future__ import annotations

from importlib import import_module
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING

try:
    __version__ = version("covidcxr")  # the installed distribution's
except PackageNotFoundError:  # a source tree on sys.path without an install
    __version__ = "0.1.0"

_PUBLIC = {
    "Predictor": "covidcxr.infer",
    "Result": "covidcxr.infer",
    "read_image": "covidcxr.io",
    "create_model": "covidcxr.models",
}
__all__ = ["Predictor", "Result", "__version__", "create_model", "read_image"]

if TYPE_CHECKING:
    from .infer import Predictor, Result
    from .io import read_image
    from .models import create_model


def __getattr__(name: str):
    if name in _PUBLIC:
        value = getattr(import_module(_PUBLIC[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'covidcxr' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_PUBLIC])
