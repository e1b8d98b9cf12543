"""Kinds of values: what an option may be, declared once, checked where the value enters.

Every command-line option that takes a value names its kind as its argparse ``type=``
(``unseg/cli.py``): the kind parses each word, and a bad one ends the command with one line
naming the option and what the kind expects (``unseg: error: argument --k: expects a whole
number >= 1; got '0'``) before anything is built or read. Kinds of several words (sizes) also
check the words together (:meth:`Kind.finish`, called by :class:`Parser`). The API checks
Python values with the same kinds (:meth:`Kind.check`), so a wrong value fails the same way
whether it came from a command or a call.

``tests/test_harness.py`` walks the real parser, reads each option's kind and tries the values
that kind refuses; an option without a kind fails the harness. So a new option joins the
table by being declared with a kind here.

Sizes are bounded (:data:`MAX_PIXELS`): a size that could not be allocated is refused when it
is read, not when memory runs out (``unseg docs reliability``).
"""

from __future__ import annotations

import argparse
import contextlib
import math
import numbers
import os
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, NoReturn

from .errors import SettingError, UnsegError

__all__ = [
    "MAX_SIDE",
    "MAX_PIXELS",
    "INT_MAX",
    "as_size",
    "nearest_existing",
    "probe_writable",
    "Kind",
    "Integer",
    "Real",
    "Size",
    "Text",
    "InputFile",
    "InputFolder",
    "InputPath",
    "OutputFolder",
    "OutputFile",
    "CacheFolder",
    "Device",
    "Registered",
    "Resume",
    "UsageError",
    "Parser",
    "check_device",
    "COUNT",
    "COUNTS",
    "NON_NEGATIVE",
    "SEED",
    "SEEDS",
    "POSITIVE",
    "NON_NEGATIVE_REAL",
    "FRACTION",
    "PROBABILITY",
    "DEVICE",
]

MAX_SIDE = 8192
"""The longest side anything is resized to (input, window, mask, upsampling target), in pixels."""
MAX_PIXELS = MAX_SIDE * MAX_SIDE
"""The most pixels per image: 8192 x 8192 = 64 megapixels, whose float32 RGB tensor alone takes 768 MiB."""
INT_MAX = 2**31 - 1  # counts and ids are C ints in torch, numpy and faiss


def _shown(size: tuple[int, int]) -> str:
    return str(size[0]) if size[0] == size[1] else f"{size[0]}x{size[1]}"


def as_size(size: int | Sequence[int], what: str = "size") -> tuple[int, int]:
    """An int or (H, W) -> (H, W): the one reading of an input, window, mask or upsampling size.

    Refused with a SettingError naming ``what``: other than one or two whole numbers, a side
    below 1, or more than :data:`MAX_PIXELS` pixels.
    """
    values = [size] if isinstance(size, numbers.Integral) else list(size) if isinstance(size, Sequence) else [size]
    if not 1 <= len(values) <= 2 or not all(
        isinstance(v, numbers.Integral) and not isinstance(v, bool) for v in values
    ):
        raise SettingError(f"{what} {size!r} is not one whole number (square) or two (H W)")
    h, w = int(values[0]), int(values[-1])
    if min(h, w) < 1:
        raise SettingError(f"{what} {_shown((h, w))} is not allowed: each side must be at least 1 px")
    if h * w > MAX_PIXELS:
        raise SettingError(
            f"{what} {_shown((h, w))} is {h * w} pixels, more than the {MAX_PIXELS} "
            f"({MAX_SIDE}x{MAX_SIDE}) an image may have here (``unseg docs reliability``)"
        )
    return h, w


def nearest_existing(path: Path) -> Path:
    """``path`` itself if it exists, else its closest ancestor that does."""
    path = Path(os.path.abspath(path))
    while not os.path.lexists(path) and path != path.parent:
        path = path.parent
    return path


def probe_writable(folder: Path) -> str | None:
    """Why files cannot be created in ``folder`` or in the folders it would be made in (None: they can).

    Nothing is left behind: the probe is a temporary file in the closest existing folder,
    deleted at once; no folder is created.
    """
    existing = nearest_existing(folder)
    if not existing.is_dir():
        return f"{existing} is a file, not a folder"
    try:
        with tempfile.TemporaryFile(dir=existing, prefix=".unseg-write-check-"):
            pass
    except OSError as exc:
        return f"{existing}: {exc.strerror or exc}"
    return None


class Refused(ValueError):
    """A word a kind does not accept; ``reason`` says why (default: it is quoted)."""

    def __init__(self, reason: str = "") -> None:
        super().__init__(reason)
        self.reason = reason


class Kind:
    """What one option's value may be. ``expects``: the text an error shows after "expects".

    ``many``: the option takes one or more words (argparse ``nargs="+"``), each parsed by
    :meth:`parse` and then checked together by :meth:`finish`. ``category`` names the family
    the harness generates bad values for.
    """

    category = "value"
    many = False

    def __init__(self, expects: str) -> None:
        self.expects = expects

    def parse(self, text: str) -> Any:
        """The value of one word, or :class:`Refused`."""
        return text

    def finish(self, values: list[Any]) -> Any:
        """The value of all the words of a ``many`` option together (as given, by default)."""
        return values

    def __call__(self, text: str) -> Any:  # argparse's ``type=``
        try:
            return self.parse(text)
        except Refused as exc:
            raise argparse.ArgumentTypeError(self.refusal(text, exc.reason)) from None
        except UnsegError as exc:
            raise argparse.ArgumentTypeError(self.refusal(text, str(exc))) from None

    def refusal(self, text: str, reason: str = "") -> str:
        return f"expects {self.expects}; got {text!r}" + (f" ({reason})" if reason else "")

    def check(self, value: Any, name: str) -> Any:
        """An API value of this kind, or a SettingError naming ``name`` (the base kind accepts any value)."""
        return value

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.expects!r})"


class Integer(Kind):
    """A whole number in ``[low, high]``."""

    category = "integer"

    def __init__(self, low: int, high: int = INT_MAX, many: bool = False, meaning: str = "") -> None:
        bound = f" {low}..{high}" if high != INT_MAX else f" >= {low}"
        noun = "whole numbers" if many else "a whole number"
        super().__init__(f"{noun}{bound}{f' ({meaning})' if meaning else ''}")
        self.low, self.high, self.many = low, high, many

    def parse(self, text: str) -> int:
        try:
            value = int(text.strip())
        except ValueError:
            raise Refused() from None
        if not self.low <= value <= self.high:
            raise Refused()
        return value

    def check(self, value: Any, name: str) -> int:
        if (
            isinstance(value, bool)
            or not isinstance(value, numbers.Integral)
            or not self.low <= int(value) <= self.high
        ):
            raise SettingError(f"{name} = {value!r} is not allowed; it expects {self.expects}")
        return int(value)


class Real(Kind):
    """A finite number between ``low`` and ``high`` (None: unbounded); ``*_open`` excludes the bound itself."""

    category = "real"

    def __init__(
        self,
        low: float | None = None,
        high: float | None = None,
        low_open: bool = False,
        high_open: bool = False,
        many: bool = False,
        meaning: str = "",
    ) -> None:
        if low is not None and high is not None:
            bound = f"in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
        elif low is not None:
            bound = f"{'>' if low_open else '>='} {low:g}"
        else:
            bound = f"{'<' if high_open else '<='} {high:g}" if high is not None else ""
        noun = "numbers" if many else "a number"
        super().__init__(f"{noun} {bound}{f' ({meaning})' if meaning else ''}".replace("  ", " ").strip())
        self.low, self.high, self.low_open, self.high_open, self.many = low, high, low_open, high_open, many

    def allows(self, value: float) -> bool:
        if not math.isfinite(value):
            return False
        if self.low is not None and (value < self.low or (self.low_open and value == self.low)):
            return False
        return self.high is None or not (value > self.high or (self.high_open and value == self.high))

    def parse(self, text: str) -> float:
        try:
            value = float(text.strip())
        except ValueError:
            raise Refused() from None
        if not self.allows(value):
            raise Refused()
        return value

    def check(self, value: Any, name: str) -> float:
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or not self.allows(float(value)):
            raise SettingError(f"{name} = {value!r} is not allowed; it expects {self.expects}")
        return float(value)


class Size(Kind):
    """One or two whole numbers of pixels (a square, or H W), at most :data:`MAX_PIXELS` pixels in all."""

    category = "size"
    many = True
    max_values = 2

    def __init__(self, what: str) -> None:
        super().__init__(
            f"one size in px (a square) or two (H W), each >= 1, at most {MAX_PIXELS} pixels ({MAX_SIDE}x{MAX_SIDE})"
        )
        self.what = what

    def parse(self, text: str) -> int:
        try:
            value = int(text.strip())
        except ValueError:
            raise Refused() from None
        if value < 1:
            raise Refused()
        return value

    def finish(self, values: list[int]) -> int | tuple[int, int]:
        if len(values) > self.max_values:
            raise Refused(f"{len(values)} values")
        as_size(values, self.what)
        return values[0] if len(values) == 1 else (values[0], values[1])

    def check(self, value: Any, name: str) -> tuple[int, int]:
        return as_size(value, name)


class Text(Kind):
    """Free text the command looks up itself (a split, a class name): declared, with nothing refused here."""

    category = "text"

    def __init__(self, expects: str, many: bool = False) -> None:
        super().__init__(expects)
        self.many = many


class _Path(Kind):
    """A path; ``expects`` defaults to the kind's own description."""

    default_expects = "a path"

    def __init__(self, expects: str | None = None, many: bool = False) -> None:
        super().__init__(expects or self.default_expects)
        self.many = many


def _readable(path: Path, folder: bool) -> str | None:
    """Why ``path`` cannot be read (None: it can), trying it as the command would."""
    try:
        if folder:
            with os.scandir(path):
                pass
        else:
            with open(path, "rb") as fh:
                fh.read(1)
    except OSError as exc:
        return exc.strerror or str(exc)
    return None


def _existing(text: str, want: str | None) -> str:
    """``text`` if it names an existing, readable file (``want`` "file"), folder ("folder") or either (None)."""
    path = Path(text).expanduser()
    if not path.exists():
        raise Refused(f"no such {want or 'file or folder'}")
    folder = path.is_dir()
    if want is not None and folder != (want == "folder"):
        raise Refused("a folder, not a file" if folder else "a file, not a folder")
    problem = _readable(path, folder=folder)
    if problem:
        raise Refused(f"cannot be read: {problem}")
    return text


class InputFile(_Path):
    """An existing, readable file (``special``: words that stand for no file, e.g. ``random``)."""

    category = "input-file"
    default_expects = "an existing, readable file"

    def __init__(self, expects: str | None = None, special: Sequence[str] = ()) -> None:
        super().__init__(expects)
        self.special = tuple(special)

    def parse(self, text: str) -> str:
        return text if text in self.special else _existing(text, "file")


class InputFolder(_Path):
    """An existing, readable folder."""

    category = "input-folder"
    default_expects = "an existing, readable folder"

    def parse(self, text: str) -> str:
        return _existing(text, "folder")


class InputPath(_Path):
    """An existing, readable file or folder."""

    category = "input-path"
    default_expects = "an existing, readable file or folder"

    def parse(self, text: str) -> str:
        return _existing(text, None)


class OutputFolder(_Path):
    """A folder to write in: an existing folder, or one that can be made; it is not created here."""

    category = "output-folder"
    default_expects = "a folder that exists or can be made, and can be written"

    def parse(self, text: str) -> str:
        path = Path(text).expanduser()
        if path.exists() and not path.is_dir():
            raise Refused("a file, not a folder")
        problem = probe_writable(path)
        if problem:
            raise Refused(f"cannot be written: {problem}")
        return text


class OutputFile(_Path):
    """A file to write: not a folder, in a folder that exists or can be made and can be written."""

    category = "output-file"
    default_expects = "a file path (not a folder) in a folder that can be written"

    def parse(self, text: str) -> Path:
        path = Path(text).expanduser()
        if path.is_dir():
            raise Refused("a folder, not a file")
        problem = probe_writable(path.parent)
        if problem:
            raise Refused(f"cannot be written: {problem}")
        return path


class CacheFolder(_Path):
    """A cache folder: read when complete (so it may be read-only), written when not; never a file."""

    category = "cache-folder"
    default_expects = "a folder, or a path where one can be made"

    def parse(self, text: str) -> str:
        path = Path(text).expanduser()
        existing = nearest_existing(path)
        if not existing.is_dir():
            raise Refused(f"{existing} is a file, not a folder")
        return text


class Device(Kind):
    """A torch device this machine has: auto, cpu, cuda, cuda:N, mps, ..."""

    category = "device"

    def __init__(self) -> None:
        super().__init__("auto, cpu or a device this machine has (cuda, cuda:N, mps)")

    def parse(self, text: str) -> str:
        check_device(text)
        return text

    def check(self, value: Any, name: str) -> Any:
        check_device(value)
        return value


def check_device(device: Any) -> Any:
    """The torch device ``device`` names ("auto": CUDA when there is one, else the CPU), or a SettingError
    for a name torch does not know or a device this machine lacks (before any work is sent to it)."""
    import torch

    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise SettingError(f"device {str(device)!r} is not a device name (auto, cpu, cuda, cuda:1, mps, ...)") from None
    if dev.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0 or (dev.index or 0) >= count:
            raise SettingError(f"device {str(device)!r}: this machine has {count} CUDA device(s); use cpu or auto")
    elif dev.type == "mps" and not torch.backends.mps.is_available():
        raise SettingError(f"device {str(device)!r}: MPS is not available here; use cpu or auto")
    elif dev.type not in ("cpu", "cuda", "mps"):
        raise SettingError(f"device {str(device)!r} is not supported here; use auto, cpu, cuda or mps")
    return dev


class Registered(Kind):
    """A name in one of the package's registries (backbones, datasets)."""

    category = "registered"

    def __init__(self, what: str, names: Callable[[], Sequence[str]]) -> None:
        super().__init__(f"a registered {what} name")
        self.what, self.names = what, names

    def parse(self, text: str) -> str:
        known = self.names()
        if text not in known:
            raise Refused(f"known: {', '.join(known)}")
        return text


class Resume(Kind):
    """``last`` or an existing checkpoint file (what it holds is checked before the run starts)."""

    category = "resume"

    def __init__(self) -> None:
        super().__init__("'last' or an existing checkpoint file")

    def parse(self, text: str) -> str:
        return text if text == "last" else InputFile().parse(text)


class UsageError(UnsegError):
    """A command line that does not parse: reported like any other bad value, in one line."""


class Parser(argparse.ArgumentParser):
    """The CLI's parser: a parse error is a :class:`UsageError` (one line, no usage dump), and each
    ``many`` kind's words are checked together once parsed (:meth:`Kind.finish`)."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(message)

    def parse_known_args(  # type: ignore[override]  # one signature for typeshed's overloads on the namespace
        self,
        args: Sequence[str] | None = None,
        namespace: argparse.Namespace | None = None,
    ) -> tuple[argparse.Namespace, list[str]]:
        parsed, extras = super().parse_known_args(args, namespace)
        for action in self._actions:
            kind, values = action.type, getattr(parsed, action.dest, None)
            if isinstance(kind, Kind) and kind.many and isinstance(values, list) and values is not action.default:
                try:
                    setattr(parsed, action.dest, kind.finish(values))
                except (Refused, UnsegError) as exc:
                    flag = "/".join(action.option_strings) or action.metavar or action.dest
                    words = " ".join(str(v) for v in values)
                    self.error(f"argument {flag}: {kind.refusal(words, getattr(exc, 'reason', str(exc)))}")
        return parsed, extras


# the kinds most options share
COUNT = Integer(1)
COUNTS = Integer(1, many=True)
NON_NEGATIVE = Integer(0)
SEED = Integer(0)
SEEDS = Integer(0, many=True)
POSITIVE = Real(0, low_open=True)
NON_NEGATIVE_REAL = Real(0)
FRACTION = Real(0, 1, high_open=True)  # a share of something: 0 allowed, the whole not
PROBABILITY = Real(0, 1)
DEVICE = Device()


def created_folders(parser: argparse.ArgumentParser, args: argparse.Namespace) -> list[Path]:
    """The first missing folder on the way to each output the command names (an output folder or file, a
    cache): what the command will have created, to remove again if it fails and leaves them empty."""

    def actions(p: argparse.ArgumentParser) -> Iterator[argparse.Action]:
        for action in p._actions:
            yield action
            if isinstance(action, argparse._SubParsersAction):
                for sub in dict.fromkeys(action.choices.values()):  # a parser once, whatever its aliases
                    yield from actions(sub)

    found = []
    for action in actions(parser):
        value = getattr(args, action.dest, None)
        if value is None or not isinstance(action.type, (OutputFolder, OutputFile, CacheFolder)):
            continue
        target = Path(value).expanduser().absolute()
        target = target.parent if isinstance(action.type, OutputFile) else target
        existing = nearest_existing(target)
        if existing != target:
            found.append(existing / target.relative_to(existing).parts[0])
    return found


def remove_empty(folder: Path) -> None:
    """Remove ``folder`` and the folders under it that hold no file; anything written stays."""
    for path, _, _ in os.walk(folder, topdown=False):
        with contextlib.suppress(OSError):
            os.rmdir(path)
