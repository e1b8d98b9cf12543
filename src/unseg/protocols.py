"""The evaluation protocols from names (or any model) to numbers, text and reports: what the CLI calls.

Each protocol loads its splits through :meth:`unseg.features.Source.load_split` and returns a
result that carries its settings (a printed number always states its protocol), says what
ran (``describe()``, the text ``unseg eval`` prints) and writes a report folder from the
data it already holds (``write_report(dir)``). The scoring itself lives in the leaf modules
``unseg.evaluation`` and ``unseg.unsupervised`` (``unseg docs evaluation``).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Literal, Protocol, TypeVar

import numpy as np
import torch
from torch import nn

from .catalog import DEFAULT_SEGMENTER, FitContext, render_each, segmenter
from .clustering.matching import CLUSTERING_MATCHING, class_predictions, match, resolve_method
from .defaults import MASK_SIZE, NITER, NREDO, OVERCLUSTERS, PCA_DIM, SEEDS
from .errors import SettingError
from .evaluation.clustering import ClusteringResult, check_clustering_settings, evaluate_clustering
from .evaluation.heads import HeadResult, evaluate_head, head_settings, train_head
from .evaluation.metrics import (
    DEFAULT_ABSENT,
    SegmentationScores,
    check_absent,
    confusion_matrix,
    scores_from_confusion,
)
from .evaluation.per_image import PerImageScores, image_ious
from .evaluation.retrieval import NEIGHBOURS, TEMPERATURE, RetrievalResult, dense_retrieval
from .features import as_size, resize_mask, upsample_labels
from .features.source import BackboneSettings, Source, SplitData
from .features.upsample import Upsampling, iter_guides
from .segment import SegmentOptions
from .unsupervised.cbfe import DEFAULT_FG_K
from .unsupervised.community import published_hyper_parameters
from .unsupervised.per_image import ImageSegmentation
from .unsupervised.pipeline import SEARCH_SEED, FullyUnsupervisedResult, check_settings, fully_unsupervised_splits
from .visualisation.report import Report, dataset_report

__all__ = [
    "Source",
    "ClusteringEvaluation",
    "HeadEvaluation",
    "RetrievalEvaluation",
    "UnsupervisedEvaluation",
    "SegmentsEvaluation",
    "clustering_protocol",
    "head_protocol",
    "retrieval_protocol",
    "fully_unsupervised",
    "segments_protocol",
    "evaluate",
]


class _Scored(Protocol):
    data: SplitData  # the split a result was scored on


R = TypeVar("R", bound=_Scored)


def _size_text(size: Sequence[int]) -> str:
    return f"{size[0]}x{size[1]}"


def _pca_text(settings: dict[str, Any]) -> str:
    """The projection a result applied: a PCA dimension at least the feature width is said not to apply."""
    if settings["pca_dim"]:
        return f"StandardScaler + PCA {settings['pca_dim']}"
    asked = settings.get("pca_dim_asked")
    return "StandardScaler, no PCA" + (f" (PCA {asked} asked: not fewer than the feature width)" if asked else "")


def _with_data(cls: type[R], result: Any, data: SplitData) -> R:
    """``result`` as its protocol subclass ``cls``, holding the scored split for reports (not a field:
    ``to_dict`` and ``repr`` stay the leaf result's)."""
    out = cls(**{f.name: getattr(result, f.name) for f in fields(result)})
    out.data = data
    return out


def _report(data: SplitData, out_dir: str | Path, predictions: Any, settings: dict[str, Any], title: str) -> Report:
    return dataset_report(out_dir, data.dataset, data.cache, predictions, settings=settings, title=title)


@dataclass
class ClusteringEvaluation:
    """:func:`clustering_protocol`'s results, one per K, with the split they were scored on; a sequence of
    :class:`unseg.evaluation.clustering.ClusteringResult`."""

    results: list[ClusteringResult]
    data: SplitData = field(repr=False, compare=False)

    def __iter__(self) -> Iterator[ClusteringResult]:
        return iter(self.results)

    def __len__(self) -> int:
        return len(self.results)

    def __getitem__(self, i: int) -> ClusteringResult:
        return self.results[i]

    def to_dict(self) -> list[dict[str, Any]]:
        return [r.to_dict() for r in self.results]

    def describe(self) -> str:
        s = self.results[0].settings
        labels = (
            f"labels on {s['upsample']}-upsampled features at {_size_text(s['label_size'])}, "
            if s["upsample"] != "none"
            else ""
        )
        pca = _pca_text(s)
        head = (
            f"clustering on {s['dataset']}/{s['split']} ({s['num_images']} images), {s['backbone']} "
            f"[{s['weights']}], input {_size_text(s['input_size'])}, tokens {_size_text(s['grid'])}, "
            f"{labels}nearest-upsampled to {_size_text(s['mask_size'])} masks, {pca}, "
            f"faiss k-means niter {s['niter']} nredo {s['nredo']}, {len(self.results[0].seeds)} seeds, "
            "mean ± std:"
        )
        return "\n".join([head] + ["  " + r.summary() for r in self.results])

    def write_report(self, out_dir: str | Path) -> list[Report]:
        """One report folder per K, ``out_dir/k<K>``, from each K's first seed."""
        reports = []
        for r in self.results:
            assert r.labels is not None and r.mapping is not None  # the first seed's, always kept
            s = r.settings
            maps = upsample_labels(torch.from_numpy(r.labels), tuple(s["mask_size"])).numpy()
            reports.append(
                _report(
                    self.data,
                    Path(out_dir) / f"k{r.k}",
                    class_predictions(maps, r.mapping, s["num_classes"]),
                    r.to_dict(),
                    f"k-means K={r.k} ({r.matching}), {s['dataset']}/{s['split']}",
                )
            )
        return reports


class HeadEvaluation(HeadResult):
    """:func:`head_protocol`'s result with the val split it was scored on."""

    data: SplitData

    def describe(self) -> str:
        s = self.settings
        m = s["train_mask_size"]
        aug = "RandomResizedCrop+flip on images" if s["augment"] else "cached features, no augmentation"
        return (
            f"{self.head} head on frozen {s['backbone']} [{s['weights']}], trained on {s['dataset']}/"
            f"{s['train_split']} ({aug}, epochs {s['epochs']}, lr {s['lr']}, batch {s['batch_size']}, masks "
            f"{m[0] if m[0] == m[1] else _size_text(m)}), evaluated on {s['val_split']} at "
            f"{_size_text(s['eval_mask_size'])} masks, seed {s['seed']}:\n  {self.summary()}"
        )

    def write_report(self, out_dir: str | Path) -> Report:
        return _report(
            self.data,
            out_dir,
            self.predictions,
            self.to_dict(),
            f"{self.head} head, {self.settings['dataset']}/{self.settings['val_split']}",
        )


class RetrievalEvaluation(RetrievalResult):
    """:func:`retrieval_protocol`'s result with the val split it was scored on."""

    data: SplitData

    def describe(self) -> str:
        s = self.settings
        return (
            f"dense NN retrieval (Hummingbird) on {s['dataset']}/{s['val_split']}: memory bank of {s['memory']} "
            f"{s['train_split']} patches ({s['labels']} labels), {s['backbone']} [{s['weights']}], input "
            f"{_size_text(s['input_size'])}, cosine kNN k={s['k']}, softmax temperature {s['temperature']}, "
            f"bilinear to {_size_text(s['mask_size'])} masks:\n  {self.summary()}"
        )

    def write_report(self, out_dir: str | Path) -> Report:
        if self.predictions is None:
            raise ValueError("this retrieval result kept no predictions: run it with keep_predictions=True")
        return _report(
            self.data,
            out_dir,
            self.predictions,
            self.to_dict(),
            f"dense NN retrieval, {self.settings['dataset']}/{self.settings['val_split']}",
        )


class UnsupervisedEvaluation(FullyUnsupervisedResult):
    """:func:`fully_unsupervised`'s result with the val split it was scored on."""

    data: SplitData

    def describe(self) -> str:
        s = self.settings
        lines = [
            f"fully unsupervised segmentation on {s['dataset']}/{s['val_split']} ({s['num_val']} images), "
            f"{s['backbone']} [{s['weights']}], input {_size_text(s['input_size'])}, tokens "
            f"{_size_text(s['grid'])}, {_pca_text(s)} and k-means fitted on "
            f"{s['train_split']} + {s['val_split']} tokens, masks {_size_text(s['mask_size'])}, Hungarian "
            "matching, mean ± std:"
        ]
        if self.foreground:
            fg = self.foreground
            lines.append(
                f"  CBFE: spherical k-means k={fg['k']}, background = {', '.join(fg['background_classes'])}, "
                f"threshold {fg['threshold']} (cut {fg['cut']}), foreground IoU train "
                f"{fg['foreground_iou_train']:.1f} val {fg['foreground_iou_val']:.1f}"
            )
        hp, runs = self.hyper_parameters, self.stage("cd").settings["runs"]
        lines.append(
            f"  CD: k={hp['k']} markov time {hp['markov_time']} edge threshold {hp['weight_threshold']} "
            f"({hp['source']}), {runs} Infomap runs (seeds 1..{runs})"
        )
        return "\n".join(lines + ["  " + line for line in self.summary().splitlines()])

    def write_report(self, out_dir: str | Path) -> list[Report]:
        """One report folder per stage, ``out_dir/<stage>``, from each stage's first run."""
        return [
            _report(
                self.data,
                Path(out_dir) / stage.stage,
                stage.predictions,
                stage.to_dict(),
                f"fully unsupervised, stage {stage.stage}, {self.settings['dataset']}/{stage.split}",
            )
            for stage in self.stages
        ]


def clustering_protocol(
    source: Source,
    split: str = "val",
    ks: Sequence[int] = OVERCLUSTERS,
    seeds: Sequence[int] = range(SEEDS),
    mask_size: int | Sequence[int] = MASK_SIZE,
    pca_dim: int | None = PCA_DIM,
    niter: int = NITER,
    nredo: int = NREDO,
    matching: str = CLUSTERING_MATCHING,
    absent: str = DEFAULT_ABSENT,
    upsample: Upsampling | None = None,
) -> ClusteringEvaluation:
    """Overclustering (K > #classes, greedy matching) and K = #classes (Hungarian) on a frozen backbone.

    ``upsample``: assign clusters on upsampled features (``unseg docs upsampling``); the guided
    upsampler reads the split's images, resized to the target grid, one at a time.
    """
    check_clustering_settings(ks, seeds, pca_dim, niter, nredo)  # before any extraction
    data = source.load_split(split, as_size(mask_size, "mask size"))
    assert data.masks is not None  # loaded with a mask size
    guides = None
    if upsample is not None and upsample.guided:
        guides = iter_guides(data.dataset, data.cache.ids, upsample.target(data.cache.grid, data.masks.shape[-2:]))
    results = evaluate_clustering(
        data.cache,
        data.masks,
        data.num_classes,
        ks=ks,
        seeds=seeds,
        pca_dim=pca_dim,
        niter=niter,
        nredo=nredo,
        matching=matching,
        absent=absent,
        upsample=upsample,
        guides=guides,
    )
    for r in results:
        r.settings.update(source.describe(), split=split)
    return ClusteringEvaluation(results, data)


def head_protocol(
    source: Source,
    head: str = "linear",
    train_split: str = "train",
    val_split: str = "val",
    mask_size: int | Sequence[int] = MASK_SIZE,
    eval_mask_size: int | Sequence[int] | None = None,
    augment: bool = True,
    seed: int = 0,
    **train_kwargs: Any,
) -> HeadEvaluation:
    """Train a linear / FCN head on ``train_split`` and score it on ``val_split``.

    ``eval_mask_size`` defaults to the input size (the protocols' 448x448 masks).
    ``train_kwargs``: the head's epochs, lr, milestones, batch_size (None: the protocol's).
    """
    head_settings(head, **train_kwargs)  # bad settings fail before any extraction
    msize = as_size(mask_size, "mask size")
    emsize = as_size(eval_mask_size, "evaluation mask size") if eval_mask_size is not None else source.size
    val = source.load_split(val_split, emsize)
    assert val.masks is not None  # loaded with a mask size
    kwargs: dict[str, Any] = {}
    if augment:
        train = source.build_dataset(train_split)
    else:
        loaded = source.load_split(train_split, msize)
        train = loaded.dataset
        kwargs = {"train_cache": loaded.cache, "train_masks": loaded.masks}
    model = train_head(
        source.build_backbone(),
        train,
        val.num_classes,
        head=head,
        input_size=source.size,
        mask_size=msize,
        augment=augment,
        device=source.device,
        seed=seed,
        num_workers=source.num_workers,
        **kwargs,
        **train_kwargs,
    )
    scores, predictions = evaluate_head(model, val.cache, val.masks, val.num_classes, device=source.device)
    settings = {
        **source.describe(),
        "train_split": train_split,
        "val_split": val_split,
        "train_mask_size": list(msize),
        "eval_mask_size": list(emsize),
        "augment": augment,
        "seed": seed,
        **head_settings(head, **train_kwargs),
    }
    result = HeadResult(head, scores.miou, scores.pixel_accuracy, [float(v) for v in scores.iou], settings, predictions)
    return _with_data(HeadEvaluation, result, val)


def retrieval_protocol(
    source: Source,
    train_split: str = "train",
    val_split: str = "val",
    k: int = NEIGHBOURS,
    temperature: float = TEMPERATURE,
    mode: str = "distribution",
    memory_size: int | None = None,
    eval_mask_size: int | Sequence[int] | None = None,
    seed: int = 0,
    keep_predictions: bool = False,
) -> RetrievalEvaluation:
    """:func:`unseg.evaluation.retrieval.dense_retrieval` on ``source``: train labels at the input size,
    val scored at ``eval_mask_size`` (default: the input size)."""
    size = source.size
    val_size = as_size(eval_mask_size, "evaluation mask size") if eval_mask_size is not None else size
    train = source.load_split(train_split, size)
    val = source.load_split(val_split, val_size)
    assert train.masks is not None and val.masks is not None  # loaded with a mask size
    result = dense_retrieval(
        train.cache,
        train.masks,
        val.cache,
        val.masks,
        val.num_classes,
        k=k,
        temperature=temperature,
        mode=mode,
        memory_size=memory_size,
        seed=seed,
        keep_predictions=keep_predictions,
    )
    result.settings.update(source.describe(), train_split=train_split, val_split=val_split)
    return _with_data(RetrievalEvaluation, result, val)


def fully_unsupervised(
    source: Source,
    train_split: str = "train",
    val_split: str = "val",
    *,
    background: Sequence[str | int] | None = None,
    hyper_parameters: dict[str, Any] | Literal["published"] | None = None,
    trials: int = 300,
    runs: int = 10,
    kmeans_seeds: Sequence[int] = range(SEEDS),
    fg_k: int = DEFAULT_FG_K,
    clustering_seed: int = 0,
    preferred_modules: int | None = None,
    mask_size: int | Sequence[int] = MASK_SIZE,
    pca_dim: int | None = PCA_DIM,
    niter: int = NITER,
    nredo: int = NREDO,
    search_seed: int = SEARCH_SEED,
) -> UnsupervisedEvaluation:
    """k-means, + CBFE, + community detection on ``source``'s dataset; scores on ``val_split``
    (:func:`unseg.unsupervised.fully_unsupervised_splits`).

    ``hyper_parameters``: CD's ``k``, ``markov_time``, ``weight_threshold``; the preset
    ``"published"`` takes the authors' values for ``source.backbone``
    (:data:`unseg.unsupervised.PUBLISHED`); None searches them with TPE on ``train_split``.
    """
    if hyper_parameters == "published":
        hyper_parameters = published_hyper_parameters(source.backbone_name)
    check_settings(hyper_parameters, trials, runs, kmeans_seeds)  # before any extraction
    msize = as_size(mask_size, "mask size")
    train, val = source.load_split(train_split, msize), source.load_split(val_split, msize)
    result = fully_unsupervised_splits(
        train,
        val,
        background=background,
        hyper_parameters=hyper_parameters,
        trials=trials,
        runs=runs,
        kmeans_seeds=kmeans_seeds,
        fg_k=fg_k,
        clustering_seed=clustering_seed,
        preferred_modules=preferred_modules,
        pca_dim=pca_dim,
        niter=niter,
        nredo=nredo,
        search_seed=search_seed,
    )
    result.settings = {**source.describe(), **result.settings}
    return _with_data(UnsupervisedEvaluation, result, val)


@dataclass
class SegmentsEvaluation:
    """:func:`segments_protocol`'s scores, one entry per seed: the per-image protocol on the images'
    own segments, and the dataset-level one on their groups (folder-wide labels)."""

    per_image: list[PerImageScores]
    dataset: list[SegmentationScores]
    matching: str
    seeds: list[int]
    settings: dict[str, Any]
    data: SplitData = field(repr=False, compare=False)

    @staticmethod
    def _spread(values: Sequence[float]) -> str:
        return f"{np.mean(values):5.1f} ± {np.std(values):.1f}"

    def describe(self) -> str:
        s = self.settings
        segs = [np.mean(p.segments) for p in self.per_image]
        return "\n".join(
            [
                f"{s['method']} segmentation on {s['dataset']}/{s['split']} ({s['num_images']} images), "
                f"{s['backbone']} [{s['weights']}], input {_size_text(s['input_size'])}, seeds {self.seeds}, "
                "mean ± std over the seeds:",
                f"  per image (each image's segments matched to its own classes, Hungarian on IoU, absent classes "
                f"skipped, at the images' size): mIoU {self._spread([p.miou for p in self.per_image])}, "
                f"{np.mean(segs):.1f} segments per image",
                f"  dataset-level ({s['groups']} groups, one {self.matching} matching for the split, "
                f"{_size_text(s['mask_size'])} masks): mIoU {self._spread([d.miou for d in self.dataset])}  "
                f"acc {self._spread([d.pixel_accuracy for d in self.dataset])}",
            ]
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "settings": self.settings,
            "seeds": self.seeds,
            "matching": self.matching,
            "per_image": [p.to_dict() for p in self.per_image],
            "dataset": [
                {"miou": d.miou, "pixel_accuracy": d.pixel_accuracy, "iou": [float(v) for v in d.iou]}
                for d in self.dataset
            ],
        }


def segments_protocol(
    source: Source,
    method: str = DEFAULT_SEGMENTER,
    split: str = "val",
    seeds: Sequence[int] = range(SEEDS),
    mask_size: int | Sequence[int] = MASK_SIZE,
    options: SegmentOptions | None = None,
    absent: str = DEFAULT_ABSENT,
) -> SegmentsEvaluation:
    """Segment a labelled split with ``method`` (:data:`unseg.catalog.METHODS`, with the settings of
    ``options``, as ``unseg segment`` would) and score it twice per seed: per image (:mod:`unseg.evaluation.
    per_image`, at each image's own size) and dataset-level (the groups at ``mask_size``, Hungarian when
    there are at most as many groups as classes, else greedy). The number of groups (``groups`` of the
    spectral method, ``k`` of kmeans and cd) defaults to the number of classes. The backbone and its
    views are ``source``'s: options whose ``model`` is not the default are refused, not ignored."""
    check_absent(absent)
    o = replace(options or SegmentOptions(), method=method)
    if o.model != BackboneSettings():
        raise SettingError(
            "segments_protocol sees the images through the source's backbone: give the backbone, its "
            "input size and views on the Source, not in options.model"
        )
    data = source.load_split(split, as_size(mask_size, "mask size"))
    masks = data.masks
    assert masks is not None  # loaded with a mask size
    if o.method == "spectral" and o.groups is None:
        o = replace(o, groups=data.num_classes)
    elif o.method in ("kmeans", "cd") and o.k is None:
        o = replace(o, k=data.num_classes)
    samples = {sample.id: sample for sample in data.dataset.samples}
    described = source.describe()
    identity = {
        "backbone": described["backbone"],
        "weights": described["weights"],
        "input_size": source.size,
    }
    per_image, dataset, matching, groups = [], [], "", 0
    for seed in seeds:
        folder = segmenter(method)(FitContext(data.cache, identity, source.size, seed), o)
        groups = folder.num_groups

        def use(
            i: int, image: Any, result: ImageSegmentation, groups: int = groups
        ) -> tuple[np.ndarray, int, np.ndarray]:
            truth = data.dataset.load_mask(samples[data.cache.ids[i]], image.size)
            labels = resize_mask(result.labels.astype(np.int32), masks.shape[-2:])
            return (
                image_ious(truth, result.segments, data.num_classes),
                len(np.unique(result.segments)),
                confusion_matrix(masks[i], labels, data.num_classes, groups),
            )

        done = render_each(folder, data.cache, lambda i: data.dataset.load_image(samples[data.cache.ids[i]]), use)
        scores = PerImageScores(data.num_classes, [d[0] for d in done], [d[1] for d in done])
        confusion = np.sum([d[2] for d in done], axis=0)
        matching = resolve_method("auto", data.num_classes, groups)
        per_image.append(scores)
        dataset.append(scores_from_confusion(match(confusion, matching)[1], absent))
    settings = {
        **described,
        "method": o.method,
        "split": split,
        "num_images": len(data.cache),
        "num_classes": data.num_classes,
        "groups": groups,
        "mask_size": list(masks.shape[-2:]),
        "absent_classes": absent,
        "method_settings": folder.describe(),
    }
    return SegmentsEvaluation(per_image, dataset, matching, list(seeds), settings, data)


@dataclass
class StegoEvaluation:
    """:func:`stego_protocol`'s scores of a STEGO checkpoint, with what it was scored on."""

    scores: Any  # unseg.methods.stego.StegoScores
    checkpoint: str
    data: SplitData = field(repr=False, compare=False)
    settings: dict[str, Any] = field(default_factory=dict)

    def describe(self) -> str:
        s = self.settings
        seen = f" through {s['backbone_view']}" if "backbone_view" in s else ""
        return (
            f"{self.checkpoint} on {s['dataset']}/{s['split']} at {s['input_size']}px{seen}, flip TTA, "
            f"{s['upsample']} code upsampling{', dense CRF' if s['crf'] else ''}: {self.scores.summary()}"
        )

    def to_dict(self) -> dict[str, Any]:
        view = {"backbone_view": self.settings["backbone_view"]} if "backbone_view" in self.settings else {}
        return {**self.scores.to_dict(), **view}

    def write_report(self, out_dir: str | Path) -> Report:
        if self.scores.predictions is None:
            raise ValueError("this STEGO evaluation kept no predictions: run it with keep_predictions=True")
        return _report(
            self.data,
            out_dir,
            self.scores.predictions,
            self.scores.to_dict(),
            f"STEGO cluster probe, {self.settings['dataset']}/{self.settings['split']}",
        )


def stego_protocol(
    cfg: Any,
    checkpoint: str | Path,
    cache_dir: str | Path | None = None,
    views: dict[str, Any] | None = None,
    crf: bool = False,
    upsample: Upsampling | None = None,
    keep_predictions: bool = False,
    trust_checkpoint: bool = False,
    **scoring: Any,
) -> StegoEvaluation:
    """Both probes of a STEGO ``checkpoint`` on ``cfg``'s val split (STEGO's evaluation: flip TTA, codes
    bilinear to the masks unless ``upsample``; ``views``: :class:`Source`'s window / scales; ``scoring``:
    ``processes``, ``matching``, ``absent`` of :func:`unseg.methods.stego.pipeline.evaluate_run`)."""
    from .methods.stego.pipeline import evaluate_run, split_data

    val = split_data(cfg, cfg.val_split, cache_dir, views=views)
    scores = evaluate_run(
        checkpoint,
        val,
        cfg.n_classes,
        crf=crf,
        trust_checkpoint=trust_checkpoint,
        upsample=upsample,
        keep_predictions=keep_predictions,
        **scoring,
    )
    settings = {
        "dataset": cfg.dataset,
        "split": cfg.val_split,
        "input_size": cfg.val_input_size,
        "crf": crf,
        "upsample": upsample.method if upsample is not None else "bilinear",
        **({"backbone_view": val.cache.meta["backbone"]} if views else {}),
    }
    return StegoEvaluation(scores, str(checkpoint), val, settings)


_SOURCE_FIELDS = {f.name for f in fields(Source) if f.init} - {"backbone"}


def evaluate(
    model: str | nn.Module,
    dataset: str = "camvid",
    root: str | Path = ".",
    ks: Sequence[int] = OVERCLUSTERS,
    **options: Any,
) -> ClusteringEvaluation:
    """The clustering protocol on any model: a registered name, a unseg Backbone, or an ``nn.Module`` mapping
    (B, 3, H, W) images to (B, D, h, w) features (give ``stride=`` unless it has a ``stride`` attribute).

    ``options``: :class:`Source` fields (input_size, cache_dir, device, ...) and
    :func:`clustering_protocol` arguments (split, seeds, mask_size, ...). Features are cached
    under the module's class name and a fingerprint of its state dict.
    """
    source = Source(model, dataset=dataset, root=root, **{k: v for k, v in options.items() if k in _SOURCE_FIELDS})
    return clustering_protocol(source, ks=ks, **{k: v for k, v in options.items() if k not in _SOURCE_FIELDS})
