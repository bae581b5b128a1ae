"""The dataset subcommands: ``lapo collect``, ``lapo data import-lapo``, ``lapo data info``.

Thin handlers over :func:`lapo.data.collect.collect`, :func:`lapo.data.lapo_import.import_lapo`
and :func:`lapo.data.format.validate_dataset`; each prints a JSON summary on stdout. Bad data
raises :class:`lapo.data.format.DatasetError` (a ``CheckpointError``), which the CLI prints
as one line with exit status 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any


def _invocation(args: argparse.Namespace, command: str) -> dict[str, Any]:
    """What the manifest records as ``created_by``: the command and its parsed options."""
    opts = {k: v for k, v in vars(args).items() if k not in ("func", "command", "data_command")}
    return {"command": f"lapo {command}", "args": opts}


def _cmd_collect(args: argparse.Namespace) -> None:
    from lapo.data.collect import collect

    summary = collect(
        args.env,
        args.policy,
        args.frames,
        args.out,
        test_frames=args.test_frames,
        num_envs=args.num_envs,
        seed=args.seed,
        chunk_frames=args.chunk_frames,
        resume=args.resume,
        progress=not args.quiet,
        created_by=_invocation(args, "collect"),
    )
    if summary["already_complete"]:
        print(
            f"lapo: {args.out} is already complete ({summary['frames']['train']} train + "
            f"{summary['frames']['test']} test frames); nothing to do",
            file=sys.stderr,
        )
    print(json.dumps(summary, indent=2))


def _cmd_import_lapo(args: argparse.Namespace) -> None:
    from lapo.data.lapo_import import import_lapo

    summary = import_lapo(
        args.src,
        args.dst,
        game=args.game,
        chunk_frames=args.chunk_frames,
        progress=not args.quiet,
        created_by=_invocation(args, "data import-lapo"),
    )
    print(json.dumps(summary, indent=2))


def dataset_summary(path: str) -> dict[str, Any]:
    """Validate the dataset at ``path`` (every chunk) and summarise its manifest."""
    from lapo.data.format import SPLITS, disk_bytes, validate_dataset

    info = validate_dataset(path, deep=True)
    m = info.manifest
    total = sum(info.frames(s) for s in SPLITS)
    nbytes = disk_bytes(path)
    return {
        "path": str(path),
        "valid": True,
        "format_version": m["format_version"],
        "game": m["game"],
        "policy": m.get("policy"),
        "has_actions": m["has_actions"],
        "env": m.get("env"),
        "splits": {
            s: {
                k: m["splits"][s].get(k)
                for k in ("frames", "chunks", "episodes_completed", "mean_return")
            }
            for s in SPLITS
        },
        "policy_mean_return": m.get("policy_mean_return"),
        "bytes_on_disk": nbytes,
        "bytes_per_frame": nbytes / total if total else None,
        "uncommitted_chunks": info.uncommitted,
        "created_by": m.get("created_by"),
    }


def _cmd_info(args: argparse.Namespace) -> None:
    print(json.dumps(dataset_summary(args.dir), indent=2))


def add_data_commands(sub: Any) -> None:
    """Add ``collect`` and ``data {import-lapo,info}`` to the CLI's subparsers ``sub``."""
    from lapo.envs import GAMES

    p = sub.add_parser("collect", help="record a policy playing a Procgen game into a dataset")
    p.add_argument("--env", required=True, metavar="GAME", help=f"one of: {', '.join(GAMES)}")
    p.add_argument(
        "--policy",
        required=True,
        metavar="DIR|random",
        help="demonstrator folder, 'demonstrator' (shipped) or 'random'",
    )
    p.add_argument("--frames", required=True, type=int, metavar="N", help="train frames to record")
    p.add_argument("--out", required=True, metavar="DIR", help="dataset folder (new, or --resume)")
    p.add_argument(
        "--test-frames", type=int, default=None, metavar="M", help="test frames (default N/10)"
    )
    p.add_argument("--num-envs", type=int, default=16, help="environments stepped together")
    p.add_argument("--seed", type=int, default=0, help="seed of environments and policy")
    p.add_argument(
        "--chunk-frames", type=int, default=4096, help="frames per chunk (one env's stretch)"
    )
    p.add_argument("--resume", action="store_true", help="continue the dataset in --out")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_collect)

    data = sub.add_parser("data", help="dataset tools").add_subparsers(
        dest="data_command", required=True, metavar="SUBCOMMAND"
    )
    p = data.add_parser("import-lapo", help="convert the reference LAPO .npz data to a dataset")
    p.add_argument("src", metavar="SRC", help="SRC/GAME/{train,test}/N.npz or GAME/{train,test}")
    p.add_argument("dst", metavar="DST", help="new dataset folder")
    p.add_argument("--game", default=None, help="which game, when SRC holds several")
    p.add_argument("--chunk-frames", type=int, default=4096, help="frames per chunk at most")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_import_lapo)

    p = data.add_parser("info", help="validate a dataset and print its summary as JSON")
    p.add_argument("dir", metavar="DIR", help="dataset folder")
    p.set_defaults(func=_cmd_info)
