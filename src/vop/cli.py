"""`vop <stage> ...`: every stage of the workflow from the command line, one flag style.

Each subcommand calls the same stage function as the workflow's rule. Its settings are the fields of the
stage's conf (vop.conf), as `--kebab-case` flags with the conf's defaults, so `--max-keypoints` is the
config key `local_features.max_keypoints`; booleans come as `--flag` / `--no-flag`, lists as several
values. Files are flags too (`--gt`, `--out`, ...). Heavy modules are imported by the subcommand that
runs, so `vop --help` answers at once.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import types
import typing
from collections.abc import Callable, Sequence
from pathlib import Path

from vop import conf as confs
from vop.conf import Conf, default_of, fields_of


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _options(hint) -> list:
    """The types a conf field may take: the members of a union (None dropped), or the hint itself."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return [a for a in typing.get_args(hint) if a is not type(None)]
    return [hint]


def _scalar_type(hint):
    """The argparse type of a conf field: int, float, str; a union with a literal ("auto") stays text."""
    args = _options(hint)
    if any(typing.get_origin(a) is typing.Literal for a in args) and any(a in (int, float) for a in args):
        number = float if float in args else int
        return lambda text: text if text == "auto" else number(text)
    for candidate in (bool, int, float, str):
        if candidate in args:
            return candidate
    literal = next((a for a in args if typing.get_origin(a) is typing.Literal), None)
    return str if literal is not None else None


def add_conf_flags(parser: argparse.ArgumentParser, conf: type[Conf], skip: Sequence[str] = ()) -> None:
    """One flag per field of `conf` (except `skip` and nested confs), default and choices from the conf."""
    hints = typing.get_type_hints(conf)
    for name, f in fields_of(conf).items():
        if name in skip:
            continue
        hint = hints[name]
        args = _options(hint)
        if any(isinstance(a, type) and issubclass(a, Conf) for a in args):
            continue
        default = default_of(f)
        required = default is None and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        help_text = "(required)" if required else f"(default: {default})"
        is_list = any(typing.get_origin(a) is tuple for a in args)
        if bool in args:
            parser.add_argument(_flag(name), action=argparse.BooleanOptionalAction, default=default, help=help_text)
            continue
        kwargs: dict = {"default": default, "required": required, "help": help_text}
        literal = next((a for a in args if typing.get_origin(a) is typing.Literal), None)
        if literal is not None and not any(a in (int, float) for a in args):
            kwargs["choices"] = list(typing.get_args(literal))
        if is_list:
            inner = next(a for a in args if typing.get_origin(a) is tuple)
            kwargs.update(nargs="+", type=_scalar_type(typing.get_args(inner)[0]))
        else:
            kwargs["type"] = _scalar_type(hint)
        parser.add_argument(_flag(name), **kwargs)


def conf_from_args(conf: type[Conf], args: argparse.Namespace, **fixed) -> Conf:
    values = {name: getattr(args, name) for name in fields_of(conf) if hasattr(args, name)}
    values = {k: (list(v) if isinstance(v, tuple) else v) for k, v in values.items() if v is not None}
    return conf.from_dict({**values, **fixed})


def _image_flags(p):
    p.add_argument("--image-dir", type=Path, required=True, help="the folder image names are relative to")
    p.add_argument("--names-from", type=Path, required=True, help="gt.h5 (root `names`) or a text file of names")


def _names(args) -> list[str]:
    from vop.features import read_names_file

    return read_names_file(args.names_from)


# ---------------------------------------------------------------------------------------------------
# Subcommands: (parser set-up, run)


def _generate(p):
    p.add_argument("out", type=Path, help="scene folder to create (ETH3D layout, or --layout's)")
    p.add_argument("--layout", choices=["eth3d", "vpr", "revisitop", "image_list"], default="eth3d",
                   help="eth3d: a room (synthetic); vpr: a street, revisitop: landmarks, image_list: a list with "
                        "GL3D pairs (the synthetic_* sources)")
    add_conf_flags(p, confs.SyntheticConf)

    def run(args):
        from vop.datasets import synthetic, synthetic_protocols

        conf = conf_from_args(confs.SyntheticConf, args)
        textures = synthetic.TRAIN_TEXTURES if conf.textures == "train" else synthetic.EVAL_TEXTURES
        if args.layout == "eth3d":
            synthetic.generate_scene(args.out, conf.seed, conf.num_images, conf.width, conf.height, textures,
                                     overwrite=True)
        else:
            generate = {"vpr": synthetic_protocols.generate_vpr, "revisitop": synthetic_protocols.generate_revisitop,
                        "image_list": synthetic_protocols.generate_image_list}[args.layout]
            generate(args.out, conf.seed, conf)
    return run


def _download(p):
    p.add_argument("url")
    p.add_argument("dest", type=Path)
    p.add_argument("--config-key", help="the config key that skips the download, named in errors")

    def run(args):
        from vop.download import download

        download(args.url, args.dest, config_key=args.config_key)
    return run


def _verify(p):
    p.add_argument("archive", type=Path)

    def run(args):
        from vop.download import verify_archive

        verify_archive(args.archive)
        print(f"{args.archive}: ok")
    return run


def _extract(p):
    p.add_argument("archive", type=Path)
    p.add_argument("target", type=Path)
    p.add_argument("--member-prefix", default="", help="extract only the members under this folder")

    def run(args):
        from vop.download import extract

        extract(args.archive, args.target, member_prefix=args.member_prefix, overwrite=True)
    return run


def _scene_flags(p):
    p.add_argument("--source", required=True, help="dataset source (vop.datasets.SOURCES, or module:Class)")
    p.add_argument("--root", type=Path, required=True, help="the dataset folder")
    p.add_argument("--scene", help="the scene (none: the root is the scene, for colmap and folder)")
    p.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                   help="a key of the source's own, e.g. images=images or model=sparse/0")


def _open_scene(args):
    from vop.datasets import open_scene

    options = dict(o.split("=", 1) for o in args.option)
    return open_scene(args.source, args.root, args.scene, **options)


def _ground_truth(p):
    _scene_flags(p)
    p.add_argument("--out", type=Path, required=True, help="gt.h5 to write")
    p.add_argument("--local-features", type=Path,
                   help="the scene's local_features.h5: posed images without 3D points triangulate their tracks")
    p.add_argument("--threads", type=int, default=-1, help="triangulation threads (default: all cores)")
    add_conf_flags(p, confs.TriangulationConf)
    add_conf_flags(p, confs.NsoConf)  # --geometry, --stride, --depth-tol: the ground-truth NSO (vop.nso)

    def run(args):
        from vop.ground_truth import write_scene_ground_truth

        gt = write_scene_ground_truth(_open_scene(args), args.out, args.local_features,
                                      conf_from_args(confs.TriangulationConf, args), num_threads=args.threads,
                                      nso=conf_from_args(confs.NsoConf, args))
        print(f"{args.out}: {len(gt.names)} images, overlap: {gt.overlap_source or 'none'}, "
              f"nso: {gt.nso_source or 'none'}")
    return run


def _features(p):
    _image_flags(p)
    p.add_argument("--backbone", required=True, help="dense_sift or dinov2_vit{s,b,l,g}14")
    p.add_argument("--out", type=Path, required=True, help="features-{backbone}.h5 to write")
    p.add_argument("--with-flipped", action="store_true", help="also the tokens of the mirrored images")
    p.add_argument("--workers", type=int, default=2, help="threads reading images")
    p.add_argument("--device", help="cuda, cpu, ... (default: cuda when available)")
    add_conf_flags(p, confs.BackboneConf)

    def run(args):
        import h5py

        from vop.backbones import load_backbone
        from vop.features import dump_features
        from vop.io import read_views

        conf = conf_from_args(confs.BackboneConf, args)
        backbone = load_backbone(args.backbone, conf.weights, args.device)
        views = read_views(args.names_from) if h5py.is_hdf5(args.names_from) else None  # crops (revisitop)
        dump_features(args.image_dir, _names(args), backbone, args.out, batch_size=conf.batch_size,
                      num_workers=args.workers, with_flipped=args.with_flipped, views=views)
    return run


def _labels(p):
    _scene_flags(p)
    p.add_argument("--gt", type=Path, required=True, help="the scene's gt.h5")
    p.add_argument("--out", type=Path, required=True, help="labels.h5 to write")
    add_conf_flags(p, confs.LabelsConf)

    def run(args):
        from vop.labels import scene_labels

        scene_labels(_open_scene(args), args.gt, args.out, conf_from_args(confs.LabelsConf, args))
    return run


def _train(p):
    p.add_argument("--scene", nargs=2, action="append", required=True, metavar=("FEATURES_H5", "LABELS_H5"),
                   help="a training scene; repeat for more")
    p.add_argument("--backbone", required=True, help="the backbone of the features (stored in the checkpoint)")
    p.add_argument("--out", type=Path, required=True, help="checkpoint to write")
    p.add_argument("--history", type=Path, help="csv of the losses per epoch")
    p.add_argument("--plot", type=Path, help="png of the losses per epoch")
    p.add_argument("--device", help="cuda, cpu, ... (default: cuda when available)")
    add_conf_flags(p, confs.TrainConf, skip=("datasets",))

    def run(args):
        from vop.training import train_encoder

        train_encoder([tuple(s) for s in args.scene], args.out, args.backbone, conf_from_args(confs.TrainConf, args),
                      device=args.device, log_csv=args.history, plot_png=args.plot)
    return run


def _embeddings(p):
    p.add_argument("--features", type=Path, required=True, help="features-{backbone}.h5")
    p.add_argument("--out", type=Path, required=True, help="embeddings-{encoder}.h5 to write")
    p.add_argument("--device", help="cuda, cpu, ... (default: cuda when available)")
    add_conf_flags(p, confs.EncoderConf)

    def run(args):
        from vop.encoder import apply_encoder

        apply_encoder(args.features, args.out, conf_from_args(confs.EncoderConf, args), device=args.device)
    return run


def _retrieve(p):
    methods = p.add_subparsers(dest="type", required=True, metavar="TYPE")
    for kind, conf in confs.METHOD_CONFS.items():
        m = methods.add_parser(kind, help=(conf.__doc__ or "").splitlines()[0])
        m.add_argument("--gt", type=Path, required=True, help="the scene's gt.h5 (image order, overlap)")
        if conf.needs in ("features", "embeddings"):
            m.add_argument(f"--{conf.needs}", type=Path, required=True, help=f"the scene's {conf.needs} h5")
        if conf.needs == "matches":
            m.add_argument("--first-stage-scores", type=Path, required=True,
                           help="scores.csv of the first stage (e.g. `vop retrieve cls --k 100`)")
            m.add_argument("--matches", type=Path, required=True, help="the scene's matches store (`vop match`)")
            m.add_argument("--local-features", type=Path, required=True, help="local_features.h5")
            m.add_argument("--workers", type=int, default=2, help="processes verifying pairs")
            add_conf_flags(m, confs.MatchingConf)
        m.add_argument("--out-dir", type=Path, required=True, help="folder of pairs.txt, scores.csv, retrieval.json")
        m.add_argument("--scene", default="", help="the scene's name (in messages and the random seed)")
        m.add_argument("--mode", choices=["register", "retrieve"], default="register")
        m.add_argument("--queries", help="retrieve mode: glob over image names selecting the queries")
        m.add_argument("--device", help="cuda, cpu, ... (default: cuda when available)")
        m.add_argument("--depth", type=lambda t: t if t == "all" else int(t),
                       help="a dataset's depth replacing --k: a number or `all` (deep lists continue a vop "
                            "prefilter in its order)")
        add_conf_flags(m, conf, skip=("type",))

    def run(args):
        from vop.retrieval import run_method

        conf = conf_from_args(confs.METHOD_CONFS[args.type], args)
        verify = {}
        if conf.needs == "matches":
            verify = {"first_stage_scores": args.first_stage_scores, "matches_h5": args.matches,
                      "local_features_h5": args.local_features, "num_workers": args.workers,
                      "matching": conf_from_args(confs.MatchingConf, args)}
        run_method(conf, args.scene, args.gt, args.out_dir, getattr(args, "features", None),
                   getattr(args, "embeddings", None), args.mode, args.queries, args.device, k=args.depth, **verify)
    return run


def _local_features(p):
    _image_flags(p)
    p.add_argument("--out", type=Path, required=True, help="local_features.h5 to write")
    p.add_argument("--workers", type=int, default=2)
    add_conf_flags(p, confs.LocalFeaturesConf)

    def run(args):
        from vop.local_features import extract_local_features

        extract_local_features(args.image_dir, _names(args), args.out, conf_from_args(confs.LocalFeaturesConf, args),
                               num_workers=args.workers)
    return run


def _match(p):
    p.add_argument("--pairs", type=Path, nargs="+", required=True, help="pairs files (hloc format) to match")
    p.add_argument("--local-features", type=Path, required=True, help="local_features.h5")
    p.add_argument("--out", type=Path, required=True,
                   help="the matches store (matches.h5) to create or update: valid pairs in it are kept")
    p.add_argument("--shared", type=Path, nargs="*", default=[], help="other stores to copy valid pairs from")
    p.add_argument("--device", help="cuda, cpu, ... (default: cuda when available)")
    add_conf_flags(p, confs.MatchingConf)

    def run(args):
        from vop.match_store import build_store

        counts = build_store(args.out, args.pairs, args.local_features, conf_from_args(confs.MatchingConf, args),
                             args.device, args.shared)
        print(f"{args.out}: {counts['needed']} unordered pairs, {counts['reused']} reused, {counts['shared']} from "
              f"the other stores, {counts['matched']} matched")
    return run


def _pose(p):
    p.add_argument("--pairs", type=Path, required=True, help="pairs.txt (hloc format)")
    p.add_argument("--gt", type=Path, required=True, help="the scene's gt.h5")
    p.add_argument("--local-features", type=Path, required=True, help="local_features.h5")
    p.add_argument("--matches", type=Path, help="the scene's matches store (`vop match`); default: match here")
    p.add_argument("--out", type=Path, required=True, help="pose.csv to write")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--device", help="where to match without a store: cuda, cpu, ... (default: cuda when available)")
    add_conf_flags(p, confs.PoseConf)
    add_conf_flags(p, confs.MatchingConf)

    def run(args):
        from vop.io import read_pairs
        from vop.pose import estimate_poses

        estimate_poses(read_pairs(args.pairs), args.gt, args.local_features, args.out,
                       conf_from_args(confs.PoseConf, args), num_workers=args.workers, matches_h5=args.matches,
                       matching=conf_from_args(confs.MatchingConf, args), device=args.device)
    return run


def _reconstruct(p):
    p.add_argument("--pairs", type=Path, required=True, help="the method's pairs.txt (hloc format)")
    p.add_argument("--gt", type=Path, required=True, help="the scene's gt.h5 (images, cameras, poses)")
    p.add_argument("--local-features", type=Path, required=True, help="local_features.h5")
    p.add_argument("--matches", type=Path, required=True, help="the matches store holding the pairs (`vop match`)")
    p.add_argument("--out-dir", type=Path, required=True, help="folder of database.db, models/, metrics.json")
    p.add_argument("--no-poses", action="store_true", help="gt.h5 has no real poses: no camera errors, guessed K")
    p.add_argument("--threads", type=int, default=1, help="COLMAP's threads")
    add_conf_flags(p, confs.SfmConf, skip=("baselines", "sweep"))
    add_conf_flags(p, confs.MatchingConf)

    def run(args):
        from vop.io import read_pairs
        from vop.sfm import reconstruct_method

        m = reconstruct_method(conf_from_args(confs.SfmConf, args), read_pairs(args.pairs), args.gt,
                               args.local_features, args.matches, args.out_dir,
                               conf_from_args(confs.MatchingConf, args),
                               posed=not args.no_poses, num_threads=args.threads)
        print(f"{args.out_dir}: {m['registered']}/{m['num_images']} images registered in the largest of "
              f"{m['num_models']} models, {m['points3D']} points, {m['pairs_per_image']:.1f} pairs per image")
    return run


def _export_colmap(p):
    p.add_argument("--pairs", type=Path, required=True, help="pairs to write the matches of (hloc format)")
    p.add_argument("--local-features", type=Path, required=True, help="local_features.h5")
    p.add_argument("--matches", type=Path, help="a matches store holding the pairs; default: match them here")
    p.add_argument("--gt", type=Path, help="gt.h5: image order and intrinsics (default: COLMAP's guess)")
    p.add_argument("--out", type=Path, required=True, help="database.db to write (replaced)")
    p.add_argument("--verify", action=argparse.BooleanOptionalAction, default=True,
                   help="run COLMAP's two-view verification too, so that `colmap mapper` maps it directly")
    p.add_argument("--threads", type=int, default=-1, help="verification threads (-1: all)")
    add_conf_flags(p, confs.MatchingConf)

    def run(args):
        from vop.io import read_pairs
        from vop.sfm import export_colmap

        c = export_colmap(args.out, read_pairs(args.pairs), args.local_features, args.matches, args.gt,
                          conf_from_args(confs.MatchingConf, args), verify=args.verify, num_threads=args.threads)
        print(f"{args.out}: {c['images']} images, {c['matched_pairs']} pairs ({c['matches']} matches), "
              f"{c['verified_pairs']} verified, in {c['seconds']:.1f}s; next: colmap mapper --database_path "
              f"{args.out} --image_path <images> --output_path <sparse>")
    return run


def _read_entries(path: Path) -> list[dict]:
    try:
        entries = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise SystemExit(f"{path}: not valid JSON ({err}); expected a list of entries") from err
    if not isinstance(entries, list):
        raise SystemExit(f"{path}: expected a JSON list of entries, got {type(entries).__name__}")
    return entries


def _table(p):
    p.add_argument("--entries", type=Path, required=True,
                   help="JSON list of {method, scene, pose_csv, pairs_txt, gt_h5, k[, mode, queries]}")
    p.add_argument("--out", type=Path, required=True, help="auc.csv to write")
    add_conf_flags(p, confs.MetricsConf)

    def run(args):
        from vop.metrics import summarize

        conf = conf_from_args(confs.MetricsConf, args)
        print(summarize(_read_entries(args.entries), args.out, tau=conf.overlap_tau).to_string(index=False))
    return run


def _plots(p):
    p.add_argument("--entries", type=Path, required=True,
                   help="JSON list of {method, scene, pose_csv, pairs_txt, gt_h5, k, image_dir}")
    p.add_argument("--out-dir", type=Path, required=True)
    p.add_argument("--auc", type=Path, help="also write summary.html with this table and the figures")
    add_conf_flags(p, confs.MetricsConf)

    def run(args):
        from vop.plots import make_plots

        out, conf = args.out_dir, conf_from_args(confs.MetricsConf, args)
        make_plots(_read_entries(args.entries), out / "pose_errors.png", out / "recall.png", out / "retrievals.png",
                   tau=conf.overlap_tau, auc_csv=args.auc, summary_html=out / "summary.html" if args.auc else None)
    return run


def _overlap(p):
    p.add_argument("--type", choices=["vop", "cls"], required=True,
                   help="vop: the NSO its retrieval wrote into scores.csv; cls: the baseline from --features")
    p.add_argument("--scores", type=Path, required=True, help="scores.csv of one run")
    p.add_argument("--gt", type=Path, required=True, help="the scene's gt.h5 (its nso: the truth)")
    p.add_argument("--features", type=Path, help="the scene's features-{backbone}.h5: cls's NSO, and for vop the "
                   "baseline's on the same pairs")
    p.add_argument("--out", type=Path, required=True, help="overlap.csv to write")
    add_conf_flags(p, confs.NsoChanceConf)

    def run(args):
        from vop.nso import write_overlap

        info = write_overlap(args.type, args.scores, args.gt, args.out, args.features,
                             chance=conf_from_args(confs.NsoChanceConf, args).nso_chance)
        print(f"{args.out}: {info}")
    return run


def _nso_table(p):
    p.add_argument("--run", dest="runs", nargs=3, action="append", required=True,
                   metavar=("METHOD", "SCENE", "OVERLAP_CSV"), help="one run's overlap.csv (repeat)")
    p.add_argument("--out", type=Path, required=True, help="nso.csv to write")

    def run(args):
        from vop.nso import nso_table

        rows = nso_table([{"method": m, "scene": s, "overlap_csv": c} for m, s, c in args.runs], args.out)
        print(f"{args.out}: {len(rows)} rows")
    return run


def _match_pairs(p):
    p.add_argument("--pairs", type=Path, required=True, help="pairs.txt of one run")
    p.add_argument("--scores", type=Path, required=True, help="its scores.csv")
    p.add_argument("--gt", type=Path, required=True, help="the scene's gt.h5 (the image list's order)")
    p.add_argument("--out", type=Path, required=True, help="match_pairs.txt to write")

    def run(args):
        from vop.protocols.tables import write_match_pairs

        write_match_pairs(args.pairs, args.scores, args.gt, args.out)
    return run


def _protocol_table(p):
    p.add_argument("protocol", choices=["vpr", "revisitop", "gl3d"])
    p.add_argument("--entries", type=Path, required=True,
                   help="JSON list of {method, scene, pairs_txt, gt_h5, reader, mode, queries[, match_pairs, k]}")
    p.add_argument("--out", type=Path, required=True, help="the table to write")
    p.add_argument("--plot", type=Path, help="also its figure (png)")

    def run(args):
        from vop.protocols.plots import plot_protocol
        from vop.protocols.tables import write_table

        entries = _read_entries(args.entries)
        print(write_table(args.protocol, entries, args.out).to_string(index=False))
        if args.plot:
            plot_protocol(args.protocol, entries, args.out, args.plot)
    return run


def _check(p):
    p.add_argument("results", type=Path, help="a dataset's results folder, e.g. results/demo")

    def run(args):
        from vop.reference import check_method_dir, method_dirs

        found = method_dirs(args.results)
        if not found:
            print(f"no vop retrieval under {args.results}", file=sys.stderr)
            return 2
        ok = True
        for method_dir in found:
            equal, message = check_method_dir(method_dir)
            ok &= equal
            print(message)
        return 0 if ok else 1
    return run


def _summary(p):
    p.add_argument("results", type=Path, nargs="+",
                   help="results folders of datasets, e.g. results/demo (and results/demo_train: its encoder's)")
    p.add_argument("--logs", type=Path, help="the run's logs folder (default: logs/ beside results/)")
    p.add_argument("--tsv", type=Path, help="also write the table here, tab-separated")

    def run(args):
        from vop.summary import run_summary, write_summary

        summary = run_summary(args.results, args.logs)
        print(summary.text())
        if args.tsv:
            write_summary(summary, args.tsv)
    return run


def _readme_tables(p):
    p.add_argument("markdown", type=Path, nargs="?", default=Path("README.md"),
                   help="a markdown file with marked tables (default: README.md)")
    what = p.add_mutually_exclusive_group()
    what.add_argument("--update", action="store_true", help="write the regenerated tables into the file")
    what.add_argument("--check", action="store_true", help="fail when the file's tables differ from their auc.csv")

    def run(args):
        from vop.readme import render, update_tables

        if args.check or args.update:
            same, _ = update_tables(args.markdown, write=args.update)
            print(f"{args.markdown}: tables {'up to date' if same else 'updated' if args.update else 'differ'}")
            return 0 if same or args.update else 1
        _, tables = render(args.markdown.read_text(encoding="utf-8"), args.markdown.parent, str(args.markdown))
        for source, table in tables:
            print(f"{source}:\n{table}")
    return run


def _install_profile(p):
    p.add_argument("name", nargs="?", default="slurm", help="a profile folder of this checkout's profiles/")
    p.add_argument("--partition", help="fills the profile's `slurm_partition` EDIT line (\"\" for the default one)")
    p.add_argument("--account", help="fills the profile's `slurm_account` EDIT line (\"\" if you have none)")
    p.add_argument("--force", action="store_true", help="replace an installed profile of that name")

    def run(args):
        from vop.profiles import install_profile

        target, todo = install_profile(args.name, args.partition, args.account, args.force)
        print(f"installed {target}: `snakemake --profile {args.name} ...` now finds it")
        for line in todo:
            print(f"  still to edit there: {line}")
        return 0
    return run


COMMANDS: dict[str, tuple[Callable, str]] = {
    "generate": (_generate, "render a synthetic scene (ETH3D layout) offline"),
    "download": (_download, "download a dataset archive (resumable, verified)"),
    "verify": (_verify, "test an archive (zip CRCs, a full tar read)"),
    "extract": (_extract, "unpack an archive safely (members escaping the target are refused)"),
    "ground-truth": (_ground_truth, "gt.h5 of a scene: intrinsics, poses, image sizes, overlap"),
    "features": (_features, "backbone CLS and patch tokens of every image"),
    "labels": (_labels, "ground-truth patch correspondences of sampled pairs, from depth or tracks"),
    "train": (_train, "train the VOP patch head on labelled scenes"),
    "embeddings": (_embeddings, "apply an encoder (identity or VOP) to a features file"),
    "retrieve": (_retrieve, "rank the database images of every query with one method"),
    "local-features": (_local_features, "SIFT keypoints and descriptors of every image"),
    "match": (_match, "match pairs once each into a scene's matches store (mutual NN + ratio test)"),
    "pose": (_pose, "relative pose of every retrieved pair, scored against the ground truth"),
    "reconstruct": (_reconstruct, "COLMAP reconstruction from a method's pairs and stored matches (pycolmap)"),
    "export-colmap": (_export_colmap, "a COLMAP database.db of chosen pairs, ready for `colmap mapper`"),
    "table": (_table, "auc.csv: pose AUC, matches, inliers, recall and mAP per method and scene"),
    "plots": (_plots, "pose-error and recall curves, the retrieval grid, summary.html"),
    "overlap": (_overlap, "overlap.csv: predicted NSO both ways and relative scale of a run's pairs, with the truth"),
    "nso-table": (_nso_table, "nso.csv: the box-embeddings protocol (RMSE, L1, Acc) per method and scene"),
    "match-pairs": (_match_pairs, "MIRorR's match_pairs.txt (i j score, self pair first) of one run"),
    "protocol-table": (_protocol_table, "vpr.csv (recall@N), revisitop.csv (mAP E/M/H) or gl3d.csv (mAP@K)"),
    "check": (_check, "recompute every vop retrieval the straightforward way and compare"),
    "summary": (_summary, "per stage of a run: jobs, wall seconds, peak memory (from the benchmark files)"),
    "readme-tables": (_readme_tables, "print (or write) a markdown file's result tables from their auc.csv"),
    "install-profile": (_install_profile, "copy profiles/<name> into Snakemake's profile folder (--profile <name>)"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vop", description=__doc__.split("\n\n")[0])
    parser.add_argument("--log", help="log file (default: the terminal)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="STAGE")
    for name, (setup, help_text) in COMMANDS.items():
        stage = sub.add_parser(name, help=help_text, description=help_text)
        stage.set_defaults(run=setup(stage))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    import logging

    from vop.utils import setup_logging

    # Logging is set up for the command and put back afterwards: a caller in the same process (a notebook,
    # the tests) keeps its own handlers, and none is left writing to a stream that is gone.
    root = logging.getLogger()
    handlers, level, hook = root.handlers[:], root.level, sys.excepthook
    setup_logging(args.log)
    try:
        status = args.run(args)
    finally:
        for handler in root.handlers:
            if handler not in handlers:
                handler.close()
        root.handlers[:], sys.excepthook = handlers, hook
        root.setLevel(level)
    return int(status or 0)
