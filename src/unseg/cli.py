"""`unseg` command line: a thin layer over the Python API (every command is one API call)."""
from __future__ import annotations

import argparse
import contextlib
import errno
import logging
import os
import sys
from pathlib import Path
from typing import Iterator, Sequence

from .errors import UnsegError
from .io import output_error
from .kinds import (COUNT, COUNTS, DEVICE, FRACTION, MAX_SIDE, NON_NEGATIVE, NON_NEGATIVE_REAL, POSITIVE,
                    PROBABILITY, SEED, SEEDS, CacheFolder, ConfigRef, InputFile, InputFolder, InputPath, Integer,
                    OutputFile, OutputFolder, Override, Parser, Real, Registered, Resume, Size, Text, UsageError,
                    nearest_existing)


_ROLE_HELP = ("which network of a teacher/student checkpoint; auto = what the authors' evaluation reads: "
              "the student (model.*) of a Leopart checkpoint, the teacher of a DINO training checkpoint")
_TRUST_HELP = ("unpickle the --weights / --checkpoint file fully, which runs any code it holds: only for files "
               "you trust (default: a safe loader that runs nothing; `unseg docs checkpoints`)")


def _backbone_names() -> list[str]:
    from .backbones import list_backbones

    return [spec.name for spec in list_backbones()]


def _dataset_names() -> list[str]:
    from .datasets import DATASETS

    return DATASETS.names()


BACKBONE = Registered("backbone", _backbone_names)
DATASET = Registered("dataset", _dataset_names)
WEIGHTS = InputFile("an existing checkpoint file, or 'random'", special=("random",))
SPLIT = Text("a split name ('' for a folder dataset's own folder)")


def _add_views(g: argparse._ArgumentGroup) -> None:
    """``--window``, ``--window-overlap``, ``--scales``: how the backbone sees a large input
    (``unseg docs upsampling``)."""
    g.add_argument("--window", type=Size("window"), nargs="+", metavar="PX",
                   help="run the backbone on overlapping windows of this size (one value or H W, a multiple of its "
                        "stride, at most the input size) and stitch their features (default: the whole input at once)")
    g.add_argument("--window-overlap", type=FRACTION, metavar="F",
                   help="with --window: fraction of a window shared with its neighbour, in [0, 1) (default 0.25)")
    g.add_argument("--scales", type=Real(0, low_open=True, many=True), nargs="+", metavar="S",
                   help="average the features of the input resized by each factor, e.g. 1 1.5 (default 1); with "
                        "--window every scaled input is tiled")


def _add_source(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("backbone and data")
    g.add_argument("--backbone", type=BACKBONE, help="registered backbone (see `unseg backbones`; default "
                                                     "efficientnet_lite0)")
    g.add_argument("--weights", type=WEIGHTS,
                   help="local checkpoint: DINO .pth / DINO training ckpt / Leopart or STEGO .ckpt")
    g.add_argument("--weights-role", choices=["auto", "teacher", "student"], help=_ROLE_HELP)
    g.add_argument("--trust-checkpoint", action="store_true", help=_TRUST_HELP)
    g.add_argument("--download", action="store_true", help="fetch hub weights when --weights is not given")
    g.add_argument("--dataset", type=DATASET, help="registered dataset (see `unseg datasets`; default camvid)")
    g.add_argument("--root", type=InputFolder(), required=True,
                   help="dataset folder")
    g.add_argument("--masks", type=InputFolder("an existing, readable folder of label maps"),
                   help="folder dataset: folder of <image stem>.png label maps")
    g.add_argument("--num-classes", type=COUNT, help="folder dataset: ids >= this are ignored")
    g.add_argument("--input-size", type=Size("input size"), nargs="+", metavar="PX",
                   help="input resolution: one value (square) or H W (default 448)")
    _add_views(g)
    g.add_argument("--cache-dir", type=CacheFolder(),
                   help="feature cache folder (default $UNSEG_CACHE/features or ~/.cache/unseg/features)")
    g.add_argument("--hash-images", action="store_true",
                   help="identify images by a hash of their bytes, not by their file's size, times and inode: "
                        "for file systems that do not keep those (``unseg docs reliability``); slower")
    g.add_argument("--device", type=DEVICE, help="auto (default), cpu, cuda, cuda:1, ...")
    g.add_argument("--batch-size", type=COUNT, help="images (with --window: windows) per forward pass (default 16)")
    g.add_argument("--workers", type=NON_NEGATIVE, help="data-loading processes (default 2)")
    g.add_argument("--skip-corrupt", action="store_true", help="skip (and log) unreadable images instead of failing")
    g.add_argument("--json", type=OutputFile(), help="also write the results as JSON to this file")


def _given(**values: object) -> dict:
    """The options the user gave: the others keep the API's defaults (defined there, once)."""
    return {k: v for k, v in values.items() if v is not None}


def _views(args: argparse.Namespace) -> dict:
    return _given(window=args.window, window_overlap=args.window_overlap,
                  scales=None if args.scales is None else tuple(args.scales))


def _source(args: argparse.Namespace):
    from .features import Source

    return Source(**_given(backbone=args.backbone, weights=args.weights, role=args.weights_role, dataset=args.dataset,
                           input_size=args.input_size, cache_dir=args.cache_dir, device=args.device,
                           batch_size=args.batch_size, num_workers=args.workers, **_views(args)),
                  download=args.download, trust_checkpoint=args.trust_checkpoint, root=args.root,
                  dataset_options=_given(masks=args.masks, num_classes=args.num_classes),
                  skip_corrupt=args.skip_corrupt, hash_images=args.hash_images, progress=sys.stderr.isatty())


def _write_json(path: Path | None, payload: object) -> None:
    if path is not None:
        from .io import save_json

        save_json(payload, path)
        print(f"results written to {path}")


def _add_scoring(p: argparse.ArgumentParser, matching_default: str) -> None:
    """``--matching`` and ``--absent-classes``; the defaults shown are the protocol's, defined in the API."""
    from .clustering.matching import METHODS
    from .evaluation.metrics import ABSENT_RULES, DEFAULT_ABSENT

    p.add_argument("--matching", choices=METHODS,
                   help=f"cluster-to-class rule (default {matching_default}): hungarian-iou maximises IoU "
                        "(Leopart), hungarian-pixels maximises matched pixels (STEGO), greedy is many-to-one by "
                        "precision, auto is hungarian-iou when K <= #classes else greedy (`unseg docs evaluation`)")
    p.add_argument("--absent-classes", choices=ABSENT_RULES,
                   help=f"a class in neither ground truth nor prediction: skip = left out of the mIoU (STEGO), "
                        f"zero = IoU 0 averaged over all classes (Leopart's PredsmIoU) (default {DEFAULT_ABSENT})")


def _add_upsample(p: argparse.ArgumentParser, target: str | None, default: str = "none",
                  meaning: str = "token labels, nearest-upsampled") -> None:
    """Feature upsampling before clustering / probes (``unseg docs upsampling``); ``target`` None: the
    command upsamples to a fixed size (no --upsample-size / --upsample-factor)."""
    from .features.upsample import MAX_GUIDE_RADIUS, UPSAMPLERS

    g = p.add_argument_group("feature upsampling (`unseg docs upsampling`)")
    g.add_argument("--upsample", choices=UPSAMPLERS,
                   help=f"assign labels on upsampled features: bilinear, or guided = bilinear then the guided filter, "
                        f"which moves the features' edges onto the image's (default {default}: {meaning})")
    if target is not None:
        g.add_argument("--upsample-size", type=Size("upsampling size"), nargs="+", metavar="PX",
                       help=f"target grid: one value (square) or H W (default {target})")
        g.add_argument("--upsample-factor", type=Real(0, MAX_SIDE, low_open=True),
                       help="target grid = this factor x the token grid")
    g.add_argument("--guide-radius", type=Real(0, MAX_GUIDE_RADIUS, low_open=True),
                   help="guided: window radius in tokens (default 1)")
    g.add_argument("--guide-eps", type=POSITIVE, help="guided: ridge term, squared RGB in 0..1; smaller follows "
                                                      "weaker edges (default 0.001)")


def _add_spectral(p: argparse.ArgumentParser) -> None:
    """The spectral method's options (``unseg docs photos``); the defaults are the API's."""
    from .unsupervised.spectral import EMBEDDINGS, SpectralSettings

    d = SpectralSettings()
    g = p.add_argument_group("--method spectral (each image on its own; unseg docs photos)")
    g.add_argument("--segments", type=COUNT, help=f"segments per image (default: chosen per image by merging "
                                                  f"similar neighbours, at most {d.oversegments})")
    g.add_argument("--merge-threshold", type=Real(-1, 1),
                   help=f"merge neighbouring segments while their features' cosine is at least this: lower "
                        f"gives fewer segments (default {d.merge_threshold})")
    g.add_argument("--groups", type=COUNT, help="groups of the folder's vocabulary (default: the most segments "
                                                "of one image)")
    g.add_argument("--oversegments", type=Integer(2), help=f"segments before merging (default {d.oversegments})")
    g.add_argument("--embedding", choices=EMBEDDINGS,
                   help=f"what the over-segmentation clusters: the graph's eigenvectors (spectral) or the image's "
                        f"own tokens (tokens: plain per-image k-means, the baseline) (default {d.embedding})")


def _spectral(args: argparse.Namespace) -> dict:
    from .unsupervised.spectral import SpectralSettings

    given = _given(segments=args.segments, merge_threshold=args.merge_threshold, oversegments=args.oversegments,
                   embedding=args.embedding)
    return _given(spectral=SpectralSettings(**given) if given else None, groups=args.groups)


def _upsampling(args: argparse.Namespace, default: str | None = None):
    """The upsampler asked for with --upsample (its options with it), or None: the command's default.
    ``default``: the API's method, for commands whose guide options apply without --upsample."""
    from .features import as_size
    from .features.upsample import Upsampling

    method = args.upsample or default
    if method is None:
        return None
    size = getattr(args, "upsample_size", None)
    return Upsampling(method, **_given(size=as_size(size, "upsampling size") if size is not None else None,
                                              factor=getattr(args, "upsample_factor", None), radius=args.guide_radius,
                                              eps=args.guide_eps))


def _scoring(args: argparse.Namespace) -> dict[str, str]:
    """The scoring options the user gave; the rest keep the protocol's defaults."""
    return _given(matching=args.matching, absent=args.absent_classes)


def cmd_backbones(args: argparse.Namespace) -> None:
    from .backbones import list_backbones

    specs = list_backbones()
    width = max(len(s.name) for s in specs)
    print(f"{'name':{width}s} {'dim':>5s} {'stride':>6s}  weights")
    for spec in specs:
        print(f"{spec.name:{width}s} {spec.embed_dim:5d} {spec.stride:6d}  {spec.weights}")


def cmd_configs(args: argparse.Namespace) -> None:
    from .config import config_description, shipped_configs

    configs = shipped_configs()
    width = max(map(len, configs), default=0)
    for name, file in configs.items():
        print(f"{name:{width}s}  {config_description(file)}")


def cmd_datasets(args: argparse.Namespace) -> None:
    from .datasets import DATASETS

    for name in DATASETS.names():
        cls = DATASETS.get(name)
        splits = ", ".join(cls.splits) if cls.splits else "any sub-folder"
        print(f"{name:16s} {len(cls.class_names):4d} classes  splits: {splits}")
        if args.layout:
            print(cls.layout)


def cmd_docs(args: argparse.Namespace) -> None:
    from .pages import page, topics

    if args.topic is not None:
        print(page(args.topic), end="")
        return
    titles = topics()
    width = max(map(len, titles), default=0)
    for name, title in titles.items():
        print(f"{name:{width}s}  {title}")
    print("\n`unseg docs TOPIC` prints a page")


def cmd_extract(args: argparse.Namespace) -> None:
    from .features import extract_features
    from .features.extract import distributed_rank

    rank, world_size = distributed_rank(args.rank, args.world_size)
    source = _source(args)
    for split in args.split:
        cache = extract_features(source.build_backbone(), source.build_dataset(split), source.input_size,
                                 rank=rank, world_size=world_size, **source.extract_options(),
                                 **_given(shard_size=args.shard_size, dtype=args.dtype, precision=args.precision))
        if cache is None:
            print(f"{split}: this rank's shards are written; other ranks are still running")
        else:
            print(f"{split}: {len(cache)} images, features {cache.dim}x{cache.grid[0]}x{cache.grid[1]} in {cache.root}"
                  + (f" ({len(cache.skipped)} skipped: {', '.join(cache.skipped[:5])})" if cache.skipped else ""))


def cmd_cluster(args: argparse.Namespace) -> None:
    from .protocols import clustering_protocol

    options = _given(split=args.split, ks=args.k, seeds=None if args.seeds is None else range(args.seeds),
                     mask_size=args.mask_size, niter=args.niter, nredo=args.nredo, upsample=_upsampling(args))
    if args.pca_dim is not None:
        options["pca_dim"] = args.pca_dim or None  # 0: no PCA
    result = clustering_protocol(_source(args), **options, **_scoring(args))
    print(result.describe())
    _write_json(args.json, result.to_dict())
    if args.report:
        _print_reports(result.write_report(args.report))


def cmd_head(args: argparse.Namespace) -> None:
    from .protocols import head_protocol

    result = head_protocol(_source(args), head=args.head, augment=not args.no_augment,
                           **_given(train_split=args.train_split, val_split=args.split, mask_size=args.mask_size,
                                    eval_mask_size=args.eval_mask_size, seed=args.seed, epochs=args.epochs,
                                    lr=args.lr, batch_size=args.head_batch_size))
    print(result.describe())
    _write_json(args.json, result.to_dict())
    if args.report:
        _print_reports([result.write_report(args.report)])


def cmd_demo(args: argparse.Namespace) -> None:
    from .demo import run_demo

    run_demo(**_given(out=args.out, seeds=None if args.seeds is None else range(args.seeds), device=args.device),
             progress=sys.stderr.isatty())


def _stego_config(args: argparse.Namespace):
    from .config import load_config
    from .methods.stego.train import StegoConfig

    return load_config(StegoConfig, args.config, args.overrides, method="stego")


def _add_config(p: argparse.ArgumentParser, method: str, example: str) -> None:
    p.add_argument("--config", type=ConfigRef(method), required=True,
                   help="shipped config name (`unseg configs`, e.g. camvid_effnet) or a YAML file")
    p.add_argument("overrides", type=Override(), nargs="*", help=f"key=value settings over the config, e.g. {example}")


def _add_stego(p: argparse.ArgumentParser) -> None:
    _add_config(p, "stego", "root=DATA max_steps=500")
    p.add_argument("--cache-dir", type=CacheFolder(),
                   help="feature cache folder (default $UNSEG_CACHE/features)")


def _add_run(p: argparse.ArgumentParser, default: str, holds: str) -> None:
    """``--out``, ``--resume``, ``--overwrite``: where a training run lives and what happens to one already there."""
    p.add_argument("--out", type=OutputFolder(), default=default, help=f"run folder: {holds} (default %(default)s)")
    p.add_argument("--resume", type=Resume(),
                   help="continue a run: a checkpoint file, or 'last' for OUT/checkpoints/last.ckpt; one that is "
                        "missing or not a training checkpoint of this run's model is an error, never a silent "
                        "fresh start")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the run already in --out (without it, a folder holding a run is refused)")


def _check_run(cfg, args: argparse.Namespace) -> None:
    """What a training run would find out only after its data preparation: the device, the logger and the
    run folder (a run there is continued with --resume or replaced with --overwrite, never silently)."""
    from .config import require_accelerator
    from .methods.trainer import check_logger, check_run_folder

    require_accelerator(cfg.accelerator)
    check_logger(cfg.logger)
    check_run_folder(args.out, args.resume, args.overwrite)


def cmd_train_stego(args: argparse.Namespace) -> None:
    from .methods.stego.pipeline import evaluate_run, fit_stego, split_data

    cfg = _stego_config(args)
    _check_run(cfg, args)
    module = fit_stego(cfg, args.out, args.cache_dir, resume=args.resume, overwrite=args.overwrite)
    print(f"STEGO head written to {Path(args.out) / 'stego.ckpt'} (STEGO's checkpoint layout)")
    if not args.no_eval:
        scores = evaluate_run(module, split_data(cfg, cfg.val_split, args.cache_dir), cfg.n_classes)
        print(f"{cfg.dataset}/{cfg.val_split} at {cfg.val_input_size}px, flip TTA: " + scores.summary())


def cmd_train_leopart(args: argparse.Namespace) -> None:
    from .config import load_config
    from .methods.leopart import LeopartConfig, train_leopart

    cfg = load_config(LeopartConfig, args.config, args.overrides, method="leopart")
    _check_run(cfg, args)
    module = train_leopart(cfg, args.out, resume=args.resume, overwrite=args.overwrite)
    if module.trainer.is_global_zero:
        print(f"Leopart weights written to {Path(args.out) / 'leopart.ckpt'} (Leopart's layout: --weights loads "
              f"the student, as Leopart's evaluation does; --weights-role teacher the teacher)")


def cmd_eval_stego(args: argparse.Namespace) -> None:
    from .methods.stego.pipeline import evaluate_run, split_data

    cfg = _stego_config(args)
    views = _views(args)
    val = split_data(cfg, cfg.val_split, args.cache_dir, views=views)
    scores = evaluate_run(args.checkpoint, val, cfg.n_classes, crf=args.crf, processes=args.processes,
                          trust_checkpoint=args.trust_checkpoint, upsample=_upsampling(args),
                          keep_predictions=args.report is not None, **_scoring(args))
    seen = f" through {val.cache.meta['backbone']}" if views else ""
    print(f"{args.checkpoint} on {cfg.dataset}/{cfg.val_split} at {cfg.val_input_size}px{seen}, flip TTA, "
          f"{args.upsample or 'bilinear'} code upsampling{', dense CRF' if args.crf else ''}: " + scores.summary())
    _write_json(args.json, {**scores.to_dict(), **({"backbone_view": val.cache.meta["backbone"]} if views else {})})
    if args.report:
        from .visualisation.report import dataset_report

        report = dataset_report(args.report, val.dataset, val.cache, scores.predictions, settings=scores.to_dict(),
                                title=f"STEGO cluster probe, {cfg.dataset}/{cfg.val_split}")
        print(f"report written to {report.root}/ (open {report.gallery})")


def cmd_stego_knn(args: argparse.Namespace) -> None:
    from .methods.stego.knn import knn_indices, knn_path
    from .methods.stego.pipeline import split_data

    cfg = _stego_config(args)
    data = split_data(cfg, cfg.train_split, args.cache_dir)
    knn = knn_indices(data.cache, cfg.knn_k)
    print(f"kNN table {knn.shape} of {cfg.dataset}/{cfg.train_split} in {knn_path(data.cache, cfg.knn_k)}")


def cmd_stego_sweep(args: argparse.Namespace) -> None:
    from .methods.stego.pipeline import SWEEP_OUT, dimension_sweep

    cfg = _stego_config(args)
    options = _given(dims=args.dims, methods=args.methods, seeds=args.seeds, out_dir=args.out)
    dimension_sweep(cfg, cache_dir=args.cache_dir, crf=args.crf, **options)
    out = Path(options.get("out_dir", SWEEP_OUT))
    print(f"table: {out / 'results.csv'}  plot: {out / 'miou_vs_dim.png'}")


def _add_report(p: argparse.ArgumentParser) -> None:
    p.add_argument("--report", type=OutputFolder(), metavar="DIR",
                   help="also write a report folder: metrics.json, per-class IoU chart, confusion image and a "
                        "gallery of the best and worst images")


def _print_reports(reports: list) -> None:
    for report in reports:
        print(f"report written to {report.root}/ (open {report.gallery})")


def cmd_segment(args: argparse.Namespace) -> None:
    from .segment import SegmentOptions, segment
    from .unsupervised.fitted import CDSettings

    cd = CDSettings(**_given(k=args.cd_k, markov_time=args.markov_time, weight_threshold=args.weight_threshold,
                             fg_threshold=args.fg_threshold, fg_k=args.fg_k))
    options = SegmentOptions(**_given(
        method=args.method, backbone=args.backbone, weights=args.weights, k=args.k, out_dir=args.out,
        clustering=args.clustering, save_clustering=args.save_clustering, checkpoint=args.checkpoint,
        input_size=args.input_size, seed=args.seed, role=args.weights_role, device=args.device,
        batch_size=args.batch_size, num_workers=args.workers,
        upsample=_upsampling(args, SegmentOptions().upsample.method), **_views(args), **_spectral(args)),
        cd=cd, crf=args.crf, skip_invalid=args.skip_invalid, download=args.download,
        trust_checkpoint=args.trust_checkpoint)
    run = segment(args.paths, options)
    print(f"segmented {run.describe()}: {Path(args.out)}/labels/, segments/, foreground/; open {run.gallery}")
    if args.save_clustering:
        print(f"clustering saved to {args.save_clustering} (reuse: --clustering {args.save_clustering})")


def cmd_segments(args: argparse.Namespace) -> None:
    from .protocols import segments_protocol
    from .segment import SegmentOptions

    result = segments_protocol(_source(args), options=SegmentOptions(**_given(k=args.k), **_spectral(args)),
                               **_given(method=args.method, split=args.split, mask_size=args.mask_size,
                                        seeds=None if args.seeds is None else range(args.seeds)))
    print(result.describe())
    _write_json(args.json, result.to_dict())


def cmd_unsupervised(args: argparse.Namespace) -> None:
    from .protocols import fully_unsupervised

    given = _given(k=args.cd_k, markov_time=args.markov_time, weight_threshold=args.weight_threshold)
    result = fully_unsupervised(_source(args), **_given(
        train_split=args.train_split, val_split=args.split, background=args.background,
        hyper_parameters="published" if args.published else (given or None), trials=args.trials, runs=args.runs,
        kmeans_seeds=None if args.seeds is None else range(args.seeds), fg_k=args.fg_k, mask_size=args.mask_size))
    print(result.describe())
    _write_json(args.json, result.to_dict())
    if args.report:
        _print_reports(result.write_report(args.report))


def cmd_retrieval(args: argparse.Namespace) -> None:
    from .protocols import retrieval_protocol

    result = retrieval_protocol(_source(args), keep_predictions=args.report is not None, **_given(
        train_split=args.train_split, val_split=args.split, k=args.neighbours, temperature=args.temperature,
        mode=args.labels, memory_size=args.memory_size, eval_mask_size=args.eval_mask_size, seed=args.seed))
    print(result.describe())
    _write_json(args.json, result.to_dict())
    if args.report:
        _print_reports([result.write_report(args.report)])


def build_parser() -> argparse.ArgumentParser:
    """The ``unseg`` parser: every option that takes a value names its kind (:mod:`unseg.kinds`) as ``type=``."""
    from .clustering.matching import CLUSTERING_MATCHING, STEGO_MATCHING
    from .methods.projections import PROJECTIONS
    from .pages import topics
    from .segmenters import DEFAULT_K, DEFAULT_SEGMENTER, SEGMENTERS

    parser = Parser(prog="unseg", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true")
    parser.add_argument("--threads", type=COUNT, metavar="N",
                        help="busy threads for torch, faiss, BLAS and parallel k-means (default: $UNSEG_THREADS, "
                             "else $OMP_NUM_THREADS, else all cores; never more than the cores)")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("backbones", help="list backbones: feature dim, stride, weight source")
    p.set_defaults(func=cmd_backbones)

    p = sub.add_parser("configs", help="list the shipped configs (names for --config) with a summary of each")
    p.set_defaults(func=cmd_configs)

    p = sub.add_parser("datasets", help="list datasets and splits")
    p.add_argument("--layout", action="store_true", help="also print each expected folder layout")
    p.set_defaults(func=cmd_datasets)

    p = sub.add_parser("docs", help="print a documentation page shipped with unseg (no TOPIC: list them)")
    p.add_argument("topic", nargs="?", metavar="TOPIC", choices=sorted(topics()),
                   help="e.g. methods, evaluation, upsampling")
    p.set_defaults(func=cmd_docs)

    p = sub.add_parser("extract", help="extract dense features into the cache (resumable; one shard set per rank)")
    _add_source(p)
    p.add_argument("--split", type=Text(SPLIT.expects, many=True), nargs="+", default=["val"],
                   help="splits to extract (default val)")
    p.add_argument("--shard-size", type=COUNT, help="images per shard file (default 256)")
    p.add_argument("--dtype", choices=["float32", "float16"], help="storage type (default float32)")
    p.add_argument("--precision", choices=["fp32", "bf16", "fp16"],
                   help="forward precision: fp32 (default) or autocast to bf16 / fp16 (CUDA only); "
                        "the cache records it")
    p.add_argument("--rank", type=NON_NEGATIVE, help="this process's rank, below --world-size "
                                                     "(default: $RANK from torchrun, else 0)")
    p.add_argument("--world-size", type=COUNT, help="number of ranks (default: $WORLD_SIZE, else 1)")
    p.set_defaults(func=cmd_extract)

    ev = sub.add_parser("eval", help="evaluation protocols (`unseg docs evaluation`)")
    ev = ev.add_subparsers(dest="protocol", required=True)
    p = ev.add_parser("cluster", help="k-means on frozen features: K = #classes (Hungarian) and overclustering")
    _add_source(p)
    p.add_argument("--split", type=SPLIT, help="evaluation split (default val)")
    p.add_argument("--k", type=COUNTS, nargs="+", help="cluster counts (default 100)")
    p.add_argument("--seeds", type=COUNT, help="seeds 0..N-1 (default 5)")
    p.add_argument("--mask-size", type=Size("mask size"), nargs="+", metavar="PX",
                   help="label resolution: one value (square) or H W (default 100)")
    p.add_argument("--pca-dim", type=Integer(0, meaning="0 = no PCA"),
                   help="PCA dimensions, at most the feature width; 0 = no PCA (default 50)")
    p.add_argument("--niter", type=COUNT, help="k-means iterations (default 100)")
    p.add_argument("--nredo", type=COUNT, help="k-means restarts (default 5)")
    _add_scoring(p, CLUSTERING_MATCHING)
    _add_upsample(p, "the mask size")
    _add_report(p)
    p.set_defaults(func=cmd_cluster)
    for head in ("linear", "fcn"):
        p = ev.add_parser(head, help=f"train a {head} head on a frozen backbone and score it")
        _add_source(p)
        _add_report(p)
        p.set_defaults(func=cmd_head, head=head)
        p.add_argument("--train-split", type=SPLIT, help="training split (default train)")
        p.add_argument("--split", type=SPLIT, help="evaluation split (default val)")
        p.add_argument("--mask-size", type=Size("mask size"), nargs="+", metavar="PX",
                       help="training label resolution: one value (square) or H W (default 100)")
        p.add_argument("--eval-mask-size", type=Size("evaluation mask size"), nargs="+", metavar="PX",
                       help="evaluation label resolution (default: input size)")
        p.add_argument("--no-augment", action="store_true", help="train on cached features (fast, no augmentation)")
        p.add_argument("--epochs", type=COUNT)
        p.add_argument("--lr", type=POSITIVE)
        p.add_argument("--head-batch-size", type=COUNT)
        p.add_argument("--seed", type=SEED, help="(default 0)")

    p = ev.add_parser("stego", help="score a STEGO checkpoint's cluster and linear probes")
    _add_stego(p)
    p.add_argument("--checkpoint", type=InputFile("an existing STEGO checkpoint file"), required=True,
                   help="ours or a released STEGO .ckpt")
    p.add_argument("--trust-checkpoint", action="store_true", help=_TRUST_HELP)
    p.add_argument("--crf", action="store_true", help="refine with a dense CRF (extra: unseg[crf])")
    p.add_argument("--processes", type=COUNT, help="CRF worker processes (default: the thread count, --threads)")
    p.add_argument("--json", type=OutputFile())
    _add_scoring(p, STEGO_MATCHING)
    _add_upsample(p, None, "bilinear", "STEGO's, codes to the masks' size")
    _add_views(p.add_argument_group("large photos (default: the whole val_input_size input at scale 1)"))
    _add_report(p)
    p.set_defaults(func=cmd_eval_stego)

    p = ev.add_parser("unsupervised", help="fully unsupervised: k-means, + CBFE, + community detection")
    _add_source(p)
    _add_report(p)
    p.add_argument("--train-split", type=SPLIT, help="split for the CBFE threshold and the CD search (default train)")
    p.add_argument("--split", type=SPLIT, help="evaluation split (default val)")
    p.add_argument("--background", type=Text("class names or ids", many=True), nargs="+", metavar="CLASS",
                   help="classes (names or ids) that are background for CBFE (default: a class named background; "
                        "none -> no CBFE)")
    p.add_argument("--fg-k", type=COUNT, help="CBFE spherical k-means clusters (default 200)")
    p.add_argument("--cd-k", type=COUNT, help="CD overclustering k (give with --markov-time, --weight-threshold)")
    p.add_argument("--markov-time", type=POSITIVE)
    p.add_argument("--weight-threshold", type=NON_NEGATIVE_REAL)
    p.add_argument("--published", action="store_true", help="use the authors' CD hyper-parameters for --backbone")
    p.add_argument("--trials", type=COUNT, help="TPE trials when searching (default 300, the authors')")
    p.add_argument("--runs", type=COUNT, help="Infomap runs (seeds 0..N-1, Infomap seeds 1..N; default 10)")
    p.add_argument("--seeds", type=COUNT, help="k-means seeds of the k-means and CBFE stages (default 5)")
    p.add_argument("--mask-size", type=Size("mask size"), nargs="+", metavar="PX",
                   help="label resolution: one value (square) or H W (default 100)")
    p.set_defaults(func=cmd_unsupervised)

    p = ev.add_parser("segments", help="segment a labelled split as `unseg segment` would; score each image's "
                                       "segments on its own (per-image protocol) and the groups dataset-level")
    _add_source(p)
    p.add_argument("--method", choices=SEGMENTERS.names(), help=f"(default {DEFAULT_SEGMENTER})")
    _add_spectral(p)
    p.add_argument("--k", type=COUNT, help="kmeans clusters, cd's preferred communities (default: #classes)")
    p.add_argument("--split", type=SPLIT, help="evaluation split (default val)")
    p.add_argument("--seeds", type=COUNT, help="seeds 0..N-1 (default 5)")
    p.add_argument("--mask-size", type=Size("mask size"), nargs="+", metavar="PX",
                   help="label resolution of the dataset-level score: one value (square) or H W (default 100)")
    p.set_defaults(func=cmd_segments)

    p = ev.add_parser("retrieval", help="dense nearest-neighbour retrieval (Hummingbird protocol)")
    _add_source(p)
    _add_report(p)
    p.add_argument("--train-split", type=SPLIT, help="memory bank split (default train)")
    p.add_argument("--split", type=SPLIT, help="evaluation split (default val)")
    p.add_argument("--neighbours", type=COUNT, help="nearest neighbours (default 30)")
    p.add_argument("--temperature", type=POSITIVE, help="softmax temperature (default 0.02)")
    p.add_argument("--labels", choices=["distribution", "majority"],
                   help="label of a memory patch: its class distribution (Hummingbird, default) or majority class")
    p.add_argument("--memory-size", type=COUNT, help="random subset of memory patches (default: all)")
    p.add_argument("--eval-mask-size", type=Size("evaluation mask size"), nargs="+", metavar="PX",
                   help="evaluation label resolution (default: input size)")
    p.add_argument("--seed", type=SEED, help="memory subset seed (default 0)")
    p.set_defaults(func=cmd_retrieval)

    train = sub.add_parser("train", help="train a method").add_subparsers(dest="method", required=True)
    p = train.add_parser("stego", help="train a STEGO head on cached features of a frozen backbone")
    _add_stego(p)
    _add_run(p, "runs/stego", "config, logs, checkpoints, stego.ckpt")
    p.add_argument("--no-eval", action="store_true", help="skip the evaluation on the val split")
    p.set_defaults(func=cmd_train_stego)

    p = train.add_parser("leopart", help="fine-tune a backbone with the Leopart loss (dense self-supervision)")
    _add_config(p, "leopart", "root=DATA epochs=10")
    _add_run(p, "runs/leopart", "config, logs, checkpoints, leopart.ckpt")
    p.set_defaults(func=cmd_train_leopart)

    stego = sub.add_parser("stego", help="STEGO tools").add_subparsers(dest="tool", required=True)
    p = stego.add_parser("knn", help="precompute the kNN table of the training split (cached)")
    _add_stego(p)
    p.set_defaults(func=cmd_stego_knn)
    p = stego.add_parser("sweep", help="STEGO vs raw / PCA / random projections over code dims "
                                        "(the study, `unseg docs methods`)")
    _add_stego(p)
    p.add_argument("--dims", type=COUNTS, nargs="+", help="code dimensions (default 3 8 16 32 70 128)")
    p.add_argument("--methods", choices=["stego", *PROJECTIONS], nargs="+", help="default: stego pca random raw")
    p.add_argument("--seeds", type=SEEDS, nargs="+", help="seed values, e.g. 0 1 2 (default 0)")
    p.add_argument("--crf", action="store_true", help="also score every run with a dense CRF")
    p.add_argument("--out", type=OutputFolder(), help="output folder (default runs/stego_sweep)")
    p.set_defaults(func=cmd_stego_sweep)

    p = sub.add_parser("segment", help="segment your own images, no labels: label, segment and foreground PNGs, "
                                       "index.html (unseg docs photos)")
    p.add_argument("paths", type=InputPath("existing image files or folders of images", many=True), nargs="+",
                   metavar="PATH", help="image files or folders of images")
    p.add_argument("--method", choices=SEGMENTERS.names(),
                   help=f"(default {DEFAULT_SEGMENTER}) " + "; ".join(f"{n}: {SEGMENTERS.get(n).summary}"
                                                                       for n in SEGMENTERS.names()))
    p.add_argument("--out", type=OutputFolder(), required=True,
                   help="output folder: labels/ (groups), segments/, foreground/, panels/, index.html")
    _add_spectral(p)
    p.add_argument("--k", type=COUNT, help=f"kmeans clusters, cd's preferred communities (default {DEFAULT_K})")
    p.add_argument("--backbone", type=BACKBONE,
                   help="registered backbone (default: the clustering's, else efficientnet_lite0)")
    p.add_argument("--weights", type=WEIGHTS, help="local checkpoint of the backbone")
    p.add_argument("--weights-role", choices=["auto", "teacher", "student"], help=_ROLE_HELP)
    p.add_argument("--download", action="store_true", help="fetch hub weights when --weights is not given")
    p.add_argument("--checkpoint", type=InputFile("an existing STEGO checkpoint file"),
                   help="--method stego: a STEGO .ckpt (head and cluster probe)")
    p.add_argument("--trust-checkpoint", action="store_true", help=_TRUST_HELP)
    p.add_argument("--crf", action="store_true", help="refine with a dense CRF (extra: unseg[crf])")
    p.add_argument("--clustering", type=InputFile("an existing clustering file (--save-clustering)"),
                   metavar="FILE", help="apply a clustering saved with --save-clustering")
    p.add_argument("--save-clustering", type=OutputFile(), metavar="FILE",
                   help="save the fitted clustering (kmeans, cd) for reuse")
    p.add_argument("--input-size", type=Size("input size"), nargs="+", metavar="PX",
                   help="backbone input: one value (square) or H W (default: the clustering's, else 448)")
    _add_views(p.add_argument_group("large photos (default: the clustering's, else the whole input at scale 1)"))
    g = p.add_argument_group("--method cd (defaults: the authors' ViT-S/16 values)")
    g.add_argument("--cd-k", type=COUNT, help="overclustering k")
    g.add_argument("--markov-time", type=POSITIVE, help="Infomap Markov time")
    g.add_argument("--weight-threshold", type=NON_NEGATIVE_REAL, help="co-occurrence edge threshold")
    g.add_argument("--fg-threshold", type=PROBABILITY,
                   help="CBFE precision threshold (default: no foreground extraction)")
    g.add_argument("--fg-k", type=COUNT, help="CBFE spherical k-means clusters (default 200)")
    p.add_argument("--skip-invalid", action="store_true", help="skip (and log by name) unreadable files")
    p.add_argument("--seed", type=SEED, help="k-means / Infomap seed (default 0)")
    p.add_argument("--device", type=DEVICE, help="auto (default), cpu, cuda, ...")
    p.add_argument("--batch-size", type=COUNT, help="images (with --window: windows) per forward pass (default 16)")
    p.add_argument("--workers", type=NON_NEGATIVE, help="data-loading processes (default 2)")
    _add_upsample(p, "the input size", "guided", "kmeans, cd, stego: guided upsampling to the input size")
    p.set_defaults(func=cmd_segment)

    p = sub.add_parser("demo", help="the whole path on the shipped CamVid sample, offline")
    p.add_argument("--out", type=OutputFolder(), help="output folder (default demo_out)")
    p.add_argument("--seeds", type=COUNT, help="k-means seeds 0..N-1 (default 5)")
    p.add_argument("--device", type=DEVICE, help="auto (default), cpu, cuda, ...")
    p.set_defaults(func=cmd_demo)
    return parser


def parser_actions(parser: argparse.ArgumentParser) -> Iterator[argparse.Action]:
    """Every action of ``parser`` and of its subcommands' parsers, recursively."""
    for action in parser._actions:
        yield action
        if isinstance(action, argparse._SubParsersAction):
            for sub in dict.fromkeys(action.choices.values()):  # a parser once, whatever its aliases
                yield from parser_actions(sub)


def _new_folders(parser: argparse.ArgumentParser, args: argparse.Namespace) -> list[Path]:
    """The first missing folder on the way to each output the command names (its --out, --report, --json, cache):
    what the command will have created, to remove again if it fails and leaves them empty."""
    found = []
    for action in parser_actions(parser):
        value = getattr(args, action.dest, None)
        if value is None or not isinstance(action.type, (OutputFolder, OutputFile, CacheFolder)):
            continue
        target = Path(value).expanduser().absolute()
        target = target.parent if isinstance(action.type, OutputFile) else target
        existing = nearest_existing(target)
        if existing != target:
            found.append(existing / target.relative_to(existing).parts[0])
    return found


def _remove_empty(folder: Path) -> None:
    """Remove ``folder`` and the folders under it that hold no file; anything written stays."""
    for path, _, _ in os.walk(folder, topdown=False):
        with contextlib.suppress(OSError):
            os.rmdir(path)


@contextlib.contextmanager
def _stderr_logging(verbose: bool) -> Iterator[None]:
    """unseg's log lines on stderr while a command runs, through one handler on the ``unseg`` logger.

    Lightning's loggers keep their own handlers; a handler on the root logger (``basicConfig``)
    would print each of their lines a second time. The loggers are restored afterwards.
    """
    logger, backbones = logging.getLogger("unseg"), logging.getLogger("unseg.backbones")
    levels = logger.level, backbones.level
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    logger.addHandler(handler)
    logger.setLevel(logging.INFO if verbose else logging.WARNING)
    backbones.setLevel(logging.INFO)  # always say which network a file gave
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(levels[0])
        backbones.setLevel(levels[1])


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; bad input ends it with one line ``unseg: error: ...`` and exit status 2, and the
    output folders it created are removed again if it leaves them empty."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except UsageError as exc:
        print(f"unseg: error: {exc}", file=sys.stderr)
        return 2
    created = _new_folders(parser, args)
    with _stderr_logging(args.verbose):
        try:
            from .threads import set_threads

            set_threads(args.threads)
            args.func(args)
            return 0
        except UnsegError as exc:
            message = str(exc)
        except BrokenPipeError:  # output piped into a reader that quit early (`unseg docs methods | head`)
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # so the exit's flush cannot fail again
            return 1
        except OSError as exc:  # a write outside the package's own (a logger's file) on a full or read-only disk
            if exc.errno not in _DISK_ERRNOS:
                raise
            message = str(output_error(exc, exc.filename or "a file"))
    print(f"unseg: error: {message}", file=sys.stderr)
    for folder in created:
        _remove_empty(folder)
    return 2


_DISK_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS)


if __name__ == "__main__":
    sys.exit(main())
