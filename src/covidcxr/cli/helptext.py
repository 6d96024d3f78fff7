"""How the command line explains itself: the help formatter, shared option texts, deprecated spellings."""

from __future__ import annotations

import argparse
import sys

# covidcxr.data.paths.resolve_data_root: the option, else $COVIDCXR_DATA, else ../shared/data from the
# working directory, else ../shared/data beside the source checkout.
DATA_ROOT_HELP = (
    "folder holding the data folders (covid-chestxray/, nih-chestxray8/, ...); default $COVIDCXR_DATA, "
    "else ../shared/data (from the working directory, then beside this source checkout)"
)
ONNX_DIR_HELP = (
    "ONNX graphs written by `covidcxr export onnx --out DIR` (default: the graphs of the shipped models, "
    "in the package); with the onnxruntime backend"
)
SHIPPED = "(default: the shipped model)"
SPEC = "SPEC"  # metavar of every weights option: a weights spec JSON (covidcxr.specs.WeightSpec)


class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """Descriptions and ``examples:`` epilogs as written; each option's default appended unless its help says it.

    An option whose default is ``None`` says in words what it falls back to (``default: the shipped model``).
    """

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "default" in text or action.default is None or action.required:
            return text
        return super()._get_help_string(action)


class DeprecatedAlias(argparse.Action):
    """An old spelling of an option, hidden from ``--help``: stores into the new option's dest and says so on stderr."""

    def __init__(self, option_strings: list[str], dest: str, *, new: str, **kwargs) -> None:
        self.new = new
        super().__init__(option_strings, dest, default=argparse.SUPPRESS, help=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        print(f"{option_string} is deprecated here; use {self.new}", file=sys.stderr)
        setattr(namespace, self.dest, values)


def examples(*lines: str) -> str:
    """The ``examples:`` block that ends a command's ``--help``."""
    return "examples:\n" + "\n".join(f"  {line}" for line in lines)


def command(sub, name: str, summary: str, *lines: str) -> argparse.ArgumentParser:
    """A subcommand parser: ``summary`` in the listing and as its description, ``lines`` as its examples."""
    return sub.add_parser(
        name, help=summary, description=summary, epilog=examples(*lines), formatter_class=HelpFormatter
    )


def add_weights(parser: argparse.ArgumentParser, flag: str, text: str, *, was_weights: bool = False) -> None:
    """A ``--<model>-weights SPEC`` option; ``was_weights``: the old ``--weights`` still works, with a warning."""
    parser.add_argument(flag, metavar=SPEC, help=text)
    if was_weights:
        parser.add_argument("--weights", dest=flag[2:].replace("-", "_"), action=DeprecatedAlias, new=flag)


def add_data_root(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data-root", metavar="DIR", help=DATA_ROOT_HELP)
