"""The command line's help: built from the API, with no number of its own.

Every default a help text shows is read from the API (``unseg.options.From``), so a help string
written in the source holds no number: a copied default would stay behind when the API changes.
"""

from __future__ import annotations

import argparse
import ast
import re
from pathlib import Path

import pytest

import unseg
from unseg.catalog import METHODS, segmenting_methods, training_methods
from unseg.cli import build_parser, main
from unseg.options import Opt

SOURCES = [Path(unseg.__file__).parent / name for name in ("cli.py", "options.py")]


def _help_literals(path: Path) -> list[tuple[int, str]]:
    """(line, text) of every string written into a ``help`` (an Opt's second argument or ``help=``)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if not isinstance(node, ast.Call):
            continue
        name = node.func.id if isinstance(node.func, ast.Name) else getattr(node.func, "attr", "")
        parts = [k.value for k in node.keywords if k.arg == "help"]
        if name == "Opt" and len(node.args) > 1:
            parts.append(node.args[1])
        for part in parts:
            for leaf in ast.walk(part):
                if isinstance(leaf, ast.Constant) and isinstance(leaf.value, str):
                    found.append((leaf.lineno, leaf.value))
    return found


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: p.name)
def test_no_help_string_holds_a_literal_number(path):
    numbers = [(line, text) for line, text in _help_literals(path) if re.search(r"\d", text)]
    assert _help_literals(path) and numbers == []


def test_the_defaults_shown_are_the_apis():
    from unseg.defaults import NITER, NREDO, PCA_DIM

    parser = build_parser()
    cluster = parser._subparsers._group_actions[0].choices["eval"]._subparsers._group_actions[0].choices["cluster"]
    helps = {a.dest: a.help for a in cluster._actions}
    assert f"(default {NITER})" in helps["niter"] and f"(default {NREDO})" in helps["nredo"]
    assert f"(default {PCA_DIM})" in helps["pca_dim"] and "(default 0..4)" in helps["seeds"]
    assert Opt("--x", "an option").add is not None  # declarations are data


def test_the_catalog_lists_every_method_and_the_cli_follows_it(capsys):
    assert set(METHODS.names()) == {"spectral", "kmeans", "cd", "stego", "leopart"}
    assert set(segmenting_methods()) == {"spectral", "kmeans", "cd", "stego"}
    assert set(training_methods()) == {"stego", "leopart"}
    assert main(["methods"]) == 0
    printed = capsys.readouterr().out
    assert all(name in printed for name in METHODS.names())
    parser = build_parser()
    train = parser._subparsers._group_actions[0].choices["train"]
    assert set(train._subparsers._group_actions[0].choices) == set(training_methods())
    segment = parser._subparsers._group_actions[0].choices["segment"]
    method = next(a for a in segment._actions if a.dest == "method")
    assert set(method.choices) == set(segmenting_methods())
    assert isinstance(parser, argparse.ArgumentParser)
