"""Atomic file writes (a reader never sees a half-written cache shard or checkpoint), and the checks
that a folder can be written and a checkpoint read back, made before any compute depends on them.

A write that fails (a full disk, a read-only file system, a folder where a file should go) is
an :class:`~unseg.errors.OutputError` naming the file, and leaves nothing under its final name.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import pickletools
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO, cast

import torch

from .errors import OutputError, SettingError
from .kinds import probe_writable

_HINTS = {
    errno.ENOSPC: "the disk is full; free some space or choose another folder",
    errno.EDQUOT: "the disk quota is used up; free some space or choose another folder",
    errno.EROFS: "a read-only file system; choose another folder",
}


def output_error(exc: OSError, path: str | Path) -> OutputError:
    """``exc``, raised while writing ``path``, as one line naming the file and what to do."""
    reason = exc.strerror or str(exc)
    hint = _HINTS.get(exc.errno) if exc.errno is not None else None
    return OutputError(f"cannot write {path}: {reason}" + (f" ({hint})" if hint else ""))


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary sibling of ``path``; it replaces ``path`` only if the block succeeds.

    An OSError of the block (or of making the folder) becomes an OutputError naming ``path``;
    the temporary file is removed, and failing to remove it (a read-only file system) is no
    second error.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        yield tmp
        os.replace(tmp, path)
    except OutputError:
        raise
    except OSError as exc:
        raise output_error(exc, path) from None
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)


class _WriteRecorder:
    """A file wrapper that keeps the OSError of a failed write: torch.save reports it only as a RuntimeError."""

    def __init__(self, fh: BinaryIO) -> None:
        self.fh = fh
        self.error: OSError | None = None

    def write(self, data: bytes) -> int:
        try:
            return self.fh.write(data)
        except OSError as exc:
            self.error = exc
            raise

    def flush(self) -> None:
        self.fh.flush()


def save_torch(obj: Any, path: str | Path) -> None:
    """``torch.save`` atomically; a full disk is an OutputError naming ``path``, not torch's internal error."""
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        writer = _WriteRecorder(fh)
        try:
            torch.save(obj, cast(BinaryIO, writer))  # a file as far as torch.save goes: write and flush
        except RuntimeError:
            if writer.error is not None:
                raise writer.error from None
            raise


def save_npy(array: Any, path: str | Path) -> None:
    """``np.save`` atomically. Written through Python's file API (numpy's fast path reports a full disk
    as a count of bytes), so a full disk is an OutputError that says so."""
    import numpy as np

    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        np.save(_WriteRecorder(fh), array)


def save_json(obj: Any, path: str | Path) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True))


def require_writable(folder: str | Path, what: str) -> Path:
    """``folder`` if files can be made in it (or in the folders it would be made in), else an
    OutputError naming it: a run finds out that it cannot save before its compute, not after.
    Nothing is created: folders are made when the first file is written. ``what``: e.g. "--out folder"."""
    folder = Path(folder).expanduser()
    problem = probe_writable(folder)
    if problem is not None:
        raise OutputError(f"{what} {folder} cannot be written ({problem}); choose a folder you can write to")
    return folder


def resume_checkpoint(resume: str | Path | None, out_dir: str | Path) -> str | None:
    """The Lightning checkpoint a run resumes from: None, ``"last"`` (``out_dir/checkpoints/last.ckpt``,
    which must exist: a run asked to continue never silently starts over) or a path, which must
    hold a Lightning training checkpoint. Raises a SettingError naming the file otherwise."""
    if resume is None:
        return None
    if str(resume) == "last":
        path = Path(out_dir) / "checkpoints" / "last.ckpt"
        if not path.exists():
            raise SettingError(
                f"--resume last: run folder {out_dir} has no checkpoint {path}; to start a new "
                "run leave out --resume, or pass --out of the run to continue"
            )
    else:
        path = Path(resume)
        if not path.is_file():
            raise SettingError(f"--resume {resume}: no such checkpoint file")
    if not {"state_dict", "loops"} <= _pickled_strings(path):
        raise SettingError(
            f"--resume {resume}: {path} is not a training checkpoint of a run (a Lightning "
            "checkpoint with its loops' state, e.g. RUN/checkpoints/last.ckpt)"
        )
    return str(path)


def _pickled_strings(path: Path) -> set[str]:
    """The strings in a torch zip checkpoint's pickle, read without unpickling (no code from the
    file runs, no tensor is loaded); empty for any other file."""
    try:
        with zipfile.ZipFile(path) as archive:
            name = next((n for n in archive.namelist() if n.endswith("data.pkl")), None)
            data = archive.read(name) if name is not None else b""
        return {arg for _, arg, _ in pickletools.genops(data) if isinstance(arg, str)}
    except (OSError, zipfile.BadZipFile, ValueError):  # not a zip, or a damaged pickle
        return set()
