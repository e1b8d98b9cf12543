"""`unseg demo`: the whole path on a real sample shipped with the package, offline, in minutes on a CPU.

EfficientNet-Lite0 (packaged ImageNet weights) -> 20 CamVid val images -> cached
features -> PCA + k-means -> Hungarian (K=11) and many-to-one (K=100) matching ->
metrics and colour overlays.
"""

from __future__ import annotations

from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import Any

from .defaults import MASK_SIZE, OVERCLUSTERS, SEEDS
from .evaluation.clustering import evaluate_clustering
from .features.cache import cached_masks
from .features.source import Source
from .features.transforms import DEFAULT_INPUT_SIZE
from .io import save_json
from .visualisation import palette, save_panel


def sample_root() -> Path:
    """The shipped CamVid sample (CamVid layout, split 'val')."""
    return Path(str(resources.files("unseg") / "assets" / "camvid_sample"))


def run_demo(
    out: str | Path = "demo_out",
    overclusters: int = OVERCLUSTERS[0],
    seeds: Sequence[int] = range(SEEDS),
    input_size: int = DEFAULT_INPUT_SIZE,
    mask_size: int = MASK_SIZE,
    device: str = "auto",
    progress: bool = True,
) -> dict[str, Any]:
    out = Path(out)
    source = Source(
        backbone="efficientnet_lite0",
        dataset="camvid",
        root=sample_root(),
        input_size=input_size,
        cache_dir=out / "cache",
        device=device,
        progress=progress,
    )
    val = source.load_split("val", mask_size)
    assert val.masks is not None  # loaded with a mask size
    dataset, cache, k = val.dataset, val.cache, val.num_classes
    results = evaluate_clustering(cache, val.masks, k, ks=(k, overclusters), seeds=seeds)
    print(
        f"unseg demo: EfficientNet-Lite0 (ImageNet, offline), {len(cache)} CamVid val images, input "
        f"{input_size}x{input_size}, features {cache.grid[0]}x{cache.grid[1]}x{cache.dim}, masks "
        f"{mask_size}x{mask_size}, PCA 50, faiss k-means (niter 100, nredo 5)"
    )
    for r in results:
        print("  " + r.summary())

    # overlays of the K = #classes segmentation (seed 0), clusters mapped to classes by Hungarian matching
    segmentation = results[0]
    assert segmentation.labels is not None and segmentation.mapping is not None  # the first seed's, always kept
    colours = palette(k)
    full_masks = cached_masks(cache, dataset, dataset[0]["mask"].shape)
    index = {s.id: s for s in dataset.samples}
    overlays = []
    for i, image_id in enumerate(cache.ids):
        pred = segmentation.mapping[segmentation.labels[i]]
        pred[pred < 0] = 255
        overlays.append(
            str(
                save_panel(
                    out / "overlays" / f"{image_id}.png",
                    dataset.load_image(index[image_id]),
                    pred.astype("uint8"),
                    colours,
                    full_masks[i],
                )
            )
        )
    report = {"results": [r.to_dict() for r in results], "overlays": overlays, "classes": list(dataset.class_names)}
    save_json(report, out / "metrics.json")
    print(
        f"  overlays (image | K={k} segmentation | ground truth): {out / 'overlays'}/  metrics: {out / 'metrics.json'}"
    )
    return report
