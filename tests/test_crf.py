"""Dense CRF: cleans a noisy segmentation along image edges, runs the same in worker processes (as
many as the thread policy allows), and without pydensecrf fails naming the extra to install."""

from __future__ import annotations

import importlib.util
import sys

import numpy as np
import pytest
import torch

from unseg import threads
from unseg.errors import MissingExtraError
from unseg.postprocess import crf, crf_batch, dense_crf

needs_crf = pytest.mark.skipif(
    importlib.util.find_spec("pydensecrf") is None, reason='pydensecrf is not installed (pip install "unseg[crf]")'
)
H, W = 48, 64


def two_regions(seed: int, flip: float = 0.25) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(image, logits, labels): dark left / bright right halves; logits of labels with ``flip`` swapped."""
    rng = np.random.default_rng(seed)
    labels = np.zeros((H, W), np.int64)
    labels[:, W // 2 :] = 1
    image = np.where(labels[..., None] == 1, 200.0, 40.0) + rng.normal(0, 8, (H, W, 3))
    noisy = np.where(rng.random((H, W)) < flip, 1 - labels, labels)
    logits = 2 * np.eye(2, dtype=np.float32)[noisy].transpose(2, 0, 1)
    return np.clip(image, 0, 255).astype(np.uint8), logits, labels


@needs_crf
def test_crf_cleans_a_noisy_two_region_segmentation():
    image, logits, labels = two_regions(0)
    assert 0.2 < (logits.argmax(0) != labels).mean() < 0.3
    probs = dense_crf(image, logits)
    assert probs.shape == (2, H, W) and probs.dtype == np.float32
    np.testing.assert_allclose(probs.sum(0), 1, atol=1e-4)
    assert (probs.argmax(0) != labels).mean() < 0.05


@needs_crf
def test_a_read_only_image_as_a_decoded_photo_gives_the_same_marginals():
    """np.asarray of a PIL image is read-only, and pydensecrf takes only writable buffers."""
    image, logits, _ = two_regions(2)
    frozen = image.copy()
    frozen.setflags(write=False)
    np.testing.assert_array_equal(dense_crf(frozen, logits), dense_crf(image, logits))


@needs_crf
def test_low_resolution_logits_are_resized_to_the_image():
    image, _, labels = two_regions(1)
    coarse = torch.tensor(np.eye(2, dtype=np.float32)[labels[::8, ::8]].transpose(2, 0, 1))
    probs = dense_crf(image, coarse)
    assert probs.shape == (2, H, W) and (probs.argmax(0) != labels).mean() < 0.05


@needs_crf
def test_crf_batch_in_processes_equals_inline():
    pairs = [two_regions(seed)[:2] for seed in range(3)]
    images, logits = [p[0] for p in pairs], [p[1] for p in pairs]
    inline = crf_batch(images, logits, processes=1)
    parallel = crf_batch(images, logits, processes=2)
    assert len(parallel) == 3
    for a, b, image, x in zip(inline, parallel, images, logits, strict=True):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(a, dense_crf(image, x))


@needs_crf
@pytest.mark.parametrize("count", [1, 2])
def test_crf_batch_runs_as_many_processes_as_the_thread_policy_allows(monkeypatch, count):
    """Not the machine's cores: ``--threads`` / UNSEG_THREADS / OMP_NUM_THREADS bound the pool too."""
    sizes = []

    class RecordingPool:  # multiprocessing.Pool's interface, run inline
        def __init__(self, processes: int, initializer=None) -> None:
            sizes.append(processes)

        def __enter__(self):
            return self

        def __exit__(self, *exc) -> None:
            pass

        def starmap(self, fn, pairs, chunksize):
            return [fn(*pair) for pair in pairs]

    monkeypatch.setattr(crf.multiprocessing, "Pool", RecordingPool)
    monkeypatch.setattr(threads, "available_cores", lambda: 8)  # a machine with more cores than the count
    pairs = [two_regions(seed)[:2] for seed in range(3)]
    try:
        threads.set_threads(count)
        assert len(crf_batch([p[0] for p in pairs], [p[1] for p in pairs])) == 3
    finally:
        threads.set_threads(None)
    assert sizes == ([] if count == 1 else [count])  # one thread: inline, no pool


def test_missing_pydensecrf_names_the_extra(monkeypatch):
    for name in ("pydensecrf", "pydensecrf.densecrf", "pydensecrf.utils"):
        monkeypatch.setitem(sys.modules, name, None)  # makes the import fail
    image, logits, _ = two_regions(0)
    with pytest.raises(MissingExtraError, match=r'pip install "unseg\[crf\]"') as info:
        dense_crf(image, logits)
    assert isinstance(info.value, ImportError)
    with pytest.raises(MissingExtraError):
        crf_batch([image], [logits], processes=2)
