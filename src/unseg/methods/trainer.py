"""The Lightning trainer both training methods build, its selectable logger, and the run folder's rules.

Leopart and STEGO differ in what bounds a run (epochs or steps), how it spreads over
devices and which checkpoints it keeps; the rest is one choice made here: the run folder
is the trainer's root, the logger writes under ``logs/``, the methods' own samplers shard
the data (Lightning's distributed sampler is off), and no model summary is printed.

A run is never lost or mixed with another (``unseg docs reliability``): a folder that holds a run is
continued (``resume``) or replaced (``overwrite``), never silently written over
(:func:`check_run_folder`); a checkpoint to resume from is read by the package's safe loader
and checked against the run's model before anything of the run is written
(:func:`load_resume`); and checkpoints are written atomically (:class:`SafeCheckpointIO`).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, get_args

import lightning as L
from lightning.fabric.plugins import TorchCheckpointIO
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import CSVLogger, Logger, TensorBoardLogger
from torch import nn

from ..defaults import NUM_WORKERS
from ..errors import ConfigError, MissingExtraError, SettingError, WeightsError
from ..io import resume_checkpoint, save_torch

__all__ = [
    "TrainerSettings",
    "LoggerName",
    "LOGGERS",
    "RUN_ENTRIES",
    "check_logger",
    "make_logger",
    "build_trainer",
    "run_contents",
    "check_run_folder",
    "clear_run",
    "load_resume",
    "first_process",
    "SafeCheckpointIO",
]

RUN_ENTRIES = ("config.yaml", "shifts.json", "logs", "checkpoints", "stego.ckpt", "leopart.ckpt")
"""What a training run writes in its folder: an overwrite removes exactly these."""

LoggerName = Literal["csv", "tensorboard", "none"]
LOGGERS: tuple[str, ...] = get_args(LoggerName)
"""The training loggers a config may name."""


@dataclass
class TrainerSettings:
    """The section every training config shares (Leopart's and STEGO's add their own): the data and
    backbone names, the batch, the seed, the loader processes, and the Lightning trainer's device,
    precision and logging. A method changes a default by declaring the field again."""

    dataset: str = "camvid"
    root: str | None = None
    backbone: str = "efficientnet_lite0"
    weights: str | None = None  # initial weights (any layout of `unseg docs checkpoints`) or "random"
    batch_size: int = 32  # per process
    seed: int = 0
    num_workers: int = NUM_WORKERS
    accelerator: str = "auto"
    devices: int = 1
    precision: str = "32-true"
    log_every: int = 10
    logger: LoggerName = "csv"  # under logs/: "csv" (metrics.csv), "tensorboard" (needs tensorboard) or "none"
    progress_bar: bool = True


def check_logger(name: str) -> None:
    """Fail before a run prepares its data when key ``logger`` is unknown or needs a package that is missing."""
    if name not in LOGGERS:
        raise ConfigError(f"key 'logger' = {name!r} is not one of {', '.join(LOGGERS)}")
    if name == "tensorboard" and not any(importlib.util.find_spec(p) for p in ("tensorboard", "tensorboardX")):
        raise MissingExtraError(
            "logger=tensorboard needs the tensorboard package: pip install tensorboard (or use logger=csv)"
        )


def make_logger(name: str, out: str | Path) -> Logger | None:
    """The logger ``name`` writing under ``out/logs/version_N/`` (CSV: ``metrics.csv``; TensorBoard: event
    files), or None for "none"."""
    check_logger(name)
    if name == "csv":
        return CSVLogger(out, name="logs")
    if name == "tensorboard":
        return TensorBoardLogger(out, name="logs")
    return None


def build_trainer(
    out: str | Path,
    logger: str,
    log_every: int,
    progress_bar: bool,
    callbacks: Sequence[Callback] = (),
    resume: tuple[str, dict[str, Any]] | None = None,
    **settings: Any,
) -> L.Trainer:
    """A trainer rooted at ``out`` with logger ``logger`` (:data:`LOGGERS`) whose checkpoints go through
    :class:`SafeCheckpointIO` (``resume``: the checkpoint :func:`load_resume` read, and its path);
    ``settings`` are the method's own :class:`lightning.Trainer` arguments (devices, strategy, precision, ...)."""
    out = Path(out)
    return L.Trainer(
        default_root_dir=out,
        logger=make_logger(logger, out) or False,
        log_every_n_steps=log_every,
        enable_progress_bar=progress_bar,
        enable_model_summary=False,
        use_distributed_sampler=False,
        callbacks=list(callbacks),
        plugins=[SafeCheckpointIO(resume)],
        **settings,
    )


class SafeCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint files through the package's own reading and writing.

    Reading never unpickles code: the safe loader (:func:`unseg.backbones.weights.read_checkpoint`)
    reads it, whatever ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD`` says, not Lightning's ``torch.load``.
    ``loaded``: (path, checkpoint) read and checked already by :func:`load_resume`, handed over
    as it is. Writing is atomic (:func:`unseg.io.save_torch`): a full disk leaves no checkpoint
    cut short under its name, and says so in one line.
    """

    def __init__(self, loaded: tuple[str, dict[str, Any]] | None = None) -> None:
        super().__init__()
        self.loaded = loaded

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None) -> None:
        save_torch(checkpoint, path)

    def load_checkpoint(self, path: Any, map_location: Any = None, weights_only: bool | None = None) -> dict[str, Any]:
        if self.loaded is not None and Path(path).resolve() == Path(self.loaded[0]).resolve():
            return self.loaded[1]
        return read_training_checkpoint(path)


def read_training_checkpoint(path: str | Path) -> dict[str, Any]:
    """A Lightning checkpoint read by the safe loader; a SettingError naming it when it cannot be read safely."""
    from ..backbones.weights import read_checkpoint

    try:
        return read_checkpoint(path)
    except WeightsError as exc:
        raise SettingError(f"--resume {path} was not loaded: {exc}") from None


def first_process() -> bool:
    """Whether this is the process that starts a run (rank 0 of node 0), not one a launcher started for
    another rank (Lightning's DDP children, torchrun's other ranks, another node): only it writes the run's
    config and judges the folder before the run."""
    return all(os.environ.get(k, "0") == "0" for k in ("RANK", "LOCAL_RANK", "NODE_RANK", "GROUP_RANK", "SLURM_PROCID"))


def run_contents(out: str | Path) -> list[str]:
    """What of a run folder ``out`` holds (its config, checkpoints, final weights): empty for a new run."""
    out = Path(out)
    held = [name for name in ("config.yaml", "stego.ckpt", "leopart.ckpt") if (out / name).exists()]
    checkpoints = out / "checkpoints"
    if checkpoints.is_dir() and any(checkpoints.iterdir()):
        held.append("checkpoints/")
    return held


def check_run_folder(out: str | Path, resume: str | Path | None = None, overwrite: bool = False) -> str | None:
    """The checkpoint a run in ``out`` resumes from (:func:`unseg.io.resume_checkpoint`), after checking
    the folder: one that holds a run is continued with ``resume``, or replaced with ``overwrite``; without
    either it is refused, so a run is never silently written over or mixed with another."""
    if resume is not None and overwrite:
        raise SettingError("--resume continues the run in --out and --overwrite replaces it: give one of them")
    held = run_contents(out) if first_process() else []  # other ranks find rank 0's fresh config.yaml there
    if held and resume is None and not overwrite:
        raise SettingError(
            f"run folder {out} holds a run ({', '.join(held)}); continue it with --resume last "
            "(resume='last'), replace it with --overwrite (overwrite=True), or choose another --out"
        )
    return resume_checkpoint(resume, out)


def clear_run(out: str | Path) -> None:
    """Remove what a run wrote in ``out`` (:data:`RUN_ENTRIES`), for the run that overwrites it; nothing else."""
    for name in RUN_ENTRIES:
        path = Path(out) / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif path.exists() or path.is_symlink():
            path.unlink()


def load_resume(
    module: nn.Module, path: str, module_keys: Callable[[dict[str, Any]], dict[str, Any]]
) -> dict[str, Any]:
    """The training checkpoint at ``path``, read safely and checked to fit ``module`` (its keys mapped to
    the module's by ``module_keys``): another method's checkpoint, or one of another configuration (dim,
    backbone, classes), is a SettingError before the run writes anything."""
    ckpt = read_training_checkpoint(path)
    state = ckpt.get("state_dict")
    if not isinstance(state, Mapping):
        raise SettingError(f"--resume {path} holds no state_dict: not a training checkpoint")
    theirs, ours = module_keys(dict(state)), module.state_dict()
    missing, extra = sorted(set(ours) - set(theirs)), sorted(set(theirs) - set(ours))
    shapes = [
        f"{k} {tuple(getattr(theirs[k], 'shape', ()))} vs {tuple(ours[k].shape)}"
        for k in sorted(ours)
        if k in theirs and tuple(getattr(theirs[k], "shape", ())) != tuple(ours[k].shape)
    ]
    if missing or extra or shapes:
        found = [
            f"{len(missing)} tensor(s) missing (e.g. {missing[0]})" if missing else "",
            f"{len(extra)} unexpected (e.g. {extra[0]})" if extra else "",
            f"other shapes: {shapes[0]}" + (f" and {len(shapes) - 1} more" if len(shapes) > 1 else "")
            if shapes
            else "",
        ]
        raise SettingError(
            f"--resume {path} does not fit this run's model ({'; '.join(f for f in found if f)}): "
            "it is another method's checkpoint, or the config changed (e.g. dim, backbone, "
            "classes); resume with the run's own config, or leave out --resume"
        )
    return ckpt
