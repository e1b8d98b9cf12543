"""Refinement of predicted segmentations: the dense CRF (optional extra ``unseg[crf]``)."""

from .crf import crf_batch, dense_crf

__all__ = ["crf_batch", "dense_crf"]
