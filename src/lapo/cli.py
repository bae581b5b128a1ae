"""The ``lapo`` command: a thin layer of subcommands over the package's functions.

A user's mistake (bad option, missing file, corrupt data) ends in one line on stderr that
says what is wrong and what to do, and exit status 2; never a traceback.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

from lapo.cliutil import add_dataclass_args, dataclass_from_args


class UserError(Exception):
    """An error in what the user asked for; printed as one line."""


def _cmd_expert_train(args: argparse.Namespace) -> None:
    from lapo.expert import ExpertConfig, train_expert

    cfg = dataclass_from_args(ExpertConfig, args, game=args.env)
    if cfg.frames <= 0:
        raise UserError(f"--frames must be a positive number of frames, got {cfg.frames}")
    out = Path(args.out)
    summary = train_expert(cfg, out, progress=not args.quiet)
    summary["command"] = "lapo " + shlex.join(sys.argv[1:])
    print(json.dumps(summary, indent=2))


def build_parser() -> argparse.ArgumentParser:
    from lapo.envs import GAMES
    from lapo.expert import ExpertConfig

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
    except KeyboardInterrupt:
        print("lapo: interrupted; run the same command again to resume", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
