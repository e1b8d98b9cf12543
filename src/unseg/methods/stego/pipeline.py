"""STEGO from a config to numbers: data preparation, training, evaluation and the study's sweep.

What the ``unseg train stego`` / ``unseg eval stego`` / ``unseg stego`` commands call.
Every step reuses the feature cache: the backbone runs once per split and input size,
and the kNN table, the five crops and the masks are cached beside it.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ...clustering.matching import STEGO_MATCHING
from ...errors import ConfigError, SettingError
from ...evaluation.metrics import DEFAULT_ABSENT
from ...features import Source, SplitData, default_cache_root
from ...features.extract import images_digest
from ...features.upsample import Upsampling, iter_guides
from ...io import atomic_path, save_json
from ..projections import PROJECTIONS, projection_head
from ..trainer import check_run_folder
from .checkpoint import load_stego
from .evaluate import Refine, StegoScores, evaluate_stego
from .fivecrop import five_crop_dataset
from .knn import knn_indices
from .train import StegoConfig, check_config, train_stego

TRAIN_MASK_SIZE = 100  # label resolution of the linear probe's training loss on cached features


def split_data(
    cfg: StegoConfig,
    split: str,
    cache_dir: str | Path | None = None,
    device: str = "auto",
    mask_size: int | None = None,
    views: dict[str, Any] | None = None,
) -> SplitData:
    """Cached features and masks of ``split``: training splits five-cropped (if configured) at
    ``input_size``; evaluation splits at ``val_input_size`` with masks at that size. ``views``:
    :class:`unseg.features.Source`'s ``window``, ``window_overlap``, ``scales`` (e.g. to score
    a head on features of a larger input seen through windows)."""
    if cfg.root is None:
        raise ConfigError(
            "key 'root' is not set: pass root=PATH, the dataset's folder (a shipped config names no folder of yours)"
        )
    training = split == cfg.train_split
    cache_root = Path(cache_dir) if cache_dir is not None else default_cache_root()
    size = cfg.input_size if training else cfg.val_input_size
    source = Source(
        cfg.backbone,
        cfg.weights,
        dataset=cfg.dataset,
        root=cfg.root,
        input_size=size,
        cache_dir=cache_root,
        device=device,
        progress=False,
        **(views or {}),
    )
    dataset = source.build_dataset(split)
    if training and cfg.five_crop:
        # the crops answer only for the images they were cut from: their identity names the folder
        crops = f"{cfg.dataset}-{split}-{cfg.crop_ratio}-{images_digest(dataset)}"
        dataset = five_crop_dataset(dataset, cache_root.parent / "fivecrop" / crops, crop_ratio=cfg.crop_ratio)
    return source.load_split(mask_size=mask_size or (TRAIN_MASK_SIZE if training else size), dataset=dataset)


def fit_stego(
    cfg: StegoConfig,
    out_dir: str | Path,
    cache_dir: str | Path | None = None,
    resume: str | None = None,
    head: torch.nn.Conv2d | None = None,
    train: SplitData | None = None,
    overwrite: bool = False,
) -> Any:
    """Train on the cached training split with its kNN table; returns the Lightning module. ``out_dir``
    holding a run is refused unless ``resume`` or ``overwrite`` is given (:func:`train_stego`)."""
    if cfg.data_source != "cache":
        raise ConfigError("fit_stego trains on cached features (data_source: cache); for images call train_stego")
    check_config(cfg)  # before the data is prepared
    check_run_folder(out_dir, resume, overwrite)
    train = train or split_data(cfg, cfg.train_split, cache_dir)
    knn = knn_indices(train.cache, cfg.knn_k)
    return train_stego(
        cfg, train.cache, knn, masks=train.masks, out_dir=out_dir, resume=resume, head=head, overwrite=overwrite
    )


def crf_refine(data: SplitData, processes: int | None = None) -> Refine:
    """Dense CRF on the evaluation images (resized to the masks' size), a batch at a time in parallel."""
    from ...postprocess import crf_batch  # optional extra: imported only when a CRF is asked for

    if data.masks is None:
        raise ValueError("the CRF refines at the masks' size: load the split with a mask size")
    index = {s.id: s for s in data.dataset.samples}
    height, width = data.masks.shape[-2:]

    def refine(indices: list[int], scores: torch.Tensor) -> torch.Tensor:
        images = [np.array(data.dataset.load_image(index[data.cache.ids[i]]).resize((width, height))) for i in indices]
        probs = crf_batch(images, [s.cpu().numpy() for s in scores], processes=processes)
        return torch.from_numpy(np.log(np.stack(probs) + 1e-8)).to(scores.device)

    return refine


def evaluate_run(
    module_or_path: Any,
    val: SplitData,
    n_classes: int,
    crf: bool = False,
    processes: int | None = None,
    keep_predictions: bool = False,
    matching: str = STEGO_MATCHING,
    absent: str = DEFAULT_ABSENT,
    trust_checkpoint: bool = False,
    upsample: Upsampling | None = None,
) -> StegoScores:
    """Both probes of a trained module or a STEGO checkpoint on ``val``, optionally CRF-refined
    (``trust_checkpoint``: unpickle the checkpoint fully, which runs code in it). ``upsample``:
    how codes reach the masks' size (default bilinear, STEGO's; guided reads the val images)."""
    if val.masks is None:
        raise ValueError("val needs masks: load it with a mask size")
    if isinstance(module_or_path, (str, Path)):
        head, cluster_probe, linear_probe, _ = load_stego(
            module_or_path, n_classes=n_classes, trust_checkpoint=trust_checkpoint
        )
    else:
        head, cluster_probe, linear_probe = (
            module_or_path.net,
            module_or_path.cluster_probe,
            module_or_path.linear_probe,
        )
    refine = crf_refine(val, processes) if crf else None
    guides = (
        iter_guides(val.dataset, val.cache.ids, val.masks.shape[-2:])
        if upsample is not None and upsample.guided
        else None
    )
    return evaluate_stego(
        head,
        cluster_probe,
        linear_probe,
        val.cache,
        val.masks,
        n_classes,
        refine=refine,
        keep_predictions=keep_predictions,
        matching=matching,
        absent=absent,
        upsample=upsample,
        guides=guides,
    )


SWEEP_DIMS = (3, 8, 16, 32, 70, 128)  # the study's code dimensions
SWEEP_METHODS = ("stego", "pca", "random", "raw")  # STEGO heads against the fixed projections and raw features
SWEEP_OUT = "runs/stego_sweep"


def dimension_sweep(
    cfg: StegoConfig,
    dims: Sequence[int] = SWEEP_DIMS,
    methods: Sequence[str] = SWEEP_METHODS,
    seeds: Sequence[int] = (0,),
    out_dir: str | Path = SWEEP_OUT,
    cache_dir: str | Path | None = None,
    crf: bool = False,
) -> list[dict[str, Any]]:
    """The study's comparison: STEGO heads and fixed projections (``raw`` once, at the feature dim)
    scored by the same probes, per dim and seed. Writes ``results.csv``, ``results.json`` and
    ``miou_vs_dim.png`` to ``out_dir``."""
    unknown = [m for m in methods if m != "stego" and m not in PROJECTIONS]
    if unknown:
        raise SettingError(f"sweep methods {unknown} are not among stego, {', '.join(PROJECTIONS)}")
    out = Path(out_dir)
    train = split_data(cfg, cfg.train_split, cache_dir)
    val = split_data(cfg, cfg.val_split, cache_dir)
    rows = []
    runs = [(m, d) for m in methods if m != "raw" for d in dims] + (
        [("raw", train.cache.dim)] if "raw" in methods else []
    )
    for method, dim in runs:
        for seed in seeds:
            run_cfg = replace(cfg, dim=dim, seed=seed, progress_bar=False)
            head = None if method == "stego" else projection_head(method, train.cache, dim, seed=seed)
            # a sweep's runs are its own scratch: a sweep run again replaces them
            module = fit_stego(
                run_cfg, out / f"{method}-{dim}-{seed}", cache_dir, head=head, train=train, overwrite=True
            )
            for refined in [False, True] if crf else [False]:
                scores = evaluate_run(module, val, cfg.n_classes, crf=refined)
                rows.append(
                    {
                        "method": method,
                        "dim": dim,
                        "seed": seed,
                        "crf": refined,
                        "cluster_miou": scores.cluster.miou,
                        "cluster_acc": scores.cluster.pixel_accuracy,
                        "linear_miou": scores.linear.miou,
                        "linear_acc": scores.linear.pixel_accuracy,
                    }
                )
                print(f"{method:7s} dim {dim:4d} seed {seed} crf {str(refined):5s}  {scores.summary()}", flush=True)
    write_sweep(rows, out, cfg)
    return rows


def write_sweep(rows: list[dict[str, Any]], out: Path, cfg: StegoConfig) -> None:
    with atomic_path(out / "results.csv") as tmp, open(tmp, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    save_json(
        {
            "protocol": {
                "dataset": cfg.dataset,
                "backbone": cfg.backbone,
                "train_split": cfg.train_split,
                "val_split": cfg.val_split,
                "input_size": cfg.input_size,
                "val_input_size": cfg.val_input_size,
                "max_steps": cfg.max_steps,
                "batch_size": cfg.batch_size,
                "matching": f"{STEGO_MATCHING} (cluster probe)",
                "flip_tta": True,
            },
            "rows": rows,
        },
        out / "results.json",
    )
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for (method, crf), group in _groups(rows).items():
        dims = sorted({r["dim"] for r in group})
        means = [np.mean([r["cluster_miou"] for r in group if r["dim"] == d]) for d in dims]
        ax.plot(dims, means, marker="o", label=f"{method}{' + CRF' if crf else ''}")
    ax.set_xscale("log")
    ax.set_xlabel("code dimension")
    ax.set_ylabel("cluster-probe mIoU")
    ax.set_title(f"{cfg.dataset} / {cfg.backbone}")
    ax.legend()
    fig.tight_layout()
    with atomic_path(out / "miou_vs_dim.png") as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)


def _groups(rows: list[dict[str, Any]]) -> dict[tuple[str, bool], list[dict[str, Any]]]:
    groups: dict[tuple[str, bool], list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["method"], r["crf"]), []).append(r)
    return groups
