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


class UserError(Exception):
    """An error in what the user asked for; printed as one line."""


def _cmd_expert_train(args: argparse.Namespace) -> None:
    from lapo.expert import ExpertConfig, train_expert

    cfg = dataclass_from_args(ExpertConfig, args, game=args.env)
    if cfg.frames <= 0:
        raise UserError(f"--frames must be a positive number of frames, got {cfg.frames}")
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
    from lapo.eval import evaluate
    from lapo.policies import load_policy

    if args.episodes < 1:
        raise UserError(f"--episodes must be at least 1, got {args.episodes}")
    if args.env is None and str(args.policy) == "random":
        raise UserError("--env is required with --policy random")
    policy = load_policy(args.policy, args.env, seed=args.seed)
    game = check_game(args.env or policy.game)
    result = evaluate(
        policy,
        game,
        episodes=args.episodes,
        seed=args.seed,
        num_envs=args.num_envs,
        demonstrator_return=args.demonstrator_return,
        distribution_mode=args.distribution_mode,
    )
    print(json.dumps(result, indent=2))


def _cmd_lam_train(args: argparse.Namespace) -> None:
    from lapo.lam import preset, train_lam

    cfg = apply_overrides(preset(args.preset), args)
    if cfg.steps <= 0 or cfg.batch_size <= 0:
        raise UserError("--steps and --batch-size must be positive")
    command = "lapo " + shlex.join(sys.argv[1:])
    summary = train_lam(cfg, Path(args.data), Path(args.out), not args.quiet, command)
    print(json.dumps(summary, indent=2))


def _cmd_lam_probe(args: argparse.Namespace) -> None:
    from lapo.lam import probe_lam

    if args.labels < 1:
        raise UserError(f"--labels must be at least 1, got {args.labels}")
    print(json.dumps(probe_lam(Path(args.run), Path(args.data), args.labels, args.test, args.seed)))


def _cmd_lam_plot(args: argparse.Namespace) -> None:
    from lapo.plots import plot_lam

    print(json.dumps(plot_lam(Path(args.run), Path(args.data), Path(args.out)), indent=2))


def build_parser() -> argparse.ArgumentParser:
    from lapo.data.commands import add_data_commands
    from lapo.envs import GAMES
    from lapo.expert import ExpertConfig
    from lapo.lam import PRESETS, LAMConfig

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
    p.add_argument("--preset", default="cpu", choices=list(PRESETS), help="base configuration")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    add_dataclass_args(p, LAMConfig, overrides_only=True, defaults=PRESETS["cpu"])
    p.set_defaults(func=_cmd_lam_train)
    p = lam.add_parser("probe", help="how well latent actions predict the true actions")
    p.add_argument("--run", required=True, help="stage-1 run folder")
    p.add_argument("--data", required=True, help="dataset with actions, same game")
    p.add_argument("--labels", type=int, default=4096, help="labelled train windows")
    p.add_argument("--test", type=int, default=8192, help="test windows (at most)")
    p.add_argument("--seed", type=int, default=0, help="seed of window choice and probe")
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
    p.add_argument(
        "--demonstrator-return",
        type=float,
        help="also normalise between random and this demonstrator mean return",
    )
    p.set_defaults(func=_cmd_eval)
    return parser


def main(argv: list[str] | None = None) -> int:
    from lapo.checkpoint import CheckpointError
    from lapo.envs import EnvError

    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        args.func(args)
    except (UserError, EnvError, CheckpointError) as e:
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
