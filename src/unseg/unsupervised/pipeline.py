"""Fully unsupervised segmentation of a labelled split pair (Leopart; ``unseg docs methods``): stages and scores.

Three stages, each scored on val with Hungarian matching (K x #classes, dataset-level
confusion at ``mask_size``; unmatched predictions count as errors):

1. ``kmeans``: k-means with K = #classes on all tokens;
2. ``cbfe``: cluster-based foreground extraction, then K = #classes - 1 clusters on the
   foreground tokens and one background id;
3. ``cd``: k clusters on the foreground tokens (all tokens without CBFE) plus the
   background id, merged by Infomap communities of their co-occurrence graph
   (mean ± std over Infomap seeds).

As in the authors' code, the unsupervised parts (standardise + PCA 50, k-means, the
co-occurrence graph) are fitted on the train and val tokens together; labels are used
only to pick the CBFE threshold and the CD hyper-parameters (k, Markov time, edge
threshold: optuna TPE on train mIoU) and to score. The overclustering of stage 3 is fitted
on tokens (the authors cluster the tokens nearest-upsampled to 100x100, i.e. each token
weighted by the 9-16 pixels it covers); its maps are upsampled to ``mask_size`` for the
co-occurrence counts, as theirs.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ..clustering import match
from ..clustering.matching import class_predictions
from ..defaults import NITER, NREDO, PCA_DIM, SEEDS
from ..errors import SettingError
from ..evaluation.clustering import cluster_labels, fit_projection, pca_settings
from ..evaluation.metrics import ConfusionAccumulator, ScoresOverRuns, SegmentationScores, scores_from_confusion
from ..features.source import SplitData
from ..features.transforms import upsample_labels
from .cbfe import DEFAULT_FG_K, ForegroundExtraction, cluster_based_foreground, foreground_iou, foreground_targets
from .community import CD_KEYS, PUBLISHED, Overclustering, check_hyper_parameters, cooccurrence_graph, merge_confusion

__all__ = [
    "PUBLISHED",
    "SEARCH_SPACE",
    "StageResult",
    "FullyUnsupervisedResult",
    "fully_unsupervised_splits",
    "search_hyper_parameters",
    "resolve_background",
]
# (low, high, step) of the authors' search
SEARCH_SPACE = {"k": (99, 249, 10), "markov_time": (0.1, 2.0, 0.1), "weight_threshold": (0.01, 0.1, 0.01)}
SEARCH_SEED = 1000  # the authors' TPE sampler seed


@dataclass
class StageResult(ScoresOverRuns):
    """One stage's val (or train) scores over seeds, with its first run's predictions for reports."""

    stage: str
    split: str
    miou: list[float]
    pixel_accuracy: list[float]
    iou: list[list[float]]
    settings: dict[str, Any] = field(default_factory=dict)
    predictions: np.ndarray | None = field(default=None, repr=False)  # (N, H, W) class ids; C = no class
    confusion: np.ndarray | None = field(default=None, repr=False)  # first run's matched (C, C + 1) confusion

    def add(self, scores: SegmentationScores) -> None:
        self.miou.append(float(scores.miou))
        self.pixel_accuracy.append(float(scores.pixel_accuracy))
        self.iou.append([float(v) for v in scores.iou])

    def summary(self) -> str:
        s = self.settings
        what = {
            "kmeans": f"k-means K={s.get('k')} on all tokens",
            "cbfe": f"+ CBFE (threshold {s.get('threshold')}), K={s.get('k')} on foreground + background",
            "cd": f"+ CD, k={s.get('k')} mt={s.get('markov_time')} wt={s.get('weight_threshold')}",
        }[self.stage]
        return (
            f"{what:58s} mIoU {self.miou_mean:5.1f} ± {self.miou_std:.1f}  acc {self.accuracy_mean:5.1f}"
            f"  ({self.split}, {len(self.miou)} runs)"
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "stage": self.stage,
            "split": self.split,
            "miou": self.miou,
            "pixel_accuracy": self.pixel_accuracy,
            "iou": self.iou,
            "miou_mean": self.miou_mean,
            "miou_std": self.miou_std,
            "settings": self.settings,
        }


@dataclass
class FullyUnsupervisedResult:
    stages: list[StageResult]
    hyper_parameters: dict[str, Any]  # k, markov_time, weight_threshold and where they came from
    foreground: dict[str, Any] | None  # CBFE settings (threshold, cut, IoUs), None without CBFE
    search: list[dict[str, Any]]  # TPE trials: params and train mIoU
    settings: dict[str, Any]

    def stage(self, name: str) -> StageResult:
        return next(s for s in self.stages if s.stage == name)

    def summary(self) -> str:
        return "\n".join(s.summary() for s in self.stages)

    def to_dict(self) -> dict[str, Any]:
        return {
            "stages": [s.to_dict() for s in self.stages],
            "hyper_parameters": self.hyper_parameters,
            "foreground": self.foreground,
            "search": self.search,
            "settings": self.settings,
        }


def resolve_background(class_names: Sequence[str], background: Sequence[str | int] | None) -> list[int]:
    """Class ids making up "background": given names or ids, else the class named "background" if any."""
    names = [n.lower() for n in class_names]
    if background is None:
        return [names.index("background")] if "background" in names else []
    ids = []
    for b in background:
        if isinstance(b, int) or str(b).isdigit():
            ids.append(int(b))
        elif str(b).lower() in names:
            ids.append(names.index(str(b).lower()))
        else:
            raise ValueError(f"background class {b!r} is not one of {', '.join(class_names)}")
    return ids


def _score_maps(stage: StageResult, maps: np.ndarray, masks: np.ndarray, num_classes: int, num_ids: int) -> None:
    """Hungarian-match (N, H, W) id maps to classes, add the scores; keep the first run's predictions."""
    acc = ConfusionAccumulator(num_classes, num_ids)
    acc.update(masks, maps)
    mapping, matched = match(acc.matrix, "hungarian-iou")
    stage.add(scores_from_confusion(matched))
    if stage.predictions is None:
        stage.predictions, stage.confusion = class_predictions(maps, mapping, num_classes), matched


def search_hyper_parameters(
    objective: Callable[[dict[str, Any]], float], trials: int, seed: int = SEARCH_SEED
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """optuna TPE over :data:`SEARCH_SPACE` maximising ``objective(params)``; (best params, all trials)."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)

    def suggest(trial: Any) -> float:
        lo, hi, step = SEARCH_SPACE["k"]
        params = {"k": trial.suggest_int("k", lo, hi, step=step)}
        for name in ("markov_time", "weight_threshold"):
            lo, hi, step = SEARCH_SPACE[name]
            params[name] = round(trial.suggest_float(name, lo, hi, step=step), 4)
        return objective(params)

    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=seed))
    study.optimize(suggest, n_trials=trials)
    history = [
        {**{k: (round(v, 4) if isinstance(v, float) else v) for k, v in t.params.items()}, "train_miou": t.value}
        for t in study.trials
    ]
    best = {k: (round(v, 4) if isinstance(v, float) else v) for k, v in study.best_params.items()}
    return best, history


def check_settings(
    hyper_parameters: dict[str, Any] | None, trials: int, runs: int, kmeans_seeds: Sequence[int]
) -> None:
    """A one-line error, before any work, for settings that leave a stage with nothing to do."""
    if hyper_parameters is not None:
        check_hyper_parameters(hyper_parameters)
    if len(kmeans_seeds) < 1 or runs < 1 or (hyper_parameters is None and trials < 1):
        raise SettingError(
            f"k-means seeds {len(kmeans_seeds)}, Infomap runs {runs}, search trials {trials}: each must be at least 1"
        )


def fully_unsupervised_splits(
    train: SplitData,
    val: SplitData,
    *,
    background: Sequence[str | int] | None = None,
    hyper_parameters: dict[str, Any] | None = None,
    trials: int = 300,
    runs: int = 10,
    kmeans_seeds: Sequence[int] = range(SEEDS),
    fg_k: int = DEFAULT_FG_K,
    clustering_seed: int = 0,
    preferred_modules: int | None = None,
    pca_dim: int | None = PCA_DIM,
    niter: int = NITER,
    nredo: int = NREDO,
    search_seed: int = SEARCH_SEED,
) -> FullyUnsupervisedResult:
    """k-means, + CBFE, + community detection fitted on ``train`` + ``val``; scores on ``val``.

    Both splits come with masks at the same size (:meth:`unseg.features.Source.load_split`).
    ``background``: class names or ids that are background for CBFE (default: a class named
    "background"; none -> no CBFE). ``hyper_parameters``: CD's ``k``, ``markov_time``,
    ``weight_threshold`` (e.g. ``PUBLISHED["dino_vits16"]``); None -> TPE search with
    ``trials`` trials on ``train``. ``preferred_modules`` defaults to #classes - 1 with
    CBFE (background is one more), else #classes;
    ``runs`` Infomap seeds 0.. (Infomap seeds 1..).
    """
    check_settings(hyper_parameters, trials, runs, kmeans_seeds)
    train_split, val_split = train.dataset.split, val.dataset.split
    train_cache, val_cache, train_masks, val_masks = train.cache, val.cache, train.masks, val.masks
    if train_masks is None or val_masks is None:
        raise ValueError("train and val need masks: load them with a mask size")
    if train_cache.grid != val_cache.grid:
        raise ValueError(f"train and val token grids differ: {train_cache.grid} vs {val_cache.grid}")
    if train_masks.shape[-2:] != val_masks.shape[-2:]:
        raise ValueError(f"train and val masks differ in size: {train_masks.shape[-2:]} vs {val_masks.shape[-2:]}")
    msize = tuple(val_masks.shape[-2:])
    num_classes = val.num_classes
    grid, n_train = train_cache.grid, len(train_cache)
    tokens = fit_projection([train_cache, val_cache], pca_dim, keep_bytes=math.inf)[1]  # float64 fit
    val_images = slice(n_train, None)
    common = {**pca_settings(pca_dim, train_cache.dim), "niter": niter, "nredo": nredo, "mask_size": list(msize)}

    baseline = StageResult("kmeans", val_split, [], [], [], {"k": num_classes, "seeds": list(kmeans_seeds), **common})
    for seed in kmeans_seeds:
        maps = cluster_labels(tokens, grid, num_classes, seed, niter, nredo)[val_images]
        _score_maps(
            baseline, upsample_labels(torch.from_numpy(maps), msize).numpy(), val_masks, num_classes, num_classes
        )
    stages = [baseline]

    bg_ids = resolve_background(val.dataset.class_names, background)
    fg: ForegroundExtraction | None = None
    foreground_info = None
    if bg_ids:
        saliency = np.concatenate([train_cache.saliency_array(), val_cache.saliency_array()])
        fg = cluster_based_foreground(
            tokens,
            grid,
            saliency,
            n_train,
            foreground_targets(train_masks, bg_ids),
            k=fg_k,
            seed=clustering_seed,
            niter=niter,
            nredo=nredo,
        )
        val_targets = foreground_targets(val_masks, bg_ids)  # for the report only: never used to fit
        foreground_info = {
            **fg.settings(),
            "background_classes": [val.dataset.class_names[i] for i in bg_ids],
            "foreground_iou_val": foreground_iou(fg.masks[val_images], val_targets),
            "search": fg.search.to_dict(),
        }
        stage = StageResult(
            "cbfe",
            val_split,
            [],
            [],
            [],
            {"k": num_classes - 1, "threshold": fg.threshold, "fg_k": fg_k, "seeds": list(kmeans_seeds), **common},
        )
        for seed in kmeans_seeds:
            over = Overclustering(tokens, grid, fg.masks, num_classes - 1, msize, seed, niter, nredo)
            _score_maps(stage, over.maps(val_images), val_masks, num_classes, num_classes)
        stages.append(stage)

    # with CBFE, background is its own community: the others make up the remaining classes
    preferred = preferred_modules or (num_classes - 1 if fg is not None else num_classes)
    cache: dict[int, Overclustering] = {}

    def overclustering(k: int) -> Overclustering:
        if k not in cache:
            cache[k] = Overclustering(
                tokens, grid, None if fg is None else fg.masks, k, msize, clustering_seed, niter, nredo
            )
        return cache[k]

    def cd_stage(
        params: dict[str, Any], split: str, images: slice, masks: np.ndarray, keep_predictions: bool = False
    ) -> StageResult:
        over = overclustering(params["k"])
        conf = over.confusion(images, masks, num_classes)
        stage = StageResult(
            "cd",
            split,
            [],
            [],
            [],
            {
                **params,
                "runs": runs,
                "preferred_modules": preferred,
                "infomap_seeds": [s + 1 for s in range(runs)],
                "clustering_seed": clustering_seed,
                "communities": [],
                "edges": len(cooccurrence_graph(over.matrix, params["weight_threshold"])),
                **common,
            },
        )
        for seed in range(runs):
            communities = over.communities(params["markov_time"], params["weight_threshold"], preferred, seed)
            mapping, matched = match(merge_confusion(conf, communities), "hungarian-iou")
            stage.add(scores_from_confusion(matched))
            stage.settings["communities"].append(int(communities.max()) + 1)
            if keep_predictions and stage.predictions is None:
                stage.predictions = class_predictions(communities[over.maps(images)], mapping, num_classes)
                stage.confusion = matched
        return stage

    history: list[dict[str, Any]] = []
    if hyper_parameters is None:
        train_images = slice(0, n_train)
        params, history = search_hyper_parameters(
            lambda p: cd_stage(p, train_split, train_images, train_masks).miou_mean, trials, search_seed
        )
        params = {**params, "source": f"TPE search on {train_split}, {trials} trials, sampler seed {search_seed}"}
    else:
        params = {"source": "given", **hyper_parameters}
    stages.append(cd_stage({k: params[k] for k in CD_KEYS}, val_split, val_images, val_masks, keep_predictions=True))

    settings = {
        "train_split": train_split,
        "val_split": val_split,
        "num_train": n_train,
        "num_val": len(val_cache),
        "num_classes": num_classes,
        "class_names": list(val.dataset.class_names),
        "grid": list(grid),
        **common,
        "matching": "hungarian on the dataset-level confusion; unmatched predictions count as errors",
        "fitting": "PCA, k-means and the co-occurrence graph on train + val tokens (no labels)",
    }
    return FullyUnsupervisedResult(stages, params, foreground_info, history, settings)
