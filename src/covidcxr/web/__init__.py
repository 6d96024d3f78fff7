"""``covidcxr serve``: a REST API and an offline web page in front of :class:`covidcxr.infer.Predictor`.

Thin by design: the app reads the upload with :func:`covidcxr.io.read_image`, runs the
pipeline and builds the same row as ``predictions.jsonl``; nothing else. Its libraries (FastAPI,
uvicorn) come with the base install (``pip install covidcxr``).
"""

from __future__ import annotations

from .app import create_app

__all__ = ["create_app"]
