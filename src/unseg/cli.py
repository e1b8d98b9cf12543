"""`unseg` command line: a thin layer over the Python API (every command is one API call). Its commands and
options are declared once in :mod:`unseg.options`; a value the user does not give is not passed, so the API's
default applies."""

from __future__ import annotations

import argparse
import errno
import importlib
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from . import options as op
from .console import stderr_logging
from .errors import UnsegError
from .io import output_error
from .kinds import COUNT, Parser, UsageError, created_folders, remove_empty


def _views(args: argparse.Namespace) -> dict[str, Any]:
    views = op.values(args, op.VIEWS)
    return {**views, "scales": tuple(views["scales"])} if "scales" in views else views


def _model(args: argparse.Namespace) -> dict[str, Any]:
    """The backbone settings given (fields of :class:`unseg.features.BackboneSettings`)."""
    return {**op.values(args, op.MODEL, skip=("window", "window_overlap", "scales")), **_views(args)}


def _source(args: argparse.Namespace) -> Any:
    from .features import Source

    chosen = op.values(args, op.DATA, skip=("masks", "num_classes", "json"))
    dataset_options = op.given(args, "masks", "num_classes")
    return Source(**_model(args), **chosen, dataset_options=dataset_options, progress=sys.stderr.isatty())


def _seeds(args: argparse.Namespace, key: str = "seeds") -> dict[str, Any]:
    return {} if args.seeds is None else {key: range(args.seeds)}


def _upsampling(args: argparse.Namespace, default: str | None = None) -> Any:
    """The upsampler asked for with --upsample (its options with it), or the command's ``default`` method."""
    from .features.upsample import Upsampling

    method = args.upsample or default
    if method is None:
        return None
    chosen = op.given(args, size="upsample_size", factor="upsample_factor", radius="guide_radius", eps="guide_eps")
    return Upsampling(method, **chosen)


def _spectral(args: argparse.Namespace) -> dict[str, Any]:
    from .unsupervised.spectral import SpectralSettings

    chosen = op.values(args, op.SPECTRAL, skip=("groups",))
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


def cmd_table(args: argparse.Namespace) -> None:
    """The listing commands: the API function ``args.table`` (``module:function``) prints its table."""
    module, function = args.table.split(":")
    print(getattr(importlib.import_module(f"unseg.{module}"), function)(**op.given(args, "layout")))


def cmd_docs(args: argparse.Namespace) -> None:
    from .pages import page, topics_table

    print(topics_table() if args.topic is None else page(args.topic), end="" if args.topic else "\n")


def cmd_extract(args: argparse.Namespace) -> None:
    from .features import extract_features
    from .features.extract import distributed_rank

    rank, world_size = distributed_rank(args.rank, args.world_size)
    source = _source(args)
    for split in args.split:
        dataset = source.build_dataset(split)
        options = {**source.extract_options(), **op.values(args, op.EXTRACT, skip=("split", "rank", "world_size"))}
        cache = extract_features(
            source.build_backbone(), dataset, source.size, rank=rank, world_size=world_size, **options
        )
        if cache is None:
            print(f"{split}: this rank's shards are written; other ranks are still running")
            continue
        skipped = f" ({len(cache.skipped)} skipped: {', '.join(cache.skipped[:5])})" if cache.skipped else ""
        print(
            f"{split}: {len(cache)} images, features {cache.dim}x{cache.grid[0]}x{cache.grid[1]} in {cache.root}"
            f"{skipped}"
        )


def cmd_cluster(args: argparse.Namespace) -> None:
    from .protocols import clustering_protocol

    options = op.values(args, [*op.CLUSTER, *op.scoring("protocols:clustering_protocol")], skip=("seeds",))
    if args.pca_dim is not None:
        options["pca_dim"] = args.pca_dim or None  # 0: no PCA
    _finish(args, clustering_protocol(_source(args), **options, **_seeds(args), upsample=_upsampling(args)))


def cmd_head(args: argparse.Namespace) -> None:
    from .protocols import head_protocol

    options = op.values(args, op.HEAD, skip=("no_augment", "head_batch_size"))
    options.update(op.given(args, batch_size="head_batch_size"))
    _finish(args, head_protocol(_source(args), head=args.head, augment=not args.no_augment, **options))


def cmd_unsupervised(args: argparse.Namespace) -> None:
    from .protocols import fully_unsupervised

    chosen = op.given(args, "markov_time", "weight_threshold", k="cd_k")
    skip = ("cd_k", "markov_time", "weight_threshold", "published", "seeds")
    options = {**op.values(args, op.UNSUPERVISED, skip=skip), **_seeds(args, "kmeans_seeds")}
    if args.published:
        options["hyper_parameters"] = "published"
    elif chosen:
        options["hyper_parameters"] = chosen
    _finish(args, fully_unsupervised(_source(args), **options))


def cmd_segments(args: argparse.Namespace) -> None:
    from .protocols import segments_protocol
    from .segment import SegmentOptions

    options = SegmentOptions(**op.given(args, "k"), **_spectral(args))
    chosen = op.given(args, "method", "split", "mask_size")
    _finish(args, segments_protocol(_source(args), options=options, **chosen, **_seeds(args)))


def cmd_retrieval(args: argparse.Namespace) -> None:
    from .protocols import retrieval_protocol

    options = op.values(args, op.RETRIEVAL)
    _finish(args, retrieval_protocol(_source(args), keep_predictions=args.report is not None, **options))


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
    evaluate = not getattr(args, "no_eval", False)
    cache_dir = getattr(args, "cache_dir", None)
    told = training(args.method).run(cfg, args.out, cache_dir, args.resume, args.overwrite, evaluate=evaluate)
    if told:
        print(told)


def cmd_eval_stego(args: argparse.Namespace) -> None:
    from .protocols import stego_protocol

    options = op.given(args, "processes", "matching", "absent")
    _finish(
        args,
        stego_protocol(
            _config(args, "stego"),
            args.checkpoint,
            args.cache_dir,
            views=_views(args),
            crf=args.crf,
            upsample=_upsampling(args),
            keep_predictions=args.report is not None,
            trust_checkpoint=args.trust_checkpoint,
            **options,
        ),
    )


def cmd_stego_knn(args: argparse.Namespace) -> None:
    from .methods.stego.knn import knn_indices, knn_path
    from .methods.stego.pipeline import split_data

    cfg = _config(args, "stego")
    data = split_data(cfg, cfg.train_split, args.cache_dir)
    knn = knn_indices(data.cache, cfg.knn_k)
    print(f"kNN table {knn.shape} of {cfg.dataset}/{cfg.train_split} in {knn_path(data.cache, cfg.knn_k)}")


def cmd_stego_sweep(args: argparse.Namespace) -> None:
    from .methods.stego.pipeline import SWEEP_OUT, dimension_sweep

    options = op.values(args, op.SWEEP, skip=("crf",))
    dimension_sweep(_config(args, "stego"), cache_dir=args.cache_dir, crf=args.crf, **options)
    out = Path(options.get("out_dir", SWEEP_OUT))
    print(f"table: {out / 'results.csv'}  plot: {out / 'miou_vs_dim.png'}")


def cmd_segment(args: argparse.Namespace) -> None:
    from .features import BackboneSettings
    from .segment import SegmentOptions, segment
    from .unsupervised.fitted import CDSettings

    cd = CDSettings(**op.given(args, "markov_time", "weight_threshold", "fg_threshold", "fg_k", k="cd_k"))
    chosen = op.values(args, [*op.SEGMENT, op.METHOD()], skip=("paths",))
    upsample = _upsampling(args, SegmentOptions().upsample.method)
    model = BackboneSettings(**_model(args))
    run = segment(args.paths, SegmentOptions(model=model, **chosen, **_spectral(args), cd=cd, upsample=upsample))
    print(f"segmented {run.describe()}: {args.out_dir}/labels/, segments/, foreground/; open {run.gallery}")
    if args.save_clustering:
        print(f"clustering saved to {args.save_clustering} (reuse: --clustering {args.save_clustering})")


def cmd_demo(args: argparse.Namespace) -> None:
    from .demo import run_demo

    run_demo(**op.given(args, "out", "device"), **_seeds(args), progress=sys.stderr.isatty())


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
    for command in op.commands():
        words = command.words
        if words[:-1] not in groups:  # a command group (eval, train, stego) before its first command
            group = groups[()].add_parser(words[0], help=op.GROUPS[words[0]])
            groups[words[:-1]] = group.add_subparsers(dest="sub", required=True)
        p = groups[words[:-1]].add_parser(words[-1], help=command.help)
        for option in command.options:
            option.add(p)
        p.set_defaults(func=globals()[command.run], **command.defaults)
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
