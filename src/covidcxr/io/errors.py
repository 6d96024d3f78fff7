"""The errors of reading an image: one line a person can act on."""

from __future__ import annotations

from typing import Any


class ImageReadError(ValueError):
    """A file could not be read as a chest X-ray image.

    ``str(err)`` is one line: ``'<path or name>: <problem and how to fix it>'``.

    Attributes:
        path: The file path, or the name given for raw bytes.
        problem: What was wrong, and where useful how to fix it.
    """

    def __init__(self, path: str, problem: str) -> None:
        self.path = str(path)
        self.problem = " ".join(str(problem).split())  # keep the message on one line
        super().__init__(f"{self.path}: {self.problem}")

    def __reduce__(self) -> tuple[Any, ...]:
        # The default reduce would call __init__ with the formatted message only.
        return (type(self), (self.path, self.problem))


class ImageTooLargeError(ImageReadError):
    """The image has more pixels than allowed (``max_pixels`` or Pillow's decompression-bomb limit), found from its header."""
