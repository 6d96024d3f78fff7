"""``covidcxr --help``, ``--version`` and the ``--<model>-weights`` options, with the old ``--weights`` spelling."""

from __future__ import annotations

import argparse
import re
from importlib.metadata import version

import pytest

import covidcxr
from covidcxr.cli import build_parser, main
from covidcxr.cli.helptext import DATA_ROOT_HELP


def _parsers(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()):
    """(command words, parser) for the top-level parser and every subcommand, nested ones too."""
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _parsers(sub, (*path, name))


PARSERS = dict(_parsers(build_parser()))


def test_version_prints_the_package_version(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out.strip() == f"covidcxr {version('covidcxr')}"
    assert version("covidcxr") == covidcxr.__version__  # the fallback of a source tree agrees


def test_every_command_is_covered():
    names = {" ".join(p) for p in PARSERS}
    assert {"predict", "segment", "serve", "evaluate uncertainty", "export onnx", "train gate", "audit"} <= names


@pytest.mark.parametrize("words", sorted(PARSERS), ids=lambda w: " ".join(w) or "covidcxr")
def test_help_ends_with_two_to_four_examples(words):
    text = PARSERS[words].format_help().rstrip("\n")
    block = text.rsplit("\n\nexamples:\n", 1)
    assert len(block) == 2, text[-400:]
    lines = block[1].splitlines()
    assert 2 <= len(lines) <= 4 and all(line.startswith("  covidcxr ") for line in lines), lines
    assert any(line.startswith(f"  covidcxr {' '.join(words)}") for line in lines)


@pytest.mark.parametrize("words", sorted(PARSERS), ids=lambda w: " ".join(w) or "covidcxr")
def test_every_option_has_help_and_shows_its_default(words):
    parser = PARSERS[words]
    formatter = parser._get_formatter()
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction | argparse._VersionAction | argparse._SubParsersAction):
            continue
        if action.help == argparse.SUPPRESS:
            assert action.option_strings == ["--weights"], action  # only the deprecated spelling is hidden
            continue
        assert action.help, f"{words}: {action.option_strings or action.dest} has no help"
        shown = formatter._expand_help(action)
        assert action.required or "default" in shown, f"{words}: {action.option_strings} does not say its default"
        if "--data-root" in action.option_strings:
            assert action.help == DATA_ROOT_HELP


def test_data_root_help_says_how_the_folder_is_found():
    assert "$COVIDCXR_DATA" in DATA_ROOT_HELP and "../shared/data" in DATA_ROOT_HELP
    with_data_root = [w for w, p in PARSERS.items() if "--data-root" in p._option_string_actions]
    assert len(with_data_root) >= 11


def test_serve_help_shows_its_defaults():
    text = " ".join(PARSERS[("serve",)].format_help().split())
    for default in ("(default: 127.0.0.1)", "(default: 8000)", "(default: 20.0)", "(default: 32)", "(default: 128)"):
        assert default in text


def test_old_weights_spelling_is_hidden_from_help():
    for words, parser in PARSERS.items():
        assert not re.search(r"(?<![\w-])--weights\b", parser.format_help()), words


RENAMES = [
    (["predict", "--out", "o"], "--diagnosis-weights", "diagnosis_weights"),
    (["export", "onnx"], "--diagnosis-weights", "diagnosis_weights"),
    (["segment", "--out", "o"], "--lung-weights", "lung_weights"),
    (["evaluate", "segmentation"], "--lung-weights", "lung_weights"),
    (["evaluate", "diagnosis"], "--diagnosis-weights", "diagnosis_weights"),
    (["evaluate", "gate"], "--gate-weights", "gate_weights"),
    (["audit"], "--diagnosis-weights", "diagnosis_weights"),
]


@pytest.mark.parametrize(("argv", "flag", "dest"), RENAMES, ids=[" ".join(r[0][:2]) for r in RENAMES])
def test_both_spellings_of_the_weights_option(argv, flag, dest, capsys):
    new = build_parser().parse_args([*argv, flag, "w.json"])
    assert getattr(new, dest) == "w.json" and not hasattr(new, "weights")
    assert capsys.readouterr().err == ""
    old = build_parser().parse_args([*argv, "--weights", "w.json"])
    assert getattr(old, dest) == "w.json" and not hasattr(old, "weights")
    assert capsys.readouterr().err == f"--weights is deprecated here; use {flag}\n"
    assert getattr(build_parser().parse_args(argv), dest) is None


def test_segment_reads_either_spelling_of_its_lung_weights(tmp_path, capsys):
    missing = str(tmp_path / "nope.json")
    assert main(["segment", "--out", str(tmp_path / "o"), "--lung-weights", missing]) == 2
    err = capsys.readouterr().err
    assert "not found" in err and "deprecated" not in err
    assert main(["segment", "--out", str(tmp_path / "o"), "--weights", missing]) == 2
    lines = capsys.readouterr().err.splitlines()
    assert lines[0] == "--weights is deprecated here; use --lung-weights" and "not found" in lines[1]
