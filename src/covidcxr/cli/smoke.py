"""What a ``--quick`` smoke run says about its numbers: that they mean nothing, on the console and in every file.

A smoke run fits on a few dozen images to check that the command works end to end; its AUROC of
0.497 or its cells of "0.000 (0.00-0.00)" say nothing about the recipe. :func:`mark_smoke_run` writes
:data:`SMOKE_NOTE` into each file the run wrote (JSON, Markdown, PNG, text), so none of them is read
later as a result, and :data:`SMOKE_BANNER` is what the command prints around its numbers.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

log = logging.getLogger(__name__)

SMOKE_NOTE = (
    "smoke run (--quick): a few dozen images and a short fit, to check that the command works; "
    "its numbers mean nothing about the model or the recipe"
)
SMOKE_BANNER = (
    "*** SMOKE RUN (--quick): a few dozen images and a short fit; its numbers mean nothing about the model ***"
)
_MD = f"> **Smoke run (--quick)**: {SMOKE_NOTE.split(': ', 1)[1]}.\n\n"
_TEXT = f"# {SMOKE_NOTE}\n"
_BANNER_PX = 28


def mark_smoke_run(*folders: str | Path) -> list[Path]:
    """Mark every file under ``folders`` as a smoke run's (idempotent); returns the files marked.

    JSON objects get a first key ``smoke_note`` (a weights spec, whose fields are fixed, gets it in
    ``training``), Markdown a first line, PNGs a red banner on top, ``.txt``/``.yaml`` a ``#``
    line; other files (weights; CSV tables, which a ``#`` line would break) are left as they are: the
    spec and the JSON beside them say it.
    """
    marked = []
    for folder in folders:
        for path in sorted(Path(folder).rglob("*")) if Path(folder).is_dir() else []:
            writer = _WRITERS.get(path.suffix.lower())
            if path.is_file() and writer is not None and writer(path):
                marked.append(path)
    log.info("marked %d files as a smoke run's", len(marked))
    return marked


def _json(path: Path) -> bool:
    try:
        data = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError):
        return False
    if not isinstance(data, dict):
        return False
    if {"architecture", "sha256", "training"} <= set(data):  # a weights spec: its fields are fixed
        if data["training"].get("smoke_note") == SMOKE_NOTE:
            return False
        data["training"] = {"smoke_note": SMOKE_NOTE, **data["training"]}
    elif data.get("smoke_note") == SMOKE_NOTE:
        return False
    else:
        data = {"smoke_note": SMOKE_NOTE, **data}
    path.write_text(json.dumps(data, indent=2, default=str) + "\n")
    return True


def _prepend(line: str):
    def write(path: Path) -> bool:
        text = path.read_text()
        if text.startswith(line):
            return False
        path.write_text(line + text)
        return True

    return write


def _png(path: Path) -> bool:
    from PIL import Image, ImageDraw

    with Image.open(path) as im:
        if im.info.get("smoke_note") == SMOKE_NOTE:
            return False
        rgb = im.convert("RGB")
    out = Image.new("RGB", (rgb.width, rgb.height + _BANNER_PX), (180, 20, 20))
    out.paste(rgb, (0, _BANNER_PX))
    ImageDraw.Draw(out).text((8, 7), "SMOKE RUN (--quick): these numbers mean nothing", fill=(255, 255, 255))
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    info.add_text("smoke_note", SMOKE_NOTE)
    out.save(path, pnginfo=info)
    return True


_WRITERS = {
    ".json": _json,
    ".md": _prepend(_MD),
    ".png": _png,
    ".txt": _prepend(_TEXT),
    ".yaml": _prepend(_TEXT),
    ".yml": _prepend(_TEXT),
}
