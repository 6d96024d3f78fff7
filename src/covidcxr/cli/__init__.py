"""The ``covidcxr`` command: one console script, one subcommand per job.

- :mod:`.parser`, :mod:`.parser_evaluate`: the arguments, one ``add_<command>`` function per subcommand;
- :mod:`.inference`: ``segment``, ``predict``, ``serve``; :mod:`.train`: ``train ...``;
  :mod:`.evaluate`: ``evaluate ...``, ``audit``, ``export onnx``, ``study``, ``splits``;
- :mod:`.common`: the bundled sample, ``--out`` checks, :class:`UserError`; :mod:`.helptext`: help formatting.

A user error (a bad argument, a missing file, an unreadable image, a missing optional dependency)
is one line, ``error: <sentence>``, exit 2; anything else is a bug and shows its traceback.
"""

from __future__ import annotations

import contextlib
import logging
import sys

from .common import SAMPLE, UserError, writable_out
from .inference import allowed_hosts
from .parser import build_parser, parse

__all__ = ["SAMPLE", "UserError", "allowed_hosts", "build_parser", "is_user_error", "main", "writable_out"]

log = logging.getLogger("covidcxr")

# RuntimeErrors whose message is a sentence for the user (a missing extra: "... needs the train extra ...:
# pip install 'covidcxr[train]'"), not a bug.
USER_RUNTIME_MARKERS = ("pip install",)
#: Libraries of the train extra: a command of the light install that needs one says how to add it.
TRAIN_EXTRA = {"torch", "torchvision", "timm", "segmentation_models_pytorch", "captum", "sklearn", "skimage"}
TRAIN_EXTRA |= {"cv2", "yaml", "onnx", "torchxrayvision"}


def is_user_error(err: BaseException) -> bool:
    """Whether ``err`` is the user's to fix (said in one line) rather than a bug (shown with its traceback)."""
    from ..batch import OutputBusyError
    from ..io import ImageReadError

    if isinstance(err, UserError | ImageReadError | ValueError | FileNotFoundError | FileExistsError):
        return True
    if isinstance(err, OutputBusyError):  # another run writes into --out
        return True
    return isinstance(err, RuntimeError) and any(m in str(err) for m in USER_RUNTIME_MARKERS)


def main(argv: list[str] | None = None) -> int:
    args = parse(build_parser(), argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    # A file name that is not UTF-8 is printed with escapes instead of ending the run with UnicodeEncodeError.
    with contextlib.suppress(AttributeError, ValueError):
        sys.stdout.reconfigure(errors="backslashreplace")
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError, FileExistsError, RuntimeError) as err:
        if not is_user_error(err):
            raise  # a bug: its traceback
        log.info("details", exc_info=True)  # with -v
        print(f"error: {err}", file=sys.stderr)
        return 2
    except ModuleNotFoundError as err:  # the light install (no PyTorch) running a training or evaluation command
        if (err.name or "").split(".")[0] not in TRAIN_EXTRA:
            raise  # a bug: its traceback
        log.info("details", exc_info=True)
        what = " ".join(a for a in (args.command, getattr(args, "task", None) or getattr(args, "format", None)) if a)
        print(
            f"error: covidcxr {what} needs the train extra ({err.name} is missing): pip install 'covidcxr[train]'",
            file=sys.stderr,
        )
        return 2
    except OSError as err:  # a disk or permission problem met on the way: one line, the traceback with -v
        log.info("details", exc_info=True)
        where = f"{err.filename}: " if err.filename else ""
        print(
            f"error: {where}{err.strerror or err}; check the path and its permissions, and free space on its disk",
            file=sys.stderr,
        )
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
