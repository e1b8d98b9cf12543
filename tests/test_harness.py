"""The harness (``unseg docs reliability``): every command, every option that takes a value, every bad
value of its kind.

The table is not written by hand: it walks the real parser (``unseg.cli.build_parser``), reads
each option's kind (its ``type=``, a kind of :mod:`unseg.kinds`, or its ``choices``) and makes
the values that kind refuses: zero, negative, too large, not a number, too many or too few
values, a folder for a file and the reverse, missing, unreadable, read-only. Each must end the
command with exit status 2 and one line ``unseg: error: ...`` that names the option and what it
expects, with no traceback, before any backbone is built or image read, and with nothing left
behind: no output or cache folder, no file in the temporary folder. An option declared without
a kind fails :func:`test_every_option_declares_its_kind`, so a new option joins the table by
being declared once.

The second table holds the values issue 22 listed, including those only the API can judge
(a scale times the input size, a rank outside the world size, a config without ``root``).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from unseg.cli import build_parser, main
from unseg.kinds import Kind, Size

# --- the table, read off the parser ---------------------------------------------------------------


def commands(
    parser: argparse.ArgumentParser, path: tuple[str, ...] = ()
) -> Iterator[tuple[tuple[str, ...], argparse.ArgumentParser]]:
    """(words that name the command, its parser) of every command, and () for the top-level options."""
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not path or not subs:
        yield path, parser
    for action in subs:
        for name, sub in action.choices.items():
            yield from commands(sub, (*path, name))


def value_actions(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    """The parser's own options and positionals that take a value (not flags, help or subcommands)."""
    return [
        a
        for a in parser._actions
        if a.nargs != 0 and not isinstance(a, (argparse._SubParsersAction, argparse._HelpAction))
    ]


def name_of(action: argparse.Action) -> str:
    """How argparse names the option in its messages."""
    return "/".join(action.option_strings) or action.metavar or action.dest


def undeclared(parser: argparse.ArgumentParser) -> list[str]:
    """Options that take a value without a declared kind, or whose number of words disagrees with it."""
    problems = []
    for path, sub in commands(parser):
        for action in value_actions(sub):
            kind = action.type
            where = f"{name_of(action)} of `unseg {' '.join(path)}`"
            if action.choices is not None and kind is None:
                continue  # a choice: argparse refuses anything else
            if not isinstance(kind, Kind):
                problems.append(f"{where} declares no kind: give it type=<a kind of unseg.kinds> (or choices=)")
            elif kind.many != (action.nargs in ("+", "*")):
                problems.append(
                    f"{where}: kind {kind!r} takes {'several words' if kind.many else 'one word'}, but "
                    f"nargs is {action.nargs!r}"
                )
    return problems


def bad_values(action: argparse.Action) -> list[tuple[str, list[str]]]:
    """(label, words) of every value the option's kind refuses; ``{name}`` words are paths of :func:`spots`."""
    kind = action.type
    values: list[tuple[str, list[str]]] = []
    if action.nargs in (None, "+"):  # a value is needed: none at all is too few
        values.append(("no value", []))
    if action.choices is not None:
        return [*values, ("not a choice", ["banana"])]
    category = kind.category
    if category == "integer":
        values += [
            ("below", [str(kind.low - 1)]),
            ("above", [str(kind.high + 1)]),
            ("huge", [str(2**63)]),
            ("not a number", ["abc"]),
            ("a fraction", ["1.5"]),
            ("empty", [""]),
        ]
    elif category == "real":
        values += [("nan", ["nan"]), ("inf", ["inf"]), ("not a number", ["abc"]), ("empty", [""])]
        if kind.low is not None:
            values.append(
                ("at the bound" if kind.low_open else "below", [f"{kind.low if kind.low_open else kind.low - 1:g}"])
            )
        if kind.high is not None:
            values.append(
                (
                    "at the bound" if kind.high_open else "above",
                    [f"{kind.high if kind.high_open else 2 * kind.high + 1:g}"],
                )
            )
    elif category == "size":
        values += [
            ("zero", ["0"]),
            ("negative", ["-1"]),
            ("huge", ["100000"]),
            ("huge H x W", ["9000", "9000"]),
            ("not a number", ["abc"]),
            ("too many", ["224", "320", "999"]),
        ]
    elif category == "input-file":
        values += [("missing", ["{missing}"]), ("a folder", ["{folder}"]), ("unreadable", ["{unreadable_file}"])]
    elif category == "input-folder":
        values += [("missing", ["{missing}"]), ("a file", ["{file}"]), ("unreadable", ["{unreadable_folder}"])]
    elif category == "input-path":
        values += [
            ("missing", ["{missing}"]),
            ("unreadable file", ["{unreadable_file}"]),
            ("unreadable folder", ["{unreadable_folder}"]),
        ]
    elif category == "output-folder":
        values += [("a file", ["{file}"]), ("under a file", ["{file}/sub"]), ("read-only", ["{readonly}/out"])]
    elif category == "output-file":
        values += [
            ("a folder", ["{folder}"]),
            ("under a file", ["{file}/x.json"]),
            ("read-only", ["{readonly}/x.json"]),
        ]
    elif category == "cache-folder":
        values += [("a file", ["{file}"]), ("under a file", ["{file}/cache"])]
    elif category == "device":
        values += [("unknown", ["banana"]), ("no such GPU", ["cuda:99"]), ("empty", [""])]
        if not torch.cuda.is_available():
            values.append(("no GPU here", ["cuda"]))
    elif category == "registered":
        values += [("unknown", ["banana"])]
    elif category == "config":
        values += [
            ("unknown name", ["no_such_config"]),
            ("a folder", ["{folder}"]),
            ("bad YAML", ["{bad_yaml}"]),
            ("a list, not settings", ["{list_yaml}"]),
        ]
    elif category == "override":
        values += [("no =", ["novalue"]), ("no key", ["=3"]), ("bad key", ["a b=1"])]
    elif category == "resume":
        values += [("missing", ["{missing}"]), ("a folder", ["{folder}"]), ("unreadable", ["{unreadable_file}"])]
    elif category != "text":  # free text: looked up by the command; nothing to refuse here
        raise AssertionError(f"no bad values for kind category {category!r}: add them here")
    return values


# valid settings of each command's required options (and harmless others), the option under test left out
SOURCE = {
    "--root": ["{images}"],
    "--dataset": ["folder"],
    "--masks": ["{masks}"],
    "--num-classes": ["2"],
    "--split": [""],
    "--cache-dir": ["{case}/cache"],
    "--input-size": ["32"],
    "--workers": ["0"],
}
STEGO = {"--config": ["{stego_yaml}"], "overrides": ["root={images}"], "--cache-dir": ["{case}/cache"]}
BASE: dict[tuple[str, ...], dict[str, list[str]]] = {
    (): {"command": ["backbones"]},
    ("extract",): SOURCE,
    **{("eval", p): SOURCE for p in ("cluster", "linear", "fcn", "unsupervised", "retrieval", "segments")},
    ("eval", "stego"): {**STEGO, "--checkpoint": ["{file}"]},
    ("train", "stego"): {**STEGO, "--out": ["{case}/run"]},
    ("train", "leopart"): {"--config": ["{leopart_yaml}"], "overrides": ["root={images}"], "--out": ["{case}/run"]},
    ("stego", "knn"): STEGO,
    ("stego", "sweep"): {**STEGO, "--out": ["{case}/sweep"]},
    ("segment",): {"PATH": ["{images}"], "--out": ["{case}/out"]},
    ("demo",): {"--out": ["{case}/demo"]},
}


def argv_for(path: tuple[str, ...], action: argparse.Action, words: list[str]) -> list[str]:
    """The command with the option under test first (so it is parsed first), then the others' valid values;
    an option under test given no value last (the top-level ones before the command)."""
    option = [*action.option_strings[:1], *words] if action.option_strings else list(words)
    base = BASE.get(path, {})
    rest = [
        w
        for key, value in base.items()
        if key not in (name_of(action), action.dest, "command")
        for w in ([] if not key.startswith("-") else [key]) + value
    ]
    if not path:  # a top-level option: then a command
        return [*option, *base["command"]]
    # an option given no value goes last, where nothing can be taken for its value
    return [*path, *rest, *option] if not words else [*path, *option, *rest]


def _table() -> list:
    rows = []
    for path, parser in commands(build_parser()):
        for action in value_actions(parser):
            if not isinstance(action.type, Kind) and action.choices is None:
                continue  # reported by test_every_option_declares_its_kind
            for label, words in bad_values(action):
                rows.append(
                    pytest.param(
                        path, name_of(action), words, id=f"{' '.join(path) or 'unseg'} {name_of(action)} {label}"
                    )
                )
    return rows


TABLE = _table()
HARNESS_COMMANDS = sorted({row.values[0] for row in TABLE})


# --- where bad paths live ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def spots(image_folder, mount_tmpfs) -> Iterator[dict[str, str]]:
    """Paths the bad values name, in a folder every user may enter (so an unreadable file is unreadable
    for its own sake): a file, a folder, missing ones, unreadable ones, a read-only file system (a read-only
    tmpfs; else a folder of mode 555 when not root; else none), YAML files, images and masks."""
    root = Path(tempfile.mkdtemp(prefix="unseg-harness-"))
    root.chmod(0o755)
    (root / "file").write_text("not a folder")
    (root / "folder").mkdir()
    (root / "unreadable_file").write_text("x")
    (root / "unreadable_file").chmod(0o000)
    (root / "unreadable_folder").mkdir(mode=0o000)
    (root / "bad.yaml").write_text("a: [1, 2\n")
    (root / "list.yaml").write_text("- 1\n- 2\n")
    (root / "stego.yaml").write_text(
        "dataset: folder\ntrain_split: ''\nval_split: ''\nfive_crop: false\n"
        "n_classes: 2\nbackbone: efficientnet_lite0\ninput_size: 32\nval_input_size: 32\n"
    )
    (root / "leopart.yaml").write_text("dataset: folder\nbackbone: efficientnet_lite0\n")
    image_folder(root / "images", 2)
    image_folder(root / "masks", 2)
    readonly = root / "readonly"
    readonly.mkdir()
    mounted = mount_tmpfs(readonly, "ro,size=64k")
    if not mounted and os.geteuid() != 0:
        readonly.chmod(0o555)
    for folder in ("images", "masks", "folder"):
        for path in [root / folder, *(root / folder).iterdir()]:
            path.chmod(0o755 if path.is_dir() else 0o644)
    yield {
        "root": str(root),
        "file": str(root / "file"),
        "folder": str(root / "folder"),
        "missing": str(root / "missing" / "nothing"),
        "unreadable_file": str(root / "unreadable_file"),
        "unreadable_folder": str(root / "unreadable_folder"),
        "readonly": str(readonly) if mounted or os.geteuid() != 0 else "",
        "bad_yaml": str(root / "bad.yaml"),
        "list_yaml": str(root / "list.yaml"),
        "stego_yaml": str(root / "stego.yaml"),
        "leopart_yaml": str(root / "leopart.yaml"),
        "images": str(root / "images"),
        "masks": str(root / "masks"),
    }
    if mounted:
        subprocess.run(["umount", str(readonly)], check=True)
    (root / "unreadable_folder").chmod(0o755)
    readonly.chmod(0o755)
    shutil.rmtree(root)


def listing(root: Path) -> set[str]:
    """Every file and folder under ``root`` (with each file's size): what a failed command must leave as it was."""
    found = set()
    for path, dirs, files in os.walk(root):
        found |= {os.path.join(path, d) + "/" for d in dirs}
        found |= {f"{os.path.join(path, f)} {os.path.getsize(os.path.join(path, f))}" for f in files}
    return found


@pytest.fixture
def guarded(tmp_path, monkeypatch):
    """A clean place to fail: cwd, the temporary folder and the default cache in ``tmp_path``, and a
    backbone built or an image opened is a test failure (bad values must be refused before either)."""
    import PIL.Image

    from unseg.backbones.base import Backbone

    def built(*args, **kwargs):
        raise AssertionError("a backbone was built before the bad value was refused")

    def opened(*args, **kwargs):
        raise AssertionError("an image was read before the bad value was refused")

    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(Backbone, "__init__", built)
    monkeypatch.setattr(PIL.Image, "open", opened)
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    monkeypatch.setenv("UNSEG_CACHE", str(tmp_path / "unseg-cache"))
    monkeypatch.chdir(tmp_path)
    return scratch


def run_refused(argv: list[str], spots: dict[str, str], case: Path, capsys, as_nobody) -> str:
    """Run ``argv`` (``{name}`` words filled in); assert exit status 2, one line on stderr, nothing on stdout,
    no traceback, and nothing made or changed under ``case`` or the spots; return the line."""
    words = [w.format(case=case, **spots) for w in argv]
    before = listing(case), listing(Path(spots["root"]))
    with as_nobody(any("unreadable" in w for w in argv)):
        code = main(words)
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("unseg: error: "), (words, err)
    assert "Traceback" not in err and out == "", (words, out)
    assert (listing(case), listing(Path(spots["root"]))) == before, ("files left behind", words)
    assert not any((case / "tmp").iterdir()), ("temporary files left behind", words)
    return lines[0]


# --- the tests -------------------------------------------------------------------------------------------


def test_every_option_declares_its_kind():
    assert undeclared(build_parser()) == []


def test_an_option_without_a_kind_fails_the_harness():
    parser = build_parser()
    sub = next(p for path, p in commands(parser) if path == ("eval", "cluster"))
    sub.add_argument("--new-count", type=int)
    sub.add_argument("--new-size", type=Size("new size"))  # a kind of several words, declared for one
    assert undeclared(parser) == [
        "--new-count of `unseg eval cluster` declares no kind: give it type=<a kind of unseg.kinds> (or choices=)",
        "--new-size of `unseg eval cluster`: kind Size('one size in px (a square) or two (H W), each >= 1, at most "
        "67108864 pixels (8192x8192)') takes several words, but nargs is None",
    ]


def test_the_table_covers_every_command_and_option():
    parser = build_parser()
    with_values = {path for path, p in commands(parser) if value_actions(p)}
    assert with_values == set(HARNESS_COMMANDS)  # every command with an option that takes a value, and unseg's own
    assert {("extract",), ("segment",), ("train", "stego"), ("eval", "stego"), ()} <= with_values
    options = {(path, name_of(a)) for path, p in commands(parser) for a in value_actions(p)}
    assert options == {(row.values[0], row.values[1]) for row in TABLE}  # free text too: tried without a value


@pytest.mark.parametrize("path, option, words", TABLE)
def test_a_bad_value_is_one_line_naming_the_option(path, option, words, spots, guarded, tmp_path, capsys, as_nobody):
    if "{readonly}" in "".join(words) and not spots["readonly"]:
        pytest.skip("no read-only place here: root, and tmpfs cannot be mounted")
    action = next(
        a for p, parser in commands(build_parser()) if p == path for a in value_actions(parser) if name_of(a) == option
    )
    line = run_refused(argv_for(path, action, words), spots, tmp_path, capsys, as_nobody)
    assert option in line, line
    assert any(w in line for w in ("expect", "choose from", "required")), line  # says what it expects


# the values issue 22 listed, as a user typed them; some only the API can judge (a scale times the size)
LISTED = [
    (["eval", "cluster", "--input-size", "100000"], ["--input-size", "at most 67108864 pixels"]),
    (["eval", "cluster", "--scales", "1000"], ["scale 1000", "more than the 67108864", "--scales"]),
    (["segment", "{images}", "--out", "{case}/o", "--scales", "1000"], ["scale 1000", "--scales"]),
    (["eval", "cluster", "--mask-size", "100000"], ["--mask-size", "at most 67108864 pixels"]),
    (["eval", "cluster", "--mask-size", "0"], ["--mask-size", "each >= 1"]),
    (["eval", "cluster", "--mask-size", "100", "100", "100"], ["--mask-size", "3 values"]),
    (["eval", "cluster", "--input-size", "224", "320", "999"], ["--input-size", "3 values"]),
    (["eval", "cluster", "--pca-dim", "-1"], ["--pca-dim", ">= 0", "0 = no PCA"]),
    (["eval", "cluster", "--niter", "0"], ["--niter", ">= 1"]),
    (["eval", "cluster", "--nredo", "0"], ["--nredo", ">= 1"]),
    (["eval", "cluster", "--device", "banana"], ["--device", "'banana'"]),
    (["segment", "{images}", "--out", "{case}/o", "--device", "banana"], ["--device", "'banana'"]),
    (["eval", "cluster", "--json", "{folder}"], ["--json", "a folder, not a file"]),
    (
        ["segment", "{images}", "--out", "{case}/o", "--save-clustering", "{folder}"],
        ["--save-clustering", "a folder, not a file"],
    ),
    (["eval", "linear", "--lr", "-0.1"], ["--lr", "> 0"]),
    (["extract", "--rank", "3", "--world-size", "2"], ["rank 3 of world size 2", "--rank"]),
    (["eval", "stego", "--config", "stego/camvid_effnet", "--checkpoint", "{file}"], ["key 'root' is not set"]),
    (["stego", "knn", "--config", "stego/camvid_effnet"], ["key 'root' is not set"]),
    (["stego", "sweep", "--config", "stego/camvid_effnet", "--out", "{case}/s"], ["key 'root' is not set"]),
    (["train", "stego", "--config", "stego/camvid_effnet", "--out", "{case}/run"], ["key 'root' is not set"]),
    (["train", "stego", "--config", "{empty_yaml}", "--out", "{case}/run"], ["key 'root' is not set"]),
    (["train", "leopart", "--config", "{empty_yaml}", "--out", "{case}/run"], ["key 'root' is not set"]),
    (
        ["train", "stego", "--config", "{stego_yaml}", "root={images}", "lr_head=-1", "--out", "{case}/run"],
        ["'lr_head' = -1.0", "> 0"],
    ),
    (
        ["train", "leopart", "--config", "{leopart_yaml}", "root={images}", "lr_backbone=-1e-5", "--out", "{case}/run"],
        ["'lr_backbone' = -1e-05", "> 0"],
    ),
    (
        ["train", "stego", "--config", "{stego_yaml}", "root={images}", "knn_k=5", "--out", "{case}/run"],
        ["'knn_k' = 5 must be more than key 'num_neighbors' = 7"],
    ),
    (["eval", "cluster", "--upsample", "guided", "--guide-radius", "1000"], ["--guide-radius", "16"]),
    (["eval", "cluster", "--upsample", "bilinear", "--upsample-factor", "1e9"], ["--upsample-factor", "8192"]),
]
if not torch.cuda.is_available():
    LISTED += [
        (["eval", "cluster", "--device", "cuda"], ["--device", "0 CUDA device"]),
        (["segment", "{images}", "--out", "{case}/o", "--device", "cuda"], ["--device", "0 CUDA device"]),
    ]


@pytest.mark.parametrize("argv, needles", LISTED, ids=[" ".join(a[:4]) + " ..." + a[-1] for a, _ in LISTED])
def test_the_listed_values_are_one_line_before_any_work(argv, needles, spots, guarded, tmp_path, capsys, as_nobody):
    (tmp_path / "empty.yaml").write_text("")
    words = [
        *argv,
        *(
            [w for k, v in SOURCE.items() if k not in argv for w in [k, *v]]
            if argv[0] in ("extract", "eval") and argv[1] != "stego"
            else []
        ),
    ]
    line = run_refused(
        [w.replace("{empty_yaml}", str(tmp_path / "empty.yaml")) for w in words], spots, tmp_path, capsys, as_nobody
    )
    for needle in needles:
        assert needle in line, (needle, line)
