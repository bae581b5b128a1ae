"""The ``lapo`` command: a thin layer of subcommands over the package's functions.

A user's mistake (bad option, missing file, corrupt data) ends in one line on stderr that
says what is wrong and what to do, and exit status 2; never a traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
from pathlib import Path

from lapo.cliutil import add_dataclass_args, apply_overrides, dataclass_from_args
from lapo.errors import LapoError, UserError


def _cmd_expert_train(args: argparse.Namespace) -> None:
    from lapo.config import ExpertConfig
    from lapo.expert import train_expert

    cfg = dataclass_from_args(ExpertConfig, args, game=args.env)
    command = "lapo " + shlex.join(sys.argv[1:])
    summary = train_expert(cfg, Path(args.out), progress=not args.quiet, command=command)
    summary["command"] = command
    print(json.dumps(summary, indent=2))


def _cmd_expert_package(args: argparse.Namespace) -> None:
    from lapo.expert import package_demonstrator

    if args.episodes < 1:
        raise UserError(f"--episodes must be at least 1, got {args.episodes}")
    print(json.dumps(package_demonstrator(args.run, args.out, args.episodes, args.seed), indent=2))


def _cmd_eval(args: argparse.Namespace) -> None:
    from lapo.envs import check_game
    from lapo.eval import evaluate_seeds
    from lapo.policies import demonstrator_return_of, load_policy

    if args.episodes < 1:
        raise UserError(f"--episodes must be at least 1, got {args.episodes}")
    if args.seeds < 1:
        raise UserError(f"--seeds must be at least 1, got {args.seeds}")
    if args.env is None and str(args.policy) == "random":
        raise UserError("--env is required with --policy random")
    policy = load_policy(args.policy, args.env, seed=args.seed)  # checks it before playing
    game = check_game(args.env or policy.game)
    demo = args.demonstrator_return
    if demo is None and args.demonstrator_return_from:
        from lapo.data.format import open_dataset

        demo = open_dataset(Path(args.demonstrator_return_from)).manifest.get("policy_mean_return")
        if demo is None:
            raise UserError(
                f"{args.demonstrator_return_from} records no policy return (not recorded by a "
                "demonstrator); pass --demonstrator-return"
            )
    if demo is None:
        demo = demonstrator_return_of(args.policy)
    result = evaluate_seeds(
        args.policy,
        game,
        args.seeds,
        episodes=args.episodes,
        seed=args.seed,
        num_envs=args.num_envs,
        demonstrator_return=demo,
        distribution_mode=args.distribution_mode,
    )
    print(json.dumps(result, indent=2))


def _command() -> str:
    return "lapo " + shlex.join(sys.argv[1:])


def _cmd_demo(args: argparse.Namespace) -> None:
    from lapo.config import DEMO_FAST as FAST
    from lapo.config import DemoConfig
    from lapo.demo import default_out, find_resumable, run_demo
    from lapo.policies import shipped_demonstrators

    base = DemoConfig(**FAST) if args.fast else DemoConfig()
    cfg = apply_overrides(base, args)
    shipped = shipped_demonstrators()
    if cfg.game not in shipped:
        raise UserError(
            f"no demonstrator ships for {cfg.game!r}; the demo plays one of: {', '.join(shipped)}"
        )
    if args.out:
        out = Path(args.out)
    else:
        out = find_resumable(Path(args.runs), cfg) or default_out(Path(args.runs))
    if (out / "stages.json").exists():
        print(f"lapo demo: resuming {out}", file=sys.stderr)
    summary = run_demo(cfg, out, progress=not args.quiet)
    rows = json.loads((out / "stages.json").read_text())["report"]["result"]["summary"]
    width = max(len(r[0]) for r in rows)
    for name, value in rows:
        print(f"{name:<{width}}  {value}")
    print(f"report: {out / 'report.html'} ({sum(summary['stages'].values()):.0f} s)")


def _cmd_reproduce(args: argparse.Namespace) -> None:
    import torch

    from lapo.config import PAPER_LABELS, STEPS, ReproduceConfig
    from lapo.envs import GAMES, check_game
    from lapo.reproduce import cpu_hours, reproduce

    games = list(GAMES) if args.games == "all" else args.games.split(",")
    for g in games:
        check_game(g)
    steps = args.stages.split(",")
    unknown = sorted(set(steps) - set(STEPS))
    if unknown:
        raise UserError(f"unknown --stages {', '.join(unknown)}: choose from {', '.join(STEPS)}")
    paper = args.preset == "paper"
    try:
        labels = (
            [int(k) for k in args.labels.split(",")]
            if args.labels
            else list(PAPER_LABELS if paper else (256, 1000))
        )
    except ValueError:
        raise UserError(f"--labels takes comma-separated counts, got {args.labels!r}") from None
    if args.seeds < 1 or min(labels) < 1:
        raise UserError("--seeds and every --labels count must be at least 1")
    cfg = ReproduceConfig(
        games=games,
        seeds=args.seeds,
        preset=args.preset,
        steps=steps,
        labels=labels,
        frames=args.frames or (1_000_000 if paper else 51_200),
        online_frames=args.online_frames or (4_000_000 if paper else 300_000),
        data_root=args.data_root,
        episodes=args.episodes,
        jobs=args.jobs,
        threads=args.threads,
        extra={
            step: shlex.split(getattr(args, f"{step}_args") or "")
            for step in ("lam", "bc", "idm", "online", "ppo")
        },
    )
    if paper and not torch.cuda.is_available() and not args.force:
        raise UserError(
            f"the paper preset is a GPU job: about {cpu_hours(cfg):,.0f} hours on a 2-core CPU "
            f"for {len(games)} game(s) x {args.seeds} seed(s); run it on a GPU, use --preset "
            "cpu, or pass --force"
        )
    print(json.dumps(reproduce(cfg, Path(args.out), progress=not args.quiet), indent=2))


def _cmd_bc_train(args: argparse.Namespace) -> None:
    from lapo.bc import train_latent_bc
    from lapo.config import bc_preset as preset

    cfg = apply_overrides(preset(args.preset), args)
    summary = train_latent_bc(
        cfg, Path(args.lam), Path(args.data), Path(args.out), not args.quiet, _command()
    )
    print(json.dumps(summary, indent=2))


def _cmd_decode_offline(args: argparse.Namespace) -> None:
    from lapo.config import OfflineConfig
    from lapo.decode.offline import decode_offline

    cfg = dataclass_from_args(OfflineConfig, args)
    print(json.dumps(decode_offline(Path(args.policy), Path(args.data), Path(args.out), cfg)))


def _cmd_decode_online(args: argparse.Namespace) -> None:
    from lapo.config import OnlineConfig
    from lapo.decode.online import decode_online

    cfg = dataclass_from_args(OnlineConfig, args)
    summary = decode_online(
        cfg, Path(args.policy), args.env, Path(args.out), not args.quiet, _command()
    )
    print(json.dumps(summary, indent=2))


def _cmd_baseline_bc(args: argparse.Namespace) -> None:
    from lapo.baselines import bc_on_labels, idm_labels_bc
    from lapo.config import bc_preset as preset

    cfg = apply_overrides(preset(args.preset), args)
    if args.labels < 1:
        raise UserError(f"--labels must be at least 1, got {args.labels}")
    labels_from = Path(args.labels_from) if args.labels_from else None
    if args.baseline_command == "bc":
        summary = bc_on_labels(
            cfg,
            Path(args.data),
            Path(args.out),
            args.labels,
            labels_from,
            not args.quiet,
            _command(),
        )
    else:
        from lapo.config import SupervisedIDMConfig

        idm_cfg = SupervisedIDMConfig(
            width=args.idm_width,
            differences=args.idm_differences,
            difference_scale=args.idm_difference_scale,
            steps=args.idm_steps,
        )
        summary = idm_labels_bc(
            cfg,
            idm_cfg,
            Path(args.data),
            Path(args.out),
            args.labels,
            labels_from,
            not args.quiet,
            _command(),
        )
    print(json.dumps(summary, indent=2))


def _cmd_baseline_ppo(args: argparse.Namespace) -> None:
    from lapo.baselines import ppo_from_scratch
    from lapo.envs import check_game

    check_game(args.env)
    if args.frames <= 0:
        raise UserError(f"--frames must be a positive number of frames, got {args.frames}")
    if args.num_envs < 1 or args.num_steps < 1:
        raise UserError("--num-envs and --num-steps must be at least 1")
    summary = ppo_from_scratch(
        args.env,
        args.frames,
        Path(args.out),
        args.width,
        args.seed,
        args.threads,
        args.device,
        not args.quiet,
        _command(),
        num_envs=args.num_envs,
        num_steps=args.num_steps,
    )
    print(json.dumps(summary, indent=2))


def _cmd_lam_train(args: argparse.Namespace) -> None:
    from lapo.config import lam_preset as preset
    from lapo.lam import train_lam

    cfg = apply_overrides(preset(args.preset), args)
    command = "lapo " + shlex.join(sys.argv[1:])
    summary = train_lam(cfg, Path(args.data), Path(args.out), not args.quiet, command)
    print(json.dumps(summary, indent=2))


def _cmd_lam_probe(args: argparse.Namespace) -> None:
    from lapo.lam import probe_lam

    if args.threads > 0:
        import torch

        torch.set_num_threads(args.threads)
    if args.protocol == "paper":
        # the reference's protocol: 65,536 labelled windows, 65,536 test windows, 3 epochs
        # (as many as the data holds, if fewer)
        report = probe_lam(Path(args.run), Path(args.data), 65_536, 65_536, args.seed, epochs=3)
    else:
        if args.labels < 1:
            raise UserError(f"--labels must be at least 1, got {args.labels}")
        report = probe_lam(Path(args.run), Path(args.data), args.labels, args.test, args.seed)
    print(json.dumps(report))


def _cmd_lam_plot(args: argparse.Namespace) -> None:
    from lapo.report.latents import plot_lam

    print(json.dumps(plot_lam(Path(args.run), Path(args.data), Path(args.out)), indent=2))


def build_parser() -> argparse.ArgumentParser:
    from lapo.config import (
        BC_PRESETS,
        BCConfig,
        DemoConfig,
        ExpertConfig,
        LAMConfig,
        OfflineConfig,
        OnlineConfig,
    )
    from lapo.config import LAM_PRESETS as PRESETS
    from lapo.data.commands import add_data_commands
    from lapo.envs import GAMES

    parser = argparse.ArgumentParser(
        prog="lapo",
        description="Learning to Act without Actions: latent action policies from video.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    expert = sub.add_parser("expert", help="PPO demonstrators").add_subparsers(
        dest="expert_command", required=True, metavar="SUBCOMMAND"
    )
    p = expert.add_parser("train", help="train a PPO demonstrator on a Procgen game")
    p.add_argument("--env", required=True, metavar="GAME", help=f"one of: {', '.join(GAMES)}")
    p.add_argument("--out", required=True, metavar="DIR", help="run folder (resumes if present)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    add_dataclass_args(p, ExpertConfig, skip=("game",))
    p.set_defaults(func=_cmd_expert_train)
    p = expert.add_parser("package", help="evaluate a trained run and copy it with a manifest")
    p.add_argument("--run", required=True, help="folder written by 'lapo expert train'")
    p.add_argument("--out", required=True, help="destination folder")
    p.add_argument("--episodes", type=int, default=100, help="evaluation episodes (default: 100)")
    p.add_argument("--seed", type=int, default=12345, help="evaluation seed")
    p.set_defaults(func=_cmd_expert_package)
    add_data_commands(sub)

    lam = sub.add_parser("lam", help="stage 1: latent action model").add_subparsers(
        dest="lam_command", required=True, metavar="SUBCOMMAND"
    )
    p = lam.add_parser("train", help="train the latent IDM + world model on a dataset")
    p.add_argument("--data", required=True, help="dataset folder (actions not needed)")
    p.add_argument("--out", required=True, help="run folder (resumes if present)")
    p.add_argument("--preset", default="cpu", help=f"base configuration: {', '.join(PRESETS)}")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    add_dataclass_args(p, LAMConfig, overrides_only=True, defaults=PRESETS["cpu"])
    p.set_defaults(func=_cmd_lam_train)
    p = lam.add_parser("probe", help="how well latent actions predict the true actions")
    p.add_argument("--run", required=True, help="stage-1 run folder")
    p.add_argument("--data", required=True, help="dataset with actions, same game")
    p.add_argument("--labels", type=int, default=4096, help="labelled train windows")
    p.add_argument("--test", type=int, default=8192, help="test windows (at most)")
    p.add_argument("--seed", type=int, default=0, help="seed of window choice and probe")
    p.add_argument(
        "--protocol",
        default="quick",
        choices=["quick", "paper"],
        help="quick: --labels/--test windows, 30 epochs; paper: the reference's 65,536 labelled "
        "and 65,536 test windows (capped at what the data holds), 3 epochs",
    )
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads; 0 = all cores")
    p.set_defaults(func=_cmd_lam_probe)
    p = lam.add_parser("plot", help="UMAP of latents, world-model predictions, rollout GIF")
    p.add_argument("--run", required=True, help="stage-1 run folder")
    p.add_argument("--data", required=True, help="dataset of the same game")
    p.add_argument("--out", required=True, help="folder for the pictures")
    p.set_defaults(func=_cmd_lam_plot)

    p = sub.add_parser("eval", help="play a policy for N episodes and print its returns as JSON")
    p.add_argument(
        "--policy", required=True, help="'random', 'demonstrator' (shipped) or a policy folder"
    )
    p.add_argument("--env", metavar="GAME", help="game (default: the policy's own)")
    p.add_argument("--episodes", type=int, default=100, help="episodes to play (default: 100)")
    p.add_argument("--seed", type=int, default=0, help="environment and sampling seed")
    p.add_argument("--num-envs", type=int, default=16, help="parallel environments")
    p.add_argument("--distribution-mode", default="easy", help="easy or hard")
    p.add_argument("--seeds", type=int, default=1, help="seeds to run (seed, seed+1, ...)")
    p.add_argument(
        "--demonstrator-return",
        type=float,
        help="also normalise between random and this demonstrator mean return (default: the "
        "return recorded for the data a lapo policy was trained from)",
    )
    p.add_argument(
        "--demonstrator-return-from",
        metavar="DATA",
        help="normalise by the demonstrator return recorded in this dataset's manifest",
    )
    p.set_defaults(func=_cmd_eval)

    p = sub.add_parser(
        "demo", help="the whole method on a CPU in minutes, ending in an HTML report"
    )
    p.add_argument("--out", help="run folder (default: runs/demo-<time>, or resume the last)")
    p.add_argument("--runs", default="runs", help=argparse.SUPPRESS)
    p.add_argument("--fast", action="store_true", help="toy sizes: a smoke check in ~3 minutes")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    add_dataclass_args(p, DemoConfig, overrides_only=True, defaults=DemoConfig())
    p.set_defaults(func=_cmd_demo)

    p = sub.add_parser("reproduce", help="the paper's grid: games x seeds x every stage")
    p.add_argument("--games", default="all", help="'all' or a comma-separated list")
    p.add_argument("--seeds", type=int, default=1, help="training seeds per game")
    p.add_argument("--preset", default="paper", choices=["paper", "cpu"], help="configuration")
    p.add_argument(
        "--stages",
        default="data,lam,bc,offline,labels,online,ppo",
        help="steps to run (data is always collected; labels: LAPO with the K labels also in "
        "stage 1, a stage 1, stage 2 and decoding per K)",
    )
    p.add_argument("--labels", help="label counts (default: 16,...,8192 paper; 256,1000 cpu)")
    p.add_argument("--frames", type=int, help="demonstrator frames (default 1M paper, 51,200)")
    p.add_argument("--online-frames", type=int, help="online frames (default 4M paper, 300k)")
    p.add_argument("--data-root", help="use DIR/GAME datasets (e.g. imported) instead")
    p.add_argument("--episodes", type=int, default=100, help="evaluation episodes")
    p.add_argument("--jobs", type=int, default=2, help="steps at once")
    p.add_argument("--threads", type=int, default=1, help="torch threads per step")
    p.add_argument("--out", default="runs/reproduce", help="grid folder (resumes if present)")
    for step, what in (
        ("lam", "lapo lam train"),
        ("bc", "lapo bc train and the BC baselines"),
        ("idm", "lapo baseline idm-bc"),
        ("online", "lapo decode online"),
        ("ppo", "lapo baseline ppo"),
    ):
        p.add_argument(f"--{step}-args", metavar="OPTIONS", help=f"extra options for {what}")
    p.add_argument("--force", action="store_true", help="run the paper preset without a GPU")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_reproduce)

    bc = sub.add_parser("bc", help="stage 2: latent behaviour cloning").add_subparsers(
        dest="bc_command", required=True, metavar="SUBCOMMAND"
    )
    p = bc.add_parser("train", help="regress a policy onto the frozen IDM's latent actions")
    p.add_argument("--lam", required=True, help="stage-1 run folder")
    p.add_argument("--data", required=True, help="dataset of the same game (actions not needed)")
    p.add_argument("--out", required=True, help="run folder (resumes if present)")
    p.add_argument("--preset", default="cpu", help=f"base configuration: {', '.join(BC_PRESETS)}")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    add_dataclass_args(p, BCConfig, overrides_only=True, defaults=BC_PRESETS["cpu"])
    p.set_defaults(func=_cmd_bc_train)

    dec = sub.add_parser("decode", help="stage 3: latent actions -> true actions").add_subparsers(
        dest="decode_command", required=True, metavar="SUBCOMMAND"
    )
    p = dec.add_parser("offline", help="fit a decoder on K labelled transitions")
    p.add_argument("--policy", required=True, help="stage-2 run folder ('lapo bc train')")
    p.add_argument("--data", required=True, help="dataset with actions, same game")
    p.add_argument("--out", required=True, help="folder for the decoded policy")
    add_dataclass_args(p, OfflineConfig)
    p.set_defaults(func=_cmd_decode_offline)
    p = dec.add_parser("online", help="PPO with rewards on top of the latent policy")
    p.add_argument("--policy", required=True, help="stage-2 run folder ('lapo bc train')")
    p.add_argument("--env", required=True, metavar="GAME", help=f"one of: {', '.join(GAMES)}")
    p.add_argument("--out", required=True, help="run folder (resumes if present)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    add_dataclass_args(p, OnlineConfig)
    p.set_defaults(func=_cmd_decode_online)

    base = sub.add_parser("baseline", help="baselines at LAPO's budgets").add_subparsers(
        dest="baseline_command", required=True, metavar="SUBCOMMAND"
    )
    for name, text in (
        ("bc", "(a) BC from scratch on the K labelled transitions"),
        ("idm-bc", "(b) supervised IDM on K labels labels the dataset, then BC"),
    ):
        p = base.add_parser(name, help=text)
        p.add_argument("--data", required=True, help="dataset with actions")
        p.add_argument("--labels", type=int, default=256, help="K labelled train windows")
        p.add_argument(
            "--labels-from",
            metavar="DIR",
            help="use the windows an offline decoding labelled (its labelled_windows.json)",
        )
        p.add_argument("--out", required=True, help="run folder (resumes if present)")
        p.add_argument("--preset", default="cpu", help=f"BC configuration: {', '.join(BC_PRESETS)}")
        p.add_argument("--quiet", action="store_true", help="no progress bar")
        if name == "idm-bc":
            p.add_argument("--idm-width", type=int, default=1, help="supervised IDM width")
            p.add_argument(
                "--idm-differences",
                action=argparse.BooleanOptionalAction,
                default=True,
                help="supervised IDM also sees frame differences",
            )
            p.add_argument("--idm-steps", type=int, default=1000, help="supervised IDM steps")
            p.add_argument(
                "--idm-difference-scale",
                type=float,
                default=10.0,
                help="multiplier of the frame differences (as the cpu stage-1 preset's)",
            )
        add_dataclass_args(p, BCConfig, overrides_only=True, defaults=BC_PRESETS["cpu"])
        p.set_defaults(func=_cmd_baseline_bc)
    p = base.add_parser("ppo", help="(c) PPO from scratch with the policy's IMPALA-CNN")
    p.add_argument("--env", required=True, metavar="GAME", help=f"one of: {', '.join(GAMES)}")
    p.add_argument("--frames", type=int, required=True, help="environment frames")
    p.add_argument("--out", required=True, help="run folder (resumes if present)")
    p.add_argument("--width", type=int, default=1, help="IMPALA-CNN width (the policy's)")
    p.add_argument("--num-envs", type=int, default=64, help="parallel environments")
    p.add_argument("--num-steps", type=int, default=64, help="steps per env per rollout")
    p.add_argument("--seed", type=int, default=0, help="seed")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads; 0 = all")
    p.add_argument("--device", default="auto", help="cpu, cuda or auto")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_baseline_ppo)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        args.func(args)
    except LapoError as e:
        print(f"lapo: error: {e}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        # the reader of our output went away (e.g. `| head`): stop quietly, as Unix tools do
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - stays open until exit
        return 0
    except KeyboardInterrupt:
        hint = " with --resume" if getattr(args, "command", None) == "collect" else ""
        print(f"lapo: interrupted; run the same command again{hint} to continue", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
