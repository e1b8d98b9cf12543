"""Fully connected CRF refinement of segmentation logits (``unseg docs methods``, STEGO's ``crf.py``).

Unary: -log softmax of the logits bilinearly resized (align_corners=False) to the image.
Pairwise: a Gaussian kernel (sxy 1, compat 3) and a bilateral kernel (sxy 67, srgb 3,
compat 4) on the un-normalised uint8 image; 10 mean-field iterations. STEGO passes the
image as BGR; the bilateral kernel has one ``srgb`` for all channels, so channel order
does not change the result and the image is used as RGB.

pydensecrf is optional (``pip install "unseg[crf]"``, PyPI ``pydensecrf2``, built from
source) and imported only when a CRF runs. Inference is single-threaded C++, so
:func:`crf_batch` spreads images over processes, as many as the one thread policy allows
(:mod:`unseg.threads`).
"""

from __future__ import annotations

import math
import multiprocessing
from collections.abc import Sequence
from types import ModuleType

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import MissingExtraError
from ..threads import get_threads

__all__ = ["dense_crf", "crf_batch", "MAX_ITER", "POS_XY_STD", "POS_W", "BI_XY_STD", "BI_RGB_STD", "BI_W"]

MAX_ITER = 10
POS_XY_STD, POS_W = 1, 3
BI_XY_STD, BI_RGB_STD, BI_W = 67, 3, 4

Logits = np.ndarray | torch.Tensor


def _pydensecrf() -> tuple[ModuleType, ModuleType]:
    """pydensecrf's ``densecrf`` and ``utils`` modules, or an error naming the extra to install."""
    try:
        import pydensecrf.densecrf as dcrf
        import pydensecrf.utils as utils
    except ImportError as exc:
        raise MissingExtraError(
            'the dense CRF needs pydensecrf; install it with pip install "unseg[crf]" '
            f"(PyPI package pydensecrf2, compiled from source) ({exc})"
        ) from exc
    return dcrf, utils


def _softmax(logits: Logits, size: tuple[int, int]) -> np.ndarray:
    """(C, H, W) float32 class probabilities of the logits bilinearly resized to ``size``."""
    x = torch.as_tensor(logits, dtype=torch.float32)
    if x.ndim != 3:
        raise ValueError(f"logits must be (C, h, w), got shape {tuple(x.shape)}")
    return F.softmax(F.interpolate(x[None], size=size, mode="bilinear", align_corners=False)[0], dim=0).numpy()


def dense_crf(image: np.ndarray, logits: Logits) -> np.ndarray:
    """(C, H, W) float32 CRF marginals of ``logits`` (C, h, w) on ``image`` (H, W, 3) uint8."""
    dcrf, utils = _pydensecrf()
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"image must be an (H, W, 3) uint8 array, got {image.dtype} {image.shape}")
    h, w = image.shape[:2]
    unary = np.ascontiguousarray(utils.unary_from_softmax(_softmax(logits, (h, w))))
    crf = dcrf.DenseCRF2D(w, h, len(unary))
    crf.setUnaryEnergy(unary)
    crf.addPairwiseGaussian(sxy=POS_XY_STD, compat=POS_W)
    # pydensecrf takes a writable buffer; a decoded photo (np.asarray of a PIL image) is read-only: copied then
    rgb = np.require(image, np.uint8, ["C_CONTIGUOUS", "WRITEABLE"])
    crf.addPairwiseBilateral(sxy=BI_XY_STD, srgb=BI_RGB_STD, rgbim=rgb, compat=BI_W)
    return np.asarray(crf.inference(MAX_ITER), dtype=np.float32).reshape(len(unary), h, w)


def _init_worker() -> None:
    torch.set_num_threads(1)  # one process per core; a forked OpenMP pool must not be reused


def crf_batch(images: Sequence[np.ndarray], logits: Sequence[Logits], processes: int | None = None) -> list[np.ndarray]:
    """:func:`dense_crf` of each (image, logits) pair, in ``processes`` worker processes.

    ``None`` uses the thread count (:func:`unseg.threads.get_threads`: ``--threads``, ``UNSEG_THREADS``,
    ...); 1 runs inline. Pairs go to the workers in chunks.
    """
    if len(images) != len(logits):
        raise ValueError(f"{len(images)} images but {len(logits)} logits")
    _pydensecrf()  # fail here, not once per worker
    processes = min(processes or get_threads(), len(images))
    if processes <= 1:
        return [dense_crf(i, x) for i, x in zip(images, logits, strict=True)]
    chunk = math.ceil(len(images) / (4 * processes))
    with multiprocessing.Pool(processes, initializer=_init_worker) as pool:
        return pool.starmap(dense_crf, zip(images, logits, strict=True), chunksize=chunk)
