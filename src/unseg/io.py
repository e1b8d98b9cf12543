"""Atomic file writes (a reader never sees a half-written cache shard or checkpoint), and the checks
that a folder can be written and a checkpoint read back, made before any compute depends on them."""
from __future__ import annotations

import json
import os
import pickletools
import tempfile
import zipfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import torch

from .errors import OutputError, SettingError


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary sibling of ``path``; it replaces ``path`` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def save_torch(obj: Any, path: str | Path) -> None:
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def save_json(obj: Any, path: str | Path) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True))


def require_writable(folder: str | Path, what: str) -> Path:
    """Create ``folder`` and write (then delete) a probe file in it, or raise an OutputError naming
    it: a run finds out that it cannot save before its compute, not after. ``what``: e.g. "--out folder"."""
    folder = Path(folder).expanduser()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder, prefix=".unseg-write-check-"):
            pass
    except OSError as exc:
        raise OutputError(f"{what} {folder} cannot be written ({exc.strerror or exc}); "
                          "choose a folder you can write to") from None
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
            raise SettingError(f"--resume last: run folder {out_dir} has no checkpoint {path}; to start a new "
                               "run leave out --resume, or pass --out of the run to continue")
    else:
        path = Path(resume)
        if not path.is_file():
            raise SettingError(f"--resume {resume}: no such checkpoint file")
    if not {"state_dict", "loops"} <= _pickled_strings(path):
        raise SettingError(f"--resume {resume}: {path} is not a training checkpoint of a run (a Lightning "
                           "checkpoint with its loops' state, e.g. RUN/checkpoints/last.ckpt)")
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
