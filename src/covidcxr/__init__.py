"""covidcxr: chest X-ray lung segmentation and COVID-19 pneumonia reading."""

from __future__ import annotations

__version__ = "0.1.0"
