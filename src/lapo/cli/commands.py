"""The subcommands' handlers: each builds its config (:func:`command_config`), calls the
library and prints the result (JSON on stdout unless said otherwise).

A handler checks nothing the library or the config dataclasses check: a user's mistake
raises a :class:`lapo.errors.LapoError` there, which :func:`lapo.cli.main` prints as one line.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shlex
import sys
from pathlib import Path
from typing import Any

from lapo import config
from lapo.cli.options import apply_overrides, command_config
from lapo.errors import UserError


def _print(result: Any, indent: int | None = 2) -> None:
    """``result`` as JSON on stdout, once (by rank 0 under torchrun)."""
    from lapo import distributed

    if distributed.current().main:
        print(json.dumps(result, indent=indent))


def _command() -> str:
    return "lapo " + shlex.join(sys.argv[1:])


def _invocation(args: argparse.Namespace, command: str) -> dict[str, Any]:
    """What a dataset manifest records as ``created_by``: the command and its parsed options."""
    opts = {k: v for k, v in vars(args).items() if k not in ("func", "command", "data_command")}
    return {"command": f"lapo {command}", "args": opts}


def collect(args: argparse.Namespace) -> None:
    from lapo.data.collect import collect

    opts = {k: getattr(args, k) for k in ("test_frames", "num_envs", "seed", "chunk_frames")}
    summary = collect(
        args.env,
        args.policy,
        args.frames,
        args.out,
        resume=args.resume,
        progress=not args.quiet,
        created_by=_invocation(args, "collect"),
        paint_velocity=args.paint_velocity,
        backgrounds=not args.no_background,
        **opts,
    )
    if summary["already_complete"]:
        print(
            f"lapo: {args.out} is already complete ({summary['frames']['train']} train + "
            f"{summary['frames']['test']} test frames); nothing to do",
            file=sys.stderr,
        )
    _print(summary)


def data_import_lapo(args: argparse.Namespace) -> None:
    from lapo.data.lapo_import import import_lapo

    summary = import_lapo(
        args.src,
        args.dst,
        game=args.game,
        chunk_frames=args.chunk_frames,
        progress=not args.quiet,
        created_by=_invocation(args, "data import-lapo"),
    )
    _print(summary)


def data_import_video(args: argparse.Namespace) -> None:
    from lapo.data.video import import_videos

    opts = apply_overrides(config.VideoImportConfig(), args)
    summary = import_videos(
        args.paths,
        args.out,
        opts,
        chunk_frames=args.chunk_frames,
        resume=args.resume,
        skip_bad=args.skip_bad,
        progress=not args.quiet,
        created_by=_invocation(args, "data import-video"),
    )
    for bad in summary["skipped"]:
        print(f"lapo: skipped: {bad['reason']}", file=sys.stderr)
    for note in summary["notes"]:
        print(f"lapo: note: {note}", file=sys.stderr)
    _print(summary)


def data_export_video(args: argparse.Namespace) -> None:
    from lapo.data.video_export import export_video, parse_episodes, parse_frames

    summary = export_video(
        args.dir,
        args.out,
        split=args.split,
        episodes=parse_episodes(args.episodes),
        frames=parse_frames(args.frames),
        fps=args.fps,
        overlay_actions=args.overlay_actions,
        scale=args.scale,
        crf=args.crf,
        progress=not args.quiet,
    )
    _print(summary)


def dataset_summary(path: str) -> dict[str, Any]:
    """Validate the dataset at ``path`` (every chunk) and summarise its manifest."""
    from lapo.data.format import SPLITS, disk_bytes, validate_dataset

    info = validate_dataset(path, deep=True)
    m = info.manifest
    total = sum(info.frames(s) for s in SPLITS)
    nbytes = disk_bytes(path)
    keys = ("frames", "chunks", "episodes_completed", "mean_return")
    return {
        "path": str(path),
        "valid": True,
        "format_version": m["format_version"],
        "game": m["game"],
        "policy": m.get("policy"),
        "has_actions": m["has_actions"],
        "env": m.get("env"),
        "splits": {s: {k: m["splits"][s].get(k) for k in keys} for s in SPLITS},
        "policy_mean_return": m.get("policy_mean_return"),
        "bytes_on_disk": nbytes,
        "bytes_per_frame": nbytes / total if total else None,
        "uncommitted_chunks": info.uncommitted,
        "created_by": m.get("created_by"),
    }


def data_info(args: argparse.Namespace) -> None:
    _print(dataset_summary(args.dir))


def expert_train(args: argparse.Namespace) -> None:
    from lapo.rl.expert import train_expert

    cfg = command_config(args, config.ExpertConfig, section="train")
    cfg = dataclasses.replace(cfg, game=args.env)
    summary = train_expert(cfg, Path(args.out), progress=not args.quiet, command=_command())
    _print({**summary, "command": _command()})


def expert_distill(args: argparse.Namespace) -> None:
    from lapo.rl.distill import distill_expert

    cfg = command_config(args, config.DistillConfig, section="distill")
    cfg = dataclasses.replace(cfg, game=args.env)
    summary = distill_expert(cfg, Path(args.out), progress=not args.quiet, command=_command())
    _print({**summary, "command": _command()})


def expert_package(args: argparse.Namespace) -> None:
    from lapo.rl.expert import package_demonstrator

    if args.episodes < 1:
        raise UserError(f"--episodes must be at least 1, got {args.episodes}")
    _print(package_demonstrator(args.run, args.out, args.episodes, args.seed))


def lam_train(args: argparse.Namespace) -> None:
    from lapo.stages.lam import train_lam

    cfg = command_config(args, config.LAMConfig, section="lam")
    _print(train_lam(cfg, Path(args.data), Path(args.out), not args.quiet, _command()))


def lam_probe(args: argparse.Namespace) -> None:
    from lapo.stages.lam_probe import probe_lam

    if args.threads > 0:
        import torch

        torch.set_num_threads(args.threads)
    target = {"previous": 0, "current": 1, "next": 2}[args.target]  # index in the window
    if args.protocol == "paper":
        # the reference's protocol: 65,536 labelled windows, 65,536 test windows, 3 epochs
        # (as many as the data holds, if fewer)
        labels, test, epochs = 65_536, 65_536, 3
    else:
        if args.labels < 1:
            raise UserError(f"--labels must be at least 1, got {args.labels}")
        labels, test, epochs = args.labels, args.test, None
    run, data = Path(args.run), Path(args.data)
    report = probe_lam(
        run, data, labels, test, args.seed, epochs=epochs, target=target, pair=args.pair
    )
    print(json.dumps(report))


def lam_plot(args: argparse.Namespace) -> None:
    from lapo.report.latents import plot_lam

    if args.clusters < 0:
        raise UserError(f"--clusters must be at least 0, got {args.clusters}")
    _print(plot_lam(Path(args.run), Path(args.data), Path(args.out), clusters=args.clusters))


def play(args: argparse.Namespace) -> None:
    import torch

    from lapo.play.server import serve
    from lapo.play.session import open_session

    if not 0 <= args.port <= 65535:
        raise UserError(f"--port must be in 0..65535 (0: any free port), got {args.port}")
    if args.threads < 0:
        raise UserError(f"--threads must be 0 (all cores) or more, got {args.threads}")
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    data = Path(args.data) if args.data else None
    session = open_session(Path(args.run), data, args.windows, args.clusters, args.seed)
    serve(session, args.host, args.port, open_browser=not args.no_browser)


def bc_train(args: argparse.Namespace) -> None:
    from lapo.stages.bc import train_latent_bc

    cfg = command_config(args, config.BCConfig, section="bc")
    summary = train_latent_bc(
        cfg, Path(args.lam), Path(args.data), Path(args.out), not args.quiet, _command()
    )
    _print(summary)


def decode_offline(args: argparse.Namespace) -> None:
    from lapo.stages.decode.offline import decode_offline

    cfg = command_config(args, config.OfflineConfig, section="offline")
    _print(decode_offline(Path(args.policy), Path(args.data), Path(args.out), cfg), indent=None)


def decode_online(args: argparse.Namespace) -> None:
    from lapo.stages.decode.online import decode_online

    cfg = command_config(args, config.OnlineConfig, section="online")
    _print(
        decode_online(cfg, Path(args.policy), args.env, Path(args.out), not args.quiet, _command())
    )


def baseline_bc(args: argparse.Namespace) -> None:
    """``baseline bc`` and ``baseline idm-bc``."""
    from lapo.stages.baselines import bc_on_labels, idm_labels_bc

    if args.labels < 1:
        raise UserError(f"--labels must be at least 1, got {args.labels}")
    cfg = command_config(args, config.BCConfig, section="bc")
    where = (Path(args.data), Path(args.out), args.labels)
    run = (Path(args.labels_from) if args.labels_from else None, not args.quiet, _command())
    if args.baseline_command == "bc":
        _print(bc_on_labels(cfg, *where, *run))
    else:
        idm = command_config(
            args,
            config.SupervisedIDMConfig,
            section="supervised_idm.idm",
            prefix="idm_",
            missing_ok=True,
        )
        _print(idm_labels_bc(cfg, idm, *where, *run))


def baseline_ppo(args: argparse.Namespace) -> None:
    from lapo.envs import check_game
    from lapo.stages.baselines import ppo_from_scratch

    check_game(args.env)
    if not args.config and "frames" not in args:
        raise UserError("--frames is required (the environment frames to train for)")
    base = config.preset(config.ExpertConfig, "baseline")
    cfg = command_config(args, config.ExpertConfig, base, section="train")
    _print(ppo_from_scratch(cfg, args.env, Path(args.out), not args.quiet, _command()))


def evaluate(args: argparse.Namespace) -> None:
    from lapo.envs import check_game
    from lapo.evaluation.episodes import evaluate_seeds
    from lapo.evaluation.policies import load_policy
    from lapo.runkinds import demonstrator_return_of

    cfg = command_config(args, config.EvalConfig)
    if args.env is None and str(args.policy) == "random":
        raise UserError("--env is required with --policy random")
    policy = load_policy(args.policy, args.env, seed=cfg.seed)  # checks it before playing
    game = check_game(args.env or policy.game)
    demo = args.demonstrator_return
    if demo is None and args.demonstrator_return_from:
        from lapo.data.format import open_dataset
        from lapo.runkinds import data_fields

        manifest = open_dataset(Path(args.demonstrator_return_from)).manifest
        demo = data_fields(manifest)["demonstrator_return"]
        if demo is None:
            raise UserError(
                f"{args.demonstrator_return_from} records no policy return (not recorded by a "
                "demonstrator); pass --demonstrator-return"
            )
    if demo is None:
        demo = demonstrator_return_of(args.policy)
    _print(evaluate_seeds(args.policy, game, demonstrator_return=demo, **dataclasses.asdict(cfg)))


def demo(args: argparse.Namespace) -> None:
    from lapo.workflows import workers

    fast = config.preset(config.DemoConfig, "fast") if args.fast else None
    cfg = command_config(args, config.DemoConfig, fast)
    # the stages' worker processes fork from a server that imports lapo while this one does
    workers.start(cfg.threads)
    from lapo.workflows.demo import default_out, find_resumable, run_demo

    runs = Path(args.runs)
    out = Path(args.out) if args.out else find_resumable(runs, cfg) or default_out(runs)
    if (out / "stages.json").exists():
        print(f"lapo demo: resuming {out}", file=sys.stderr)
    summary = run_demo(cfg, out, progress=not args.quiet)
    rows = json.loads((out / "stages.json").read_text())["report"]["result"]["summary"]
    width = max(len(r[0]) for r in rows)
    for name, value in rows:
        print(f"{name:<{width}}  {value}")
    print(f"report: {out / 'report.html'} ({summary['wall_seconds']:.0f} s)")


def reproduce(args: argparse.Namespace) -> None:
    import torch

    from lapo.envs import GAMES, check_game
    from lapo.workflows.reproduce import cpu_hours, reproduce

    games = list(GAMES) if args.games == "all" else args.games.split(",")
    extra = {k: shlex.split(getattr(args, f"{k}_args") or "") for k in EXTRA_ARGS}
    cfg = command_config(args, config.ReproduceConfig)
    cfg = dataclasses.replace(cfg, games=[check_game(g) for g in games], extra=extra)
    if cfg.preset == "paper" and not torch.cuda.is_available() and not args.force:
        raise UserError(
            f"the paper preset is a GPU job: about {cpu_hours(cfg):,.0f} hours on a 2-core CPU "
            f"for {len(games)} game(s) x {cfg.seeds} seed(s); run it on a GPU, use --preset "
            "cpu, or pass --force"
        )
    _print(reproduce(cfg, Path(args.out), progress=not args.quiet))


EXTRA_ARGS = {
    "lam": "lapo lam train",
    "bc": "lapo bc train and the BC baselines",
    "idm": "lapo baseline idm-bc",
    "decode": "lapo decode offline",
    "online": "lapo decode online",
    "ppo": "lapo baseline ppo",
}
"""``lapo reproduce --X-args``: the step kinds that take extra options, and their commands."""
