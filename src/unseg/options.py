"""Every command-line option, declared once as data: its flag, its kind, what it means, and the API default it shows.

An option's value goes to the API parameter of the same name (``dest``) only when the user gives
it, so the API's own default applies otherwise; the help shows that default read from the API
itself (``From(function or class, parameter)``), never a copy of it. The kind
(:mod:`unseg.kinds`) checks the value as it is parsed. :mod:`unseg.cli` assembles the commands
from these groups; the harness of the tests walks the parser they build.
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .config import ConfigRef, Override
from .kinds import (
    COUNT,
    COUNTS,
    DEVICE,
    FRACTION,
    MAX_SIDE,
    NON_NEGATIVE,
    NON_NEGATIVE_REAL,
    POSITIVE,
    PROBABILITY,
    SEED,
    SEEDS,
    CacheFolder,
    InputFile,
    InputFolder,
    InputPath,
    Integer,
    Kind,
    OutputFile,
    OutputFolder,
    Real,
    Registered,
    Resume,
    Size,
    Text,
)

if TYPE_CHECKING:
    from .catalog import Training

__all__ = [
    "Opt",
    "From",
    "given",
    "MODEL",
    "DATA",
    "SOURCE",
    "VIEWS",
    "backbone_options",
    "view_options",
    "JSON",
    "REPORT",
    "CLUSTER",
    "HEAD",
    "scoring",
    "upsample_group",
    "SPECTRAL",
    "CD",
    "UNSUPERVISED",
    "SEGMENTS",
    "RETRIEVAL",
    "EXTRACT",
    "STEGO",
    "RUN",
    "SWEEP",
    "SEGMENT",
    "config_options",
    "METHOD",
    "DOCS",
    "EVAL_STEGO",
    "DEMO",
    "TRAIN_EXTRA",
    "train_options",
]


@dataclass(frozen=True)
class From:
    """An API default: parameter ``name`` of function ``target`` (its signature), field ``name`` of a
    dataclass ``target``, or constant ``name`` of module ``target``, read when the help is built."""

    target: Any
    name: str

    def value(self) -> Any:
        if inspect.ismodule(self.target):
            return getattr(self.target, self.name)
        if dataclasses.is_dataclass(self.target):
            f = next(f for f in dataclasses.fields(self.target) if f.name == self.name)
            if f.default is not dataclasses.MISSING:
                return f.default
            assert f.default_factory is not dataclasses.MISSING, f"field {self.name} has no default"
            return f.default_factory()
        return inspect.signature(self.target).parameters[self.name].default


def _shown(value: Any) -> str:
    if isinstance(value, range):
        return f"{value.start}..{value.stop - 1}"
    if isinstance(value, (list, tuple)):
        return " ".join(map(str, value))
    return str(value)


@dataclass(frozen=True)
class Opt:
    """One option: ``flag`` (``--k``, or a positional's name), its ``help``, its ``kind`` (argparse ``type``)
    or ``choices``, and the API default the help names (``default``: a :class:`From`, or text; ``first``:
    what the API takes before that default when the option is not given, e.g. a saved clustering's)."""

    flag: str
    help: str = ""
    kind: Kind | None = None
    default: From | str | None = None
    dest: str | None = None
    nargs: str | None = None
    choices: Sequence[str] | Callable[[], Sequence[str]] | None = None
    metavar: str | None = None
    required: bool = False
    switch: bool = False  # a flag without a value (store_true)
    parser_default: Any = None  # argparse's own default, for the few options whose absence means a value
    first: str = ""

    def add(self, target: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
        value = self.default.value() if isinstance(self.default, From) else self.default
        shown = None if value is None else f"{self.first}, else {_shown(value)}" if self.first else _shown(value)
        text = self.help + (f" (default {shown})" if shown is not None else "")
        if self.switch:
            target.add_argument(self.flag, action="store_true", help=text)
            return
        kwargs: dict[str, Any] = {"help": text}
        for key in ("nargs", "metavar", "dest"):
            if getattr(self, key) is not None:
                kwargs[key] = getattr(self, key)
        if self.kind is not None:
            kwargs["type"] = self.kind
        if self.choices is not None:
            kwargs["choices"] = list(self.choices() if callable(self.choices) else self.choices)
        if self.parser_default is not None:
            kwargs["default"] = self.parser_default
        if self.required and self.flag.startswith("-"):
            kwargs["required"] = True
        target.add_argument(self.flag, **kwargs)

    @property
    def name(self) -> str:
        return self.dest or self.flag.lstrip("-").replace("-", "_")


def given(args: argparse.Namespace, *names: str, **renamed: str) -> dict[str, Any]:
    """The values the user gave for ``names`` (and ``renamed``: API name -> option name): the others
    keep the API's defaults."""
    pairs = [(n, n) for n in names] + list(renamed.items())
    return {api: getattr(args, opt) for api, opt in pairs if getattr(args, opt, None) is not None}


def _names(registry: str) -> Callable[[], list[str]]:
    def names() -> list[str]:
        if registry == "backbone":
            from .backbones import list_backbones

            return [spec.name for spec in list_backbones()]
        from .datasets import DATASETS

        return DATASETS.names()

    return names


def _api(path: str, name: str) -> From:
    """:class:`From` on ``module:attribute`` (or a module alone), imported when the help is built."""
    import importlib

    module, _, attribute = path.partition(":")
    target = importlib.import_module(f"unseg.{module}")
    return From(getattr(target, attribute) if attribute else target, name)


def sized(flag: str, help: str, what: str, default: From | str | None = None, first: str = "") -> Opt:
    """An option of one size in px (a square) or two (H W): an input, a window, a mask, a target grid."""
    return Opt(flag, help, Size(what), default, nargs="+", metavar="PX", first=first)


BACKBONE = Registered("backbone", _names("backbone"))
DATASET = Registered("dataset", _names("dataset"))
WEIGHTS = InputFile("an existing checkpoint file, or 'random'", special=("random",))
SPLIT = Text("a split name ('' for a folder dataset's own folder)")
SIZE_HELP = "one value (square) or H W"
ROLE = Opt(
    "--weights-role",
    "which network of a teacher/student checkpoint; auto = what the authors' evaluation "
    "reads: the student (model.*) of a Leopart checkpoint, the teacher of a DINO training checkpoint",
    dest="role",
    choices=("auto", "teacher", "student"),
)
TRUST = Opt(
    "--trust-checkpoint",
    "unpickle the --weights / --checkpoint file fully, which runs any code it holds: "
    "only for files you trust (default: a safe loader that runs nothing; `unseg docs checkpoints`)",
    switch=True,
)
DOWNLOAD = Opt("--download", "fetch hub weights when --weights is not given", switch=True)
JSON = [Opt("--json", "also write the results as JSON to this file", OutputFile())]
REPORT = [
    Opt(
        "--report",
        "also write a report folder: metrics.json, per-class IoU chart, confusion image and a "
        "gallery of the best and worst images",
        OutputFolder(),
        metavar="DIR",
    )
]

BACKBONE_SETTINGS = "features.source:BackboneSettings"


def view_options(first: str = "") -> list[Opt]:
    """``--window``, ``--window-overlap``, ``--scales``; ``first``: what gives them before their defaults."""
    return [
        sized(
            "--window",
            "run the backbone on overlapping windows of this size (one value or H W, a multiple of its "
            "stride, at most the input size) and stitch their features",
            "window",
            "the whole input at once",
            first,
        ),
        Opt(
            "--window-overlap",
            "with --window: the fraction of a window shared with its neighbour",
            FRACTION,
            _api("backbones.views", "DEFAULT_OVERLAP"),
            metavar="F",
            first=first,
        ),
        Opt(
            "--scales",
            "average the features of the input resized by each factor; with --window every scaled input is tiled",
            Real(0, low_open=True, many=True),
            _api("backbones.views", "DEFAULT_SCALES"),
            nargs="+",
            metavar="S",
            first=first,
        ),
    ]


def backbone_options(backbone_first: str = "", input_first: str = "") -> list[Opt]:
    """The options of :class:`unseg.features.BackboneSettings`: which backbone, and how it sees the input.
    ``backbone_first``, ``input_first``: what gives the backbone, and the input size and views, before
    their defaults (``unseg segment``: a saved clustering, a STEGO checkpoint)."""
    return [
        Opt(
            "--backbone",
            "registered backbone (`unseg backbones`)",
            BACKBONE,
            _api("backbones", "DEFAULT_BACKBONE"),
            first=backbone_first,
        ),
        Opt("--weights", "local checkpoint: DINO .pth / DINO training ckpt / Leopart or STEGO .ckpt", WEIGHTS),
        ROLE,
        TRUST,
        DOWNLOAD,
        sized(
            "--input-size",
            f"input resolution: {SIZE_HELP}",
            "input size",
            _api("features.transforms", "DEFAULT_INPUT_SIZE"),
            input_first,
        ),
        *view_options(input_first),
        Opt("--device", "auto, cpu, cuda, cuda:N, ...", DEVICE, _api(BACKBONE_SETTINGS, "device")),
        Opt(
            "--batch-size",
            "images (with --window: windows) per forward pass",
            COUNT,
            _api(BACKBONE_SETTINGS, "batch_size"),
        ),
        Opt(
            "--workers",
            "data-loading processes",
            NON_NEGATIVE,
            _api(BACKBONE_SETTINGS, "num_workers"),
            dest="num_workers",
        ),
    ]


VIEWS = view_options()
MODEL = backbone_options()
"""The backbone options as the protocols show them (the API's defaults)."""

DATA = [
    Opt("--dataset", "registered dataset (`unseg datasets`)", DATASET, _api("features.source:Source", "dataset")),
    Opt("--root", "dataset folder", InputFolder(), required=True),
    Opt(
        "--masks",
        "folder dataset: folder of <image stem>.png label maps",
        InputFolder("an existing, readable folder of label maps"),
    ),
    Opt("--num-classes", "folder dataset: ids from this one up are ignored", COUNT),
    Opt("--cache-dir", "feature cache folder", CacheFolder(), "$UNSEG_CACHE/features or ~/.cache/unseg/features"),
    Opt(
        "--hash-images",
        "identify images by a hash of their bytes, not by their file's size, times and inode: for "
        "file systems that do not keep those (`unseg docs reliability`); slower",
        switch=True,
    ),
    Opt("--skip-corrupt", "skip (and log) unreadable images instead of failing", switch=True),
    *JSON,
]
"""The data a :class:`unseg.features.Source` adds to the backbone's settings."""

SOURCE = [*MODEL, *DATA]

EXTRACT = [
    Opt("--split", "splits to extract", Text(SPLIT.expects, many=True), "val", nargs="+", parser_default=["val"]),
    Opt("--shard-size", "images per shard file", COUNT, _api("features.extract:extract_features", "shard_size")),
    Opt(
        "--dtype",
        "storage type",
        None,
        _api("features.extract:extract_features", "dtype"),
        choices=("float32", "float16"),
    ),
    Opt(
        "--precision",
        "forward precision: full, or autocast to one of the half precisions (the IEEE one on CUDA "
        "only); the cache records it",
        None,
        _api("features.extract:extract_features", "precision"),
        choices=("fp32", "bf16", "fp16"),
    ),
    Opt("--rank", "this process's rank, below --world-size", NON_NEGATIVE, "$RANK from torchrun, else the first"),
    Opt("--world-size", "number of ranks", COUNT, "$WORLD_SIZE, else one"),
]


def scoring(protocol: str) -> list[Opt]:
    """``--matching`` and ``--absent-classes``, showing the defaults of ``protocol`` (``module:function``)."""
    return [
        Opt(
            "--matching",
            "cluster-to-class rule: hungarian-iou maximises IoU (Leopart), hungarian-pixels maximises "
            "matched pixels (STEGO), greedy is many-to-one by precision, auto is hungarian-iou when "
            "K <= #classes else greedy (`unseg docs evaluation`)",
            None,
            _api(protocol, "matching"),
            choices=lambda: __import__("unseg.clustering.matching", fromlist=["METHODS"]).METHODS,
        ),
        Opt(
            "--absent-classes",
            "a class in neither ground truth nor prediction: skip = left out of the mIoU "
            "(STEGO), zero = IoU of nothing averaged over all classes (Leopart's PredsmIoU)",
            None,
            _api(protocol, "absent"),
            dest="absent",
            choices=lambda: __import__("unseg.evaluation.metrics", fromlist=["ABSENT_RULES"]).ABSENT_RULES,
        ),
    ]


def upsample_group(target: str | None, default: str) -> list[Opt]:
    """``--upsample`` and the guided filter's options; ``target``: what the output grid is by default
    (None: the command's fixed size, no --upsample-size / --upsample-factor); ``default``: the method
    when --upsample is not given."""
    guided = "features.upsample:Upsampling"
    opts = [
        Opt(
            "--upsample",
            "assign labels on upsampled features: bilinear, or guided = bilinear then the guided "
            "filter, which moves the features' edges onto the image's (`unseg docs upsampling`)",
            default=default,
            choices=("none", "bilinear", "guided"),
        )
    ]
    if target is not None:
        opts += [
            sized("--upsample-size", f"target grid: {SIZE_HELP}", "upsampling size", target),
            Opt("--upsample-factor", "target grid = this factor x the token grid", Real(0, MAX_SIDE, low_open=True)),
        ]
    from .features.upsample import MAX_GUIDE_RADIUS

    return opts + [
        Opt(
            "--guide-radius",
            "guided: window radius in tokens",
            Real(0, MAX_GUIDE_RADIUS, low_open=True),
            _api(guided, "radius"),
        ),
        Opt(
            "--guide-eps",
            "guided: ridge term, squared RGB of the unit range; smaller follows weaker edges",
            POSITIVE,
            _api(guided, "eps"),
        ),
    ]


CLUSTER = [
    Opt("--split", "evaluation split", SPLIT, _api("protocols:clustering_protocol", "split")),
    Opt("--k", "cluster counts", COUNTS, _api("protocols:clustering_protocol", "ks"), nargs="+", dest="ks"),
    Opt("--seeds", "seeds from the first, this many", COUNT, _api("protocols:clustering_protocol", "seeds")),
    sized(
        "--mask-size", f"label resolution: {SIZE_HELP}", "mask size", _api("protocols:clustering_protocol", "mask_size")
    ),
    Opt(
        "--pca-dim",
        "PCA dimensions, at most the feature width; zero: no PCA",
        Integer(0, meaning="0 = no PCA"),
        _api("protocols:clustering_protocol", "pca_dim"),
    ),
    Opt("--niter", "k-means iterations", COUNT, _api("protocols:clustering_protocol", "niter")),
    Opt("--nredo", "k-means restarts", COUNT, _api("protocols:clustering_protocol", "nredo")),
]

HEAD = [
    Opt("--train-split", "training split", SPLIT, _api("protocols:head_protocol", "train_split")),
    Opt("--split", "evaluation split", SPLIT, _api("protocols:head_protocol", "val_split"), dest="val_split"),
    sized(
        "--mask-size",
        f"training label resolution: {SIZE_HELP}",
        "mask size",
        _api("protocols:head_protocol", "mask_size"),
    ),
    sized("--eval-mask-size", f"evaluation label resolution: {SIZE_HELP}", "evaluation mask size", "input size"),
    Opt("--no-augment", "train on cached features (fast, no augmentation)", switch=True),
    Opt("--epochs", "training epochs", COUNT, "the protocol's"),
    Opt("--lr", "learning rate", POSITIVE, "the protocol's"),
    Opt("--head-batch-size", "training batch", COUNT, "the protocol's"),
    Opt("--seed", "seed", SEED, _api("protocols:head_protocol", "seed")),
]

SPECTRAL_SETTINGS = "unsupervised.spectral:SpectralSettings"
SPECTRAL = [
    Opt("--segments", "segments per image", COUNT, "chosen per image by merging similar neighbours"),
    Opt(
        "--merge-threshold",
        "merge neighbouring segments while their features' cosine is at least this: lower gives fewer segments",
        Real(-1, 1),
        _api(SPECTRAL_SETTINGS, "merge_threshold"),
    ),
    Opt("--groups", "groups of the folder's vocabulary", COUNT, "the most segments of one image"),
    Opt("--oversegments", "segments before merging", Integer(2), _api(SPECTRAL_SETTINGS, "oversegments")),
    Opt(
        "--lump",
        "solve each square of four neighbouring tokens whose cosines are all at least this as one unknown: "
        "a smaller eigenproblem (the largest value lumps only equal tokens: the exact problem)",
        Real(-1, 1),
        _api(SPECTRAL_SETTINGS, "lump"),
    ),
    Opt(
        "--embedding",
        "what the over-segmentation clusters: the graph's eigenvectors (spectral) or the image's own "
        "tokens (tokens: plain per-image k-means, the baseline)",
        None,
        _api(SPECTRAL_SETTINGS, "embedding"),
        choices=("spectral", "tokens"),
    ),
]

CD = [
    Opt("--cd-k", "overclustering k", COUNT, _api("unsupervised.fitted:CDSettings", "k")),
    Opt("--markov-time", "Infomap Markov time", POSITIVE, _api("unsupervised.fitted:CDSettings", "markov_time")),
    Opt(
        "--weight-threshold",
        "co-occurrence edge threshold",
        NON_NEGATIVE_REAL,
        _api("unsupervised.fitted:CDSettings", "weight_threshold"),
    ),
    Opt("--fg-threshold", "CBFE precision threshold", PROBABILITY, "no foreground extraction"),
    Opt("--fg-k", "CBFE spherical k-means clusters", COUNT, _api("unsupervised.fitted:CDSettings", "fg_k")),
]

UNSUPERVISED = [
    Opt(
        "--train-split",
        "split for the CBFE threshold and the CD search",
        SPLIT,
        _api("protocols:fully_unsupervised", "train_split"),
    ),
    Opt("--split", "evaluation split", SPLIT, _api("protocols:fully_unsupervised", "val_split"), dest="val_split"),
    Opt(
        "--background",
        "classes (names or ids) that are background for CBFE; none: no CBFE",
        Text("class names or ids", many=True),
        "a class named background",
        nargs="+",
        metavar="CLASS",
    ),
    Opt("--fg-k", "CBFE spherical k-means clusters", COUNT, _api("protocols:fully_unsupervised", "fg_k")),
    Opt("--cd-k", "CD overclustering k (give with --markov-time, --weight-threshold)", COUNT),
    Opt("--markov-time", "Infomap Markov time", POSITIVE),
    Opt("--weight-threshold", "co-occurrence edge threshold", NON_NEGATIVE_REAL),
    Opt("--published", "use the authors' CD hyper-parameters for --backbone", switch=True),
    Opt("--trials", "TPE trials when searching (the authors')", COUNT, _api("protocols:fully_unsupervised", "trials")),
    Opt("--runs", "Infomap runs", COUNT, _api("protocols:fully_unsupervised", "runs")),
    Opt(
        "--seeds",
        "k-means seeds of the k-means and CBFE stages, from the first, this many",
        COUNT,
        _api("protocols:fully_unsupervised", "kmeans_seeds"),
    ),
    sized(
        "--mask-size", f"label resolution: {SIZE_HELP}", "mask size", _api("protocols:fully_unsupervised", "mask_size")
    ),
]

SEGMENTS = [
    Opt("--k", "kmeans clusters, cd's preferred communities", COUNT, "the number of classes"),
    Opt("--split", "evaluation split", SPLIT, _api("protocols:segments_protocol", "split")),
    Opt("--seeds", "seeds from the first, this many", COUNT, _api("protocols:segments_protocol", "seeds")),
    sized(
        "--mask-size",
        f"label resolution of the dataset-level score: {SIZE_HELP}",
        "mask size",
        _api("protocols:segments_protocol", "mask_size"),
    ),
]

RETRIEVAL = [
    Opt("--train-split", "memory bank split", SPLIT, _api("protocols:retrieval_protocol", "train_split")),
    Opt("--split", "evaluation split", SPLIT, _api("protocols:retrieval_protocol", "val_split"), dest="val_split"),
    Opt("--neighbours", "nearest neighbours", COUNT, _api("protocols:retrieval_protocol", "k"), dest="k"),
    Opt("--temperature", "softmax temperature", POSITIVE, _api("protocols:retrieval_protocol", "temperature")),
    Opt(
        "--labels",
        "label of a memory patch: its class distribution (Hummingbird) or majority class",
        None,
        _api("protocols:retrieval_protocol", "mode"),
        dest="mode",
        choices=("distribution", "majority"),
    ),
    Opt("--memory-size", "random subset of memory patches", COUNT, "all"),
    sized("--eval-mask-size", f"evaluation label resolution: {SIZE_HELP}", "evaluation mask size", "input size"),
    Opt("--seed", "memory subset seed", SEED, _api("protocols:retrieval_protocol", "seed")),
]


def config_options(method: str, example: str) -> list[Opt]:
    """``--config`` and its ``key=value`` overrides, for a training method's config."""
    return [
        Opt("--config", "shipped config name (`unseg configs`) or a YAML file", ConfigRef(method), required=True),
        Opt("overrides", f"key=value settings over the config, e.g. {example}", Override(), nargs="*"),
    ]


STEGO = [
    *config_options("stego", "root=DATA max_steps=N"),
    Opt("--cache-dir", "feature cache folder", CacheFolder(), "$UNSEG_CACHE/features"),
]


def RUN(default: str, holds: str) -> list[Opt]:  # upper case: a group, like the others
    """``--out``, ``--resume``, ``--overwrite``: where a training run lives and what happens to one already there."""
    return [
        Opt("--out", f"run folder: {holds}", OutputFolder(), default, parser_default=default),
        Opt(
            "--resume",
            "continue a run: a checkpoint file, or 'last' for OUT/checkpoints/last.ckpt; one that is "
            "missing or not a training checkpoint of this run's model is an error, never a silent "
            "fresh start",
            Resume(),
        ),
        Opt(
            "--overwrite",
            "replace the run already in --out (without it, a folder holding a run is refused)",
            switch=True,
        ),
    ]


SWEEP = [
    Opt("--dims", "code dimensions", COUNTS, _api("methods.stego.pipeline:dimension_sweep", "dims"), nargs="+"),
    Opt(
        "--methods",
        "what is swept",
        None,
        _api("methods.stego.pipeline:dimension_sweep", "methods"),
        nargs="+",
        choices=lambda: ["stego", *__import__("unseg.methods.projections", fromlist=["PROJECTIONS"]).PROJECTIONS],
    ),
    Opt("--seeds", "seed values", SEEDS, _api("methods.stego.pipeline:dimension_sweep", "seeds"), nargs="+"),
    Opt("--crf", "also score every run with a dense CRF", switch=True),
    Opt(
        "--out",
        "output folder",
        OutputFolder(),
        _api("methods.stego.pipeline:dimension_sweep", "out_dir"),
        dest="out_dir",
    ),
]

SEGMENT_OPTIONS = "segment:SegmentOptions"
SEGMENT = [
    Opt(
        "paths",
        "image files or folders of images",
        InputPath("existing image files or folders of images", many=True),
        nargs="+",
        metavar="PATH",
    ),
    Opt(
        "--out",
        "output folder: labels/ (groups), segments/, foreground/, panels/, index.html",
        OutputFolder(),
        required=True,
        dest="out_dir",
    ),
    Opt("--k", "kmeans clusters, cd's preferred communities", COUNT, _api("catalog", "DEFAULT_K")),
    Opt(
        "--checkpoint",
        "--method stego: a STEGO .ckpt (head and cluster probe)",
        InputFile("an existing STEGO checkpoint file"),
    ),
    Opt("--crf", "kmeans, cd, stego: refine with a dense CRF (extra: unseg[crf])", switch=True),
    Opt(
        "--clustering",
        "apply a clustering saved with --save-clustering (its method is the default)",
        InputFile("an existing clustering file (--save-clustering)"),
        metavar="FILE",
    ),
    Opt("--save-clustering", "save the fitted clustering (kmeans, cd) for reuse", OutputFile(), metavar="FILE"),
    Opt("--skip-invalid", "skip (and log by name) unreadable files", switch=True),
    Opt("--seed", "k-means / Infomap seed", SEED, _api(SEGMENT_OPTIONS, "seed")),
    Opt("--niter", "kmeans, cd: k-means iterations of the fit", COUNT, _api(SEGMENT_OPTIONS, "niter")),
    Opt("--nredo", "kmeans, cd: k-means restarts of the fit", COUNT, _api(SEGMENT_OPTIONS, "nredo")),
]
"""``unseg segment``'s own options; its backbone's are :func:`backbone_options`, defaulting to a clustering's."""


def METHOD() -> Opt:  # upper case: a group, like the others
    """``--method``: a segmenting method of the catalog, each described."""
    from .catalog import DEFAULT_SEGMENTER, METHODS, segmenting_methods

    return Opt(
        "--method",
        "; ".join(f"{n}: {METHODS.get(n).summary}" for n in segmenting_methods()),
        default=DEFAULT_SEGMENTER,
        choices=segmenting_methods,
    )


DOCS = [
    Opt(
        "topic",
        "e.g. methods, evaluation, photos",
        nargs="?",
        metavar="TOPIC",
        choices=lambda: sorted(__import__("unseg.pages", fromlist=["topics"]).topics()),
    )
]

EVAL_STEGO = [
    *STEGO,
    Opt(
        "--checkpoint", "ours or a released STEGO .ckpt", InputFile("an existing STEGO checkpoint file"), required=True
    ),
    TRUST,
    Opt("--crf", "refine with a dense CRF (extra: unseg[crf])", switch=True),
    Opt("--processes", "CRF worker processes", COUNT, "the thread count, --threads"),
    *JSON,
    *scoring("methods.stego.pipeline:evaluate_run"),
    *upsample_group(None, "bilinear (STEGO's, codes to the masks' size)"),
    *VIEWS,
    *REPORT,
]

DEMO = [
    Opt("--out", "output folder", OutputFolder(), _api("demo:run_demo", "out")),
    Opt("--seeds", "k-means seeds from the first, this many", COUNT, _api("demo:run_demo", "seeds")),
    Opt("--device", "auto, cpu, cuda, ...", DEVICE, _api("demo:run_demo", "device")),
]

TRAIN_EXTRA = {"stego": [STEGO[2], Opt("--no-eval", "skip the evaluation on the val split", switch=True)]}
"""Options of one training method beyond every method's (config, overrides, run folder)."""


def train_options(name: str, training: Training) -> list[Opt]:
    """The options of ``unseg train NAME``: its config and overrides, its own, and the run folder's."""
    return [*config_options(name, training.example), *TRAIN_EXTRA.get(name, []), *RUN(training.out, training.holds)]


def values(args: argparse.Namespace, opts: Sequence[Opt], skip: Sequence[str] = ()) -> dict[str, Any]:
    """The values the user gave for the options ``opts`` (by their API names; a switch only when on), but those
    in ``skip``: the others keep the API's defaults."""
    out = {}
    for opt in opts:
        value = getattr(args, opt.name, None)
        if opt.name not in skip and value is not None and value is not False:
            out[opt.name] = value
    return out


@dataclass(frozen=True)
class Command:
    """A command: its words (``eval cluster``), help, options, the function of :mod:`unseg.cli` that runs it
    (by name) and values it sets (``defaults``, e.g. the head of ``eval linear``)."""

    words: tuple[str, ...]
    help: str
    options: Sequence[Opt]
    run: str
    defaults: dict[str, Any] = dataclasses.field(default_factory=dict)


GROUPS = {"eval": "evaluation protocols (`unseg docs evaluation`)", "train": "train a method", "stego": "STEGO tools"}
"""The help of each command group."""


def commands() -> list[Command]:
    """Every command, from the option groups above and the method catalog (its training methods)."""
    from .catalog import training, training_methods

    source = [*SOURCE, *REPORT]
    listed = [
        ("backbones", "list backbones: feature dim, stride, weight source", "backbones:backbones_table"),
        ("configs", "list the shipped configs (names for --config) with a summary of each", "config:configs_table"),
        ("methods", "list the methods: what each does, whether it segments and trains", "catalog:methods_table"),
    ]
    return [
        *[Command((name,), text, [], "cmd_table", {"table": table}) for name, text, table in listed],
        Command(
            ("datasets",),
            "list datasets and splits",
            [Opt("--layout", "also print each expected folder layout", switch=True)],
            "cmd_table",
            {"table": "datasets:datasets_table"},
        ),
        Command(("docs",), "print a documentation page shipped with unseg (no TOPIC: list them)", DOCS, "cmd_docs"),
        Command(
            ("extract",),
            "extract dense features into the cache (resumable; one shard set per rank)",
            [*SOURCE, *EXTRACT],
            "cmd_extract",
        ),
        Command(
            ("eval", "cluster"),
            "k-means on frozen features: K = #classes (Hungarian) and overclustering",
            [
                *source,
                *CLUSTER,
                *scoring("protocols:clustering_protocol"),
                *upsample_group("the mask size", "none (token labels, nearest-upsampled)"),
            ],
            "cmd_cluster",
        ),
        *[
            Command(
                ("eval", head),
                f"train a {head} head on a frozen backbone and score it",
                [*source, *HEAD],
                "cmd_head",
                {"head": head},
            )
            for head in ("linear", "fcn")
        ],
        Command(
            ("eval", "stego"), "score a STEGO checkpoint's cluster and linear probes", EVAL_STEGO, "cmd_eval_stego"
        ),
        Command(
            ("eval", "unsupervised"),
            "fully unsupervised: k-means, + CBFE, + community detection",
            [*source, *UNSUPERVISED],
            "cmd_unsupervised",
        ),
        Command(
            ("eval", "segments"),
            "segment a labelled split as `unseg segment` would; score each image's "
            "segments on its own (per-image protocol) and the groups dataset-level (`unseg docs photos`)",
            [*SOURCE, METHOD(), *SPECTRAL, *SEGMENTS],
            "cmd_segments",
        ),
        Command(
            ("eval", "retrieval"),
            "dense nearest-neighbour retrieval (Hummingbird protocol)",
            [*source, *RETRIEVAL],
            "cmd_retrieval",
        ),
        Command(("stego", "knn"), "precompute the kNN table of the training split (cached)", STEGO, "cmd_stego_knn"),
        Command(
            ("stego", "sweep"),
            "STEGO vs raw / PCA / random projections over code dims (`unseg docs methods`)",
            [*STEGO, *SWEEP],
            "cmd_stego_sweep",
        ),
        Command(
            ("segment",),
            "segment your own images, no labels: label, segment and foreground PNGs, index.html (`unseg docs photos`)",
            [
                *SEGMENT,
                *backbone_options("the clustering's or checkpoint's", "the clustering's"),
                METHOD(),
                *SPECTRAL,
                *CD,
                *upsample_group("the input size", "guided (kmeans, cd, stego)"),
            ],
            "cmd_segment",
        ),
        Command(("demo",), "the whole path on the shipped CamVid sample, offline", DEMO, "cmd_demo"),
        *[
            Command(
                ("train", name),
                _method_summary(name),
                train_options(name, training(name)),
                "cmd_train",
                {"method": name},
            )
            for name in training_methods()
        ],
    ]


def _method_summary(name: str) -> str:
    from .catalog import METHODS

    return METHODS.get(name).summary
