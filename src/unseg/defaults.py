"""The defaults the protocols share, each defined once: every signature, config and help text imports them.

They are the settings of Leopart's evaluation protocols (``unseg docs evaluation``) that every
protocol and method here starts from; a value that belongs to one concept only lives with it
(the guided filter's in :mod:`unseg.features.upsample`, the spectral method's in
:class:`unseg.unsupervised.SpectralSettings`, a training run's in its config).
"""

from __future__ import annotations

__all__ = ["INPUT_SIZE", "MASK_SIZE", "PCA_DIM", "NITER", "NREDO", "SEEDS", "OVERCLUSTERS", "BATCH_SIZE", "NUM_WORKERS"]

INPUT_SIZE = 448
"""The input resolution, px (square): Leopart's evaluation input."""
MASK_SIZE = 100
"""The label resolution the clustering protocols score at, px (square)."""
PCA_DIM = 50
"""Dimensions the tokens are projected to (after standardising) before k-means."""
NITER = 100
"""faiss k-means iterations."""
NREDO = 5
"""faiss k-means restarts (the best objective is kept)."""
SEEDS = 5
"""Runs with seeds 0..SEEDS-1 whose results are reported as mean ± std."""
OVERCLUSTERS = (100,)
"""The cluster counts ``unseg eval cluster`` scores unless told otherwise."""
BATCH_SIZE = 16
"""Images (or windows) per forward pass when extracting features."""
NUM_WORKERS = 2
"""Data-loading processes."""
