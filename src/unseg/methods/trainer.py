"""The Lightning trainer both training methods build, and its selectable logger.

Leopart and STEGO differ in what bounds a run (epochs or steps), how it spreads over
devices and which checkpoints it keeps; the rest is one choice made here: the run folder
is the trainer's root, the logger writes under ``logs/``, the methods' own samplers shard
the data (Lightning's distributed sampler is off), and no model summary is printed.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any, Literal, Sequence, get_args

import lightning as L
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import CSVLogger, Logger, TensorBoardLogger

from ..errors import ConfigError, MissingExtraError

__all__ = ["LoggerName", "LOGGERS", "check_logger", "make_logger", "build_trainer"]

LoggerName = Literal["csv", "tensorboard", "none"]
LOGGERS: tuple[str, ...] = get_args(LoggerName)


def check_logger(name: str) -> None:
    """Fail before a run prepares its data when key ``logger`` is unknown or needs a package that is missing."""
    if name not in LOGGERS:
        raise ConfigError(f"key 'logger' = {name!r} is not one of {', '.join(LOGGERS)}")
    if name == "tensorboard" and not any(importlib.util.find_spec(p) for p in ("tensorboard", "tensorboardX")):
        raise MissingExtraError("logger=tensorboard needs the tensorboard package: pip install tensorboard "
                                "(or use logger=csv)")


def make_logger(name: str, out: str | Path) -> Logger | None:
    """The logger ``name`` writing under ``out/logs/version_N/`` (CSV: ``metrics.csv``; TensorBoard: event
    files), or None for "none"."""
    check_logger(name)
    if name == "csv":
        return CSVLogger(out, name="logs")
    if name == "tensorboard":
        return TensorBoardLogger(out, name="logs")
    return None


def build_trainer(out: str | Path, logger: str, log_every: int, progress_bar: bool,
                  callbacks: Sequence[Callback] = (), **settings: Any) -> L.Trainer:
    """A trainer rooted at ``out`` with logger ``logger`` (:data:`LOGGERS`); ``settings`` are the method's own
    :class:`lightning.Trainer` arguments (devices, strategy, precision, run length, ...)."""
    out = Path(out)
    return L.Trainer(default_root_dir=out, logger=make_logger(logger, out) or False, log_every_n_steps=log_every,
                     enable_progress_bar=progress_bar, enable_model_summary=False, use_distributed_sampler=False,
                     callbacks=list(callbacks), **settings)
