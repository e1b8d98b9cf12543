"""How a command talks to its user: unseg's log lines on stderr, through one handler, while it runs."""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Iterator

__all__ = ["stderr_logging"]


@contextlib.contextmanager
def stderr_logging(verbose: bool) -> Iterator[None]:
    """unseg's log lines on stderr inside the block (INFO with ``verbose``, else WARNING; always which network a
    weights file gave), through one handler on the ``unseg`` logger.

    Lightning's loggers keep their own handlers; a handler on the root logger (``basicConfig``)
    would print each of their lines a second time. The loggers are restored afterwards.
    """
    logger, backbones = logging.getLogger("unseg"), logging.getLogger("unseg.backbones")
    levels = logger.level, backbones.level
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    logger.addHandler(handler)
    logger.setLevel(logging.INFO if verbose else logging.WARNING)
    backbones.setLevel(logging.INFO)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(levels[0])
        backbones.setLevel(levels[1])
