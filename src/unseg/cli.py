"""`unseg` command line: a thin layer over the Python API (every command is one API call). Its options are
declared once in :mod:`unseg.options`; a value the user does not give is not passed: the API's default applies."""

from __future__ import annotations

import argparse
import errno
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from . import options as op
from .console import stderr_logging
from .errors import UnsegError
from .io import output_error
from .kinds import COUNT, Parser, UsageError, created_folders, remove_empty

Command = tuple[tuple[str, ...], str, list[op.Opt], Callable[[argparse.Namespace], None]]  # words, help, options, call


def _source(args: argparse.Namespace) -> Any:
    from .features import Source

    return Source(
        **op.given(
            args,
            "backbone",
            "weights",
            "role",
            "dataset",
            "input_size",
            "cache_dir",
            "device",
            "batch_size",
            "num_workers",
        ),
        **_views(args),
        download=args.download,
        trust_checkpoint=args.trust_checkpoint,
        root=args.root,
        dataset_options=op.given(args, "masks", "num_classes"),
        skip_corrupt=args.skip_corrupt,
        hash_images=args.hash_images,
        progress=sys.stderr.isatty(),
    )


def _views(args: argparse.Namespace) -> dict[str, Any]:
    views = op.given(args, "window", "window_overlap", "scales")
    return {**views, "scales": tuple(views["scales"])} if "scales" in views else views


def _seeds(args: argparse.Namespace, key: str = "seeds") -> dict[str, Any]:
    return {} if args.seeds is None else {key: range(args.seeds)}


def _upsampling(args: argparse.Namespace, default: str | None = None) -> Any:
    """The upsampler asked for with --upsample (its options with it), or the command's ``default`` method."""
    from .features.upsample import Upsampling

    method = args.upsample or default
    if method is None:
        return None
    return Upsampling(
        method, **op.given(args, size="upsample_size", factor="upsample_factor", radius="guide_radius", eps="guide_eps")
    )


def _spectral(args: argparse.Namespace) -> dict[str, Any]:
    from .unsupervised.spectral import SpectralSettings

    chosen = op.given(args, "segments", "merge_threshold", "oversegments", "embedding")
    return {**({"spectral": SpectralSettings(**chosen)} if chosen else {}), **op.given(args, "groups")}


def _finish(args: argparse.Namespace, result: Any) -> None:
    """Print the result, write its JSON (``--json``) and report folders (``--report``)."""
    print(result.describe())
    if args.json is not None:
        from .io import save_json

        save_json(result.to_dict(), args.json)
        print(f"results written to {args.json}")
    if getattr(args, "report", None):
        reports = result.write_report(args.report)
        for r in reports if isinstance(reports, list) else [reports]:
            print(f"report written to {r.root}/ (open {r.gallery})")


def cmd_backbones(args: argparse.Namespace) -> None:
    from .backbones import backbones_table

    print(backbones_table())


def cmd_configs(args: argparse.Namespace) -> None:
    from .config import configs_table

    print(configs_table())


def cmd_datasets(args: argparse.Namespace) -> None:
    from .datasets import datasets_table

    print(datasets_table(args.layout))


def cmd_methods(args: argparse.Namespace) -> None:
    from .catalog import methods_table

    print(methods_table())


def cmd_docs(args: argparse.Namespace) -> None:
    from .pages import page, topics_table

    print(topics_table() if args.topic is None else page(args.topic), end="" if args.topic else "\n")


def cmd_extract(args: argparse.Namespace) -> None:
    from .features import extract_features
    from .features.extract import distributed_rank

    rank, world_size = distributed_rank(args.rank, args.world_size)
    source = _source(args)
    for split in args.split:
        cache = extract_features(
            source.build_backbone(),
            source.build_dataset(split),
            source.input_size,
            rank=rank,
            world_size=world_size,
            **source.extract_options(),
            **op.given(args, "shard_size", "dtype", "precision"),
        )
        if cache is None:
            print(f"{split}: this rank's shards are written; other ranks are still running")
        else:
            print(
                f"{split}: {len(cache)} images, features {cache.dim}x{cache.grid[0]}x{cache.grid[1]} in {cache.root}"
                + (f" ({len(cache.skipped)} skipped: {', '.join(cache.skipped[:5])})" if cache.skipped else "")
            )


def cmd_cluster(args: argparse.Namespace) -> None:
    from .protocols import clustering_protocol

    options = op.given(args, "split", "ks", "mask_size", "niter", "nredo", "matching", "absent")
    if args.pca_dim is not None:
        options["pca_dim"] = args.pca_dim or None  # 0: no PCA
    _finish(args, clustering_protocol(_source(args), **options, **_seeds(args), upsample=_upsampling(args)))


def cmd_head(args: argparse.Namespace) -> None:
    from .protocols import head_protocol

    _finish(
        args,
        head_protocol(
            _source(args),
            head=args.head,
            augment=not args.no_augment,
            **op.given(
                args,
                "train_split",
                "val_split",
                "mask_size",
                "eval_mask_size",
                "seed",
                "epochs",
                "lr",
                batch_size="head_batch_size",
            ),
        ),
    )


def cmd_unsupervised(args: argparse.Namespace) -> None:
    from .protocols import fully_unsupervised

    chosen = op.given(args, "markov_time", "weight_threshold", k="cd_k")
    _finish(
        args,
        fully_unsupervised(
            _source(args),
            hyper_parameters="published" if args.published else (chosen or None),
            **op.given(args, "train_split", "val_split", "background", "trials", "runs", "fg_k", "mask_size"),
            **_seeds(args, "kmeans_seeds"),
        ),
    )


def cmd_segments(args: argparse.Namespace) -> None:
    from .protocols import segments_protocol
    from .segment import SegmentOptions

    _finish(
        args,
        segments_protocol(
            _source(args),
            options=SegmentOptions(**op.given(args, "k"), **_spectral(args)),
            **op.given(args, "method", "split", "mask_size"),
            **_seeds(args),
        ),
    )


def cmd_retrieval(args: argparse.Namespace) -> None:
    from .protocols import retrieval_protocol

    _finish(
        args,
        retrieval_protocol(
            _source(args),
            keep_predictions=args.report is not None,
            **op.given(
                args, "train_split", "val_split", "k", "temperature", "mode", "memory_size", "eval_mask_size", "seed"
            ),
        ),
    )


def _config(args: argparse.Namespace, method: str) -> Any:
    from .catalog import training
    from .config import load_config

    return load_config(training(method).config(), args.config, args.overrides, method=method)


def cmd_train(args: argparse.Namespace) -> None:
    """Any training method of the catalog: its config, checked run folder, and run."""
    from .catalog import training
    from .config import require_accelerator
    from .methods.trainer import check_logger, check_run_folder

    cfg = _config(args, args.method)
    require_accelerator(cfg.accelerator)  # what the run would find out only after preparing its data
    check_logger(cfg.logger)
    check_run_folder(args.out, args.resume, args.overwrite)
    told = training(args.method).run(
        cfg,
        args.out,
        getattr(args, "cache_dir", None),
        args.resume,
        args.overwrite,
        evaluate=not getattr(args, "no_eval", False),
    )
    if told:
        print(told)


def cmd_eval_stego(args: argparse.Namespace) -> None:
    from .methods.stego.pipeline import evaluate_run, split_data

    cfg, views = _config(args, "stego"), _views(args)
    val = split_data(cfg, cfg.val_split, args.cache_dir, views=views)
    scores = evaluate_run(
        args.checkpoint,
        val,
        cfg.n_classes,
        crf=args.crf,
        trust_checkpoint=args.trust_checkpoint,
        upsample=_upsampling(args),
        keep_predictions=args.report is not None,
        **op.given(args, "processes", "matching", "absent"),
    )
    seen = f" through {val.cache.meta['backbone']}" if views else ""
    print(
        f"{args.checkpoint} on {cfg.dataset}/{cfg.val_split} at {cfg.val_input_size}px{seen}, flip TTA, "
        f"{args.upsample or 'bilinear'} code upsampling{', dense CRF' if args.crf else ''}: " + scores.summary()
    )
    if args.json is not None:
        from .io import save_json

        save_json({**scores.to_dict(), **({"backbone_view": val.cache.meta["backbone"]} if views else {})}, args.json)
        print(f"results written to {args.json}")
    if args.report:
        from .visualisation.report import dataset_report

        assert scores.predictions is not None  # kept for the report
        report = dataset_report(
            args.report,
            val.dataset,
            val.cache,
            scores.predictions,
            settings=scores.to_dict(),
            title=f"STEGO cluster probe, {cfg.dataset}/{cfg.val_split}",
        )
        print(f"report written to {report.root}/ (open {report.gallery})")


def cmd_stego_knn(args: argparse.Namespace) -> None:
    from .methods.stego.knn import knn_indices, knn_path
    from .methods.stego.pipeline import split_data

    cfg = _config(args, "stego")
    data = split_data(cfg, cfg.train_split, args.cache_dir)
    knn = knn_indices(data.cache, cfg.knn_k)
    print(f"kNN table {knn.shape} of {cfg.dataset}/{cfg.train_split} in {knn_path(data.cache, cfg.knn_k)}")


def cmd_stego_sweep(args: argparse.Namespace) -> None:
    from .methods.stego.pipeline import SWEEP_OUT, dimension_sweep

    options = op.given(args, "dims", "methods", "seeds", "out_dir")
    dimension_sweep(_config(args, "stego"), cache_dir=args.cache_dir, crf=args.crf, **options)
    out = Path(options.get("out_dir", SWEEP_OUT))
    print(f"table: {out / 'results.csv'}  plot: {out / 'miou_vs_dim.png'}")


def cmd_segment(args: argparse.Namespace) -> None:
    from .segment import SegmentOptions, segment
    from .unsupervised.fitted import CDSettings

    cd = CDSettings(**op.given(args, "markov_time", "weight_threshold", "fg_threshold", "fg_k", k="cd_k"))
    options = SegmentOptions(
        **op.given(
            args,
            "method",
            "backbone",
            "weights",
            "role",
            "k",
            "out_dir",
            "clustering",
            "save_clustering",
            "checkpoint",
            "input_size",
            "seed",
            "device",
            "batch_size",
            "num_workers",
        ),
        upsample=_upsampling(args, SegmentOptions().upsample.method),
        **_views(args),
        **_spectral(args),
        cd=cd,
        crf=args.crf,
        skip_invalid=args.skip_invalid,
        download=args.download,
        trust_checkpoint=args.trust_checkpoint,
    )
    run = segment(args.paths, options)
    print(f"segmented {run.describe()}: {args.out_dir}/labels/, segments/, foreground/; open {run.gallery}")
    if args.save_clustering:
        print(f"clustering saved to {args.save_clustering} (reuse: --clustering {args.save_clustering})")


def cmd_demo(args: argparse.Namespace) -> None:
    from .demo import run_demo

    run_demo(**op.given(args, "out", "device"), **_seeds(args), progress=sys.stderr.isatty())


def _commands() -> list[Command]:
    """(words, help, options, function) of every command, from the option groups and the method catalog."""
    from .catalog import METHODS, training, training_methods

    source = [*op.SOURCE, *op.REPORT]
    commands: list[Command] = [
        (("backbones",), "list backbones: feature dim, stride, weight source", [], cmd_backbones),
        (("configs",), "list the shipped configs (names for --config) with a summary of each", [], cmd_configs),
        (
            ("datasets",),
            "list datasets and splits",
            [op.Opt("--layout", "also print each expected folder layout", switch=True)],
            cmd_datasets,
        ),
        (("methods",), "list the methods: what each does, whether it segments and trains", [], cmd_methods),
        (("docs",), "print a documentation page shipped with unseg (no TOPIC: list them)", op.DOCS, cmd_docs),
        (
            ("extract",),
            "extract dense features into the cache (resumable; one shard set per rank)",
            [*op.SOURCE, *op.EXTRACT],
            cmd_extract,
        ),
        (
            ("eval", "cluster"),
            "k-means on frozen features: K = #classes (Hungarian) and overclustering",
            [
                *source,
                *op.CLUSTER,
                *op.scoring("protocols:clustering_protocol"),
                *op.upsample_group("the mask size", "none (token labels, nearest-upsampled)"),
            ],
            cmd_cluster,
        ),
        *[
            (
                ("eval", head),
                f"train a {head} head on a frozen backbone and score it",
                [*source, *op.HEAD],
                lambda a, h=head: cmd_head(argparse.Namespace(**vars(a), head=h)),
            )
            for head in ("linear", "fcn")
        ],
        (("eval", "stego"), "score a STEGO checkpoint's cluster and linear probes", op.EVAL_STEGO, cmd_eval_stego),
        (
            ("eval", "unsupervised"),
            "fully unsupervised: k-means, + CBFE, + community detection",
            [*source, *op.UNSUPERVISED],
            cmd_unsupervised,
        ),
        (
            ("eval", "segments"),
            "segment a labelled split as `unseg segment` would; score each image's segments on "
            "its own (per-image protocol) and the groups dataset-level (`unseg docs photos`)",
            [*op.SOURCE, op.METHOD(), *op.SPECTRAL, *op.SEGMENTS],
            cmd_segments,
        ),
        (
            ("eval", "retrieval"),
            "dense nearest-neighbour retrieval (Hummingbird protocol)",
            [*source, *op.RETRIEVAL],
            cmd_retrieval,
        ),
        (("stego", "knn"), "precompute the kNN table of the training split (cached)", op.STEGO, cmd_stego_knn),
        (
            ("stego", "sweep"),
            "STEGO vs raw / PCA / random projections over code dims (`unseg docs methods`)",
            [*op.STEGO, *op.SWEEP],
            cmd_stego_sweep,
        ),
        (
            ("segment",),
            "segment your own images, no labels: label, segment and foreground PNGs, index.html (`unseg docs photos`)",
            [
                *op.SEGMENT,
                op.METHOD(),
                *op.SPECTRAL,
                *op.VIEWS,
                *op.CD,
                *op.upsample_group("the input size", "guided (kmeans, cd, stego)"),
            ],
            cmd_segment,
        ),
        (("demo",), "the whole path on the shipped CamVid sample, offline", op.DEMO, cmd_demo),
    ]
    for name in training_methods():
        commands.append(
            (
                ("train", name),
                METHODS.get(name).summary,
                op.train_options(name, training(name)),
                # mypy infers no lambda with a default argument (here binding the loop's name)
                lambda a, n=name: cmd_train(argparse.Namespace(**vars(a), method=n)),  # type: ignore[misc]
            )
        )
    return commands


def build_parser() -> argparse.ArgumentParser:
    """The ``unseg`` parser: every option that takes a value names its kind (:mod:`unseg.kinds`) as ``type=``."""
    parser = Parser(prog="unseg", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true")
    parser.add_argument(
        "--threads",
        type=COUNT,
        metavar="N",
        help="busy threads for torch, faiss, BLAS and parallel "
        "k-means (default: $UNSEG_THREADS, else $OMP_NUM_THREADS, else all cores; never more)",
    )
    groups: dict[tuple[str, ...], Any] = {(): parser.add_subparsers(dest="command", required=True)}
    helps = {
        "eval": "evaluation protocols (`unseg docs evaluation`)",
        "train": "train a method",
        "stego": "STEGO tools",
    }
    for words, text, options, func in _commands():
        parent = groups.get(words[:-1])
        if parent is None:  # a command group (eval, train, stego) before its first command
            parent = groups[()].add_parser(words[0], help=helps[words[0]]).add_subparsers(dest="sub", required=True)
            groups[words[:-1]] = parent
        p = parent.add_parser(words[-1], help=text)
        for option in options:
            option.add(p)
        p.set_defaults(func=func)
    return parser


_DISK_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS)


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; bad input ends it with one line ``unseg: error: ...`` and exit status 2, and the
    output folders it created are removed again if it leaves them empty."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except UsageError as exc:
        print(f"unseg: error: {exc}", file=sys.stderr)
        return 2
    created = created_folders(parser, args)
    with stderr_logging(args.verbose):
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
        remove_empty(folder)
    return 2


if __name__ == "__main__":
    sys.exit(main())
