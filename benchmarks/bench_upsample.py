"""Time and peak memory per image of each feature upsampler (``unseg docs upsampling``).

Synthetic features of a backbone's shape (default: EfficientNet-Lite0, 432 channels on a
28x28 grid at 448 px) and a random guide, upsampled to each target size. Memory: the peak
of the process's resident set above the start on CPU (Linux /proc, sampled by a thread), or
``torch.cuda.max_memory_allocated`` on a GPU. Also times the PCA-50 space the clustering
protocol upsamples in. Run: `python benchmarks/bench_upsample.py [--device cuda]`.
"""

from __future__ import annotations

import argparse
import os
import platform
import threading
import time

import torch

from unseg.features.upsample import Upsampling


def rss() -> int:
    """Resident set size of this process in bytes (Linux)."""
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class PeakRSS:
    """Peak resident memory above the level at entry, sampled every millisecond."""

    def __enter__(self) -> PeakRSS:
        self.base = self.peak = rss()
        self.running = True
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()
        return self

    def _sample(self) -> None:
        while self.running:
            self.peak = max(self.peak, rss())
            time.sleep(0.001)

    def __exit__(self, *exc: object) -> None:
        self.running = False
        self.thread.join()

    @property
    def mib(self) -> float:
        return (self.peak - self.base) / 2**20


def measure(
    up: Upsampling, feats: torch.Tensor, size: tuple[int, int], repeats: int, device: torch.device
) -> tuple[float, float]:
    """(seconds per image, peak MiB) of upsampling ``feats`` to ``size``."""
    guide = torch.rand(3, *size, device=device) if up.guided else None
    up.apply(feats, size, guide)  # warm-up
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    with PeakRSS() as rss:
        start = time.perf_counter()
        for _ in range(repeats):
            out = up.apply(feats, size, guide)
            del out
        if device.type == "cuda":
            torch.cuda.synchronize()
        seconds = (time.perf_counter() - start) / repeats
    mib = (torch.cuda.max_memory_allocated() - base) / 2**20 if device.type == "cuda" else rss.mib
    return seconds, mib


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--dims", type=int, nargs="+", default=[432, 50], help="feature channels (raw, PCA space)")
    p.add_argument("--grid", type=int, nargs=2, default=[28, 28], help="token grid h w")
    p.add_argument("--sizes", type=int, nargs="+", default=[100, 224, 448], help="square target sizes")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    name = (
        torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else f"{platform.processor() or 'cpu'}, {args.threads} thread(s)"
    )
    print(
        f"feature upsampling per image on {name}, grid {args.grid[0]}x{args.grid[1]}, "
        f"guided: the API's defaults ({Upsampling('guided').describe()}); {args.repeats} repeats"
    )
    print(f"{'method':9s} {'dim':>5s} {'target':>9s} {'ms/img':>9s} {'peak MiB':>9s} {'output MiB':>10s}")
    for dim in args.dims:
        feats = torch.randn(dim, *args.grid, device=device)
        for side in args.sizes:
            size = (side, side)
            for method in ("bilinear", "guided"):
                seconds, mib = measure(Upsampling(method), feats, size, args.repeats, device)
                out_mib = dim * side * side * 4 / 2**20
                print(
                    f"{method:9s} {dim:5d} {side:4d}x{side:<4d} {seconds * 1e3:9.1f} {mib:9.1f} {out_mib:10.1f}",
                    flush=True,
                )


if __name__ == "__main__":
    main()
