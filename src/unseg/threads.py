"""The one thread policy: how many cores torch, faiss (OpenMP), BLAS and parallel jobs may keep busy.

Each of these libraries starts as many threads as it sees cores, so together they run
several times more busy threads than the machine has, and slow each other down on a
shared machine. The count is, in order: ``set_threads(n)`` (the CLI's ``--threads``),
the ``UNSEG_THREADS`` variable, ``OMP_NUM_THREADS``, the cores this process may run on;
it never exceeds those cores. Independent jobs (k-means seeds and restarts) share it:
``parallel_map`` runs ``w`` jobs at once with ``count // w`` faiss threads each, or with a
fixed count per job where the result must not depend on the machine.

Results do not depend on the count: a BLAS product splits its work over its threads, and
how it splits changes the rounding of float sums, so the numeric steps whose output is kept
(PCA, k-means, assignment) run their products on one BLAS thread each and get their speed
from independent blocks run side by side (``serial_blas`` and ``per_job=1``).

Data-loader workers need nothing here: torch's worker loop already sets one torch
thread per worker process (``torch.utils.data._utils.worker``).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager, contextmanager
from typing import TypeVar

from threadpoolctl import threadpool_limits

from .errors import ConfigError

__all__ = [
    "available_cores",
    "resolve_threads",
    "set_threads",
    "get_threads",
    "parallel_map",
    "serial_blas",
    "one_torch_thread",
]

ENV = "UNSEG_THREADS"
T = TypeVar("T")
R = TypeVar("R")
log = logging.getLogger(__name__)
_threads: int | None = None  # set by set_threads


def available_cores() -> int:
    """Cores this process may run on (its CPU affinity, which containers and taskset narrow)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _parse(value: str, name: str) -> int:
    # OMP_NUM_THREADS may be a nesting list such as "4,2": its first level is the count
    text = value.split(",")[0].strip()
    if not text.isdigit() or int(text) < 1:
        raise ConfigError(f"{name}={value!r} is not a thread count; use a whole number >= 1")
    return int(text)


def resolve_threads(n: int | None = None) -> int:
    """The thread count from ``n``, else UNSEG_THREADS, else OMP_NUM_THREADS, else the cores; at most the cores."""
    if n is not None:
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ConfigError(f"--threads {n!r} is not a thread count; use a whole number >= 1")
        wanted = n
    elif os.environ.get(ENV, "").strip():
        wanted = _parse(os.environ[ENV], ENV)
    elif os.environ.get("OMP_NUM_THREADS", "").strip():
        wanted = _parse(os.environ["OMP_NUM_THREADS"], "OMP_NUM_THREADS")
    else:
        wanted = available_cores()
    cores = available_cores()
    if wanted > cores:
        log.info("%d threads asked for, %d cores available: using %d", wanted, cores, cores)
    return min(wanted, cores)


def set_threads(n: int | None = None) -> int:
    """Apply the policy to torch, faiss and every BLAS (numpy's, faiss's); returns the count.

    Call it once at startup, from the main thread: faiss's OpenMP count is per thread,
    which is why :func:`parallel_map` sets it again in each of its workers.
    """
    global _threads
    import faiss
    import torch

    count = resolve_threads(n)
    torch.set_num_threads(count)
    faiss.omp_set_num_threads(count)
    threadpool_limits(count)
    _threads = count
    return count


def get_threads() -> int:
    """The count set by :func:`set_threads`, else the one the environment asks for."""
    return _threads if _threads is not None else resolve_threads()


def _faiss_threads(count: int) -> None:
    import faiss

    faiss.omp_set_num_threads(count)


def serial_blas() -> AbstractContextManager:
    """Every BLAS (numpy's, faiss's) on one thread inside the block: products whose rounding does
    not depend on the thread count. Run independent blocks side by side with :func:`parallel_map`."""
    return threadpool_limits(1, user_api="blas")


@contextmanager
def one_torch_thread() -> Iterator[None]:
    """torch on one thread inside the block (its count is process-wide): for torch jobs run side by side
    with :func:`parallel_map`, which then keep the busy threads within the policy, and whose sums
    do not depend on the thread count."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def parallel_map(
    fn: Callable[[T], R], items: Iterable[T], threads: int | None = None, per_job: int | None = None
) -> list[R]:
    """``[fn(i) for i in items]`` with up to ``threads`` (default :func:`get_threads`) jobs at once.

    For work that releases the GIL (faiss, numpy products). The busy threads never exceed
    ``threads``: ``w`` jobs run side by side with ``threads // w`` faiss threads each, or with
    ``per_job`` threads each (then ``threads // per_job`` jobs at once), so that a job computes
    the same whatever the machine. Results come back in the order of ``items``; a job's
    exception is raised here.
    """
    items = list(items)
    total = get_threads() if threads is None else resolve_threads(threads)
    if per_job is not None and per_job < 1:
        raise ValueError(f"per_job must be >= 1, got {per_job}")
    workers = max(1, min(total // (per_job or 1), len(items)))
    inner = per_job or total // workers
    if workers == 1:
        import faiss

        before = faiss.omp_get_max_threads()
        faiss.omp_set_num_threads(inner)
        try:
            return [fn(item) for item in items]
        finally:
            faiss.omp_set_num_threads(before)
    with ThreadPoolExecutor(workers, initializer=_faiss_threads, initargs=(inner,)) as pool:
        return list(pool.map(fn, items))
