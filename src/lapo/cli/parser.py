"""The ``lapo`` command line as data: each subcommand's own options (folders, files, the game)
and the config dataclasses whose fields give the rest (see :mod:`lapo.cli.options`)."""

from __future__ import annotations

import argparse
from typing import Any

from lapo import config
from lapo.cli import commands as cmd
from lapo.cli.options import add_dataclass_args
from lapo.config import preset, preset_names
from lapo.envs import GAMES

Option = tuple[str, dict[str, Any]]


def _req(flag: str, help_: str, **kw: Any) -> Option:
    return flag, {"required": True, "help": help_, **kw}


def _opt(flag: str, help_: str, **kw: Any) -> Option:
    return flag, {"help": help_, **kw}


def _preset(cls: type, default: str) -> Option:
    """``--preset``: which of ``cls``'s presets the command starts from."""
    return _opt("--preset", f"base configuration: {', '.join(preset_names(cls))}", default=default)


# fmt: off
ENV = _req("--env", f"one of: {', '.join(GAMES)}", metavar="GAME")
OUT = _req("--out", "run folder (resumes if present)")
QUIET = _opt("--quiet", "no progress bar", action="store_true")
CONFIG = _opt("--config", "start from a saved run's config.json (instead of the defaults or "
              "--preset); options given override it", metavar="FILE")
LAM_PRESET = _preset(config.LAMConfig, "cpu")
BC_PRESET = _preset(config.BCConfig, "cpu")
OFFLINE_PRESET = _preset(config.OfflineConfig, "paper")
ONLINE_PRESET = _preset(config.OnlineConfig, "paper")
RUN1 = _req("--run", "stage-1 run folder")
STAGE2 = _req("--policy", "stage-2 run folder ('lapo bc train')")
WITH_ACTIONS = _req("--data", "dataset with actions, same game")
LABELLED = [
    _req("--data", "dataset with actions"),
    _opt("--labels", "K labelled train windows", type=int, default=256),
    _opt("--labels-from", "use the windows an offline decoding labelled (its "
         "labelled_windows.json)", metavar="DIR"),
    OUT, BC_PRESET, QUIET, CONFIG,
]
BC_CPU = {"defaults": preset(config.BCConfig, "cpu")}  # what --preset's default gives
# (c)'s options: the rest of its config comes from the preset, or whole from --config
PPO_BASELINE_FIELDS = ("frames", "width", "num_envs", "num_steps", "seed", "threads", "device")

GROUPS = {
    "expert": "demonstrators: PPO, or distilled from a planner",
    "data": "dataset tools",
    "lam": "stage 1: latent action model",
    "bc": "stage 2: latent behaviour cloning",
    "decode": "stage 3: latent actions -> true actions",
    "baseline": "baselines at LAPO's budgets",
}

# (command, help, handler, its own options, [(config class, add_dataclass_args options)])
COMMANDS: list[tuple[str, str, Any, list[Option], list[tuple[type, dict[str, Any]]]]] = [
    ("expert train", "train a PPO demonstrator on a Procgen game", cmd.expert_train,
     [ENV, _req("--out", "run folder (resumes if present)", metavar="DIR"), QUIET, CONFIG],
     [(config.ExpertConfig, {"skip": ("game",)})]),
    ("expert distill", "train a demonstrator network on a planner's moves (DAgger; maze, bigfish)",
     cmd.expert_distill,
     [ENV, _req("--out", "run folder (resumes if present)", metavar="DIR"), QUIET, CONFIG],
     [(config.DistillConfig, {"skip": ("game",)})]),
    ("expert package", "evaluate a trained run and copy it with a manifest", cmd.expert_package,
     [_req("--run", "folder written by 'lapo expert train' or 'lapo expert distill'"), _req("--out", "destination folder"),
      _opt("--episodes", "evaluation episodes (default: 100)", type=int, default=100),
      _opt("--seed", "evaluation seed", type=int, default=12345)], []),
    ("collect", "record a policy playing a Procgen game into a dataset", cmd.collect,
     [ENV, _req("--policy", "demonstrator folder, 'demonstrator' (shipped), 'planner' (maze, bigfish) or 'random'",
                metavar="DIR|random"),
      _req("--frames", "train frames to record", type=int, metavar="N"),
      _req("--out", "dataset folder (new, or --resume)", metavar="DIR"),
      _opt("--test-frames", "test frames (default N/10)", type=int, metavar="M"),
      _opt("--num-envs", "environments stepped together", type=int, default=16),
      _opt("--seed", "seed of environments and policy", type=int, default=0),
      _opt("--chunk-frames", "frames per chunk (one env's stretch)", type=int, default=4096),
      _opt("--resume", "continue the dataset in --out", action="store_true"),
      _opt("--paint-velocity", "diagnostic: Procgen paints the agent's velocity as grey squares "
           "in a corner (paint_vel_info; not in chaser, heist, maze, miner, plunder); recorded in "
           "the manifest", action="store_true"),
      _opt("--no-background", "diagnostic: Procgen draws no background images "
           "(use_backgrounds=False); recorded in the manifest", action="store_true"), QUIET], []),
    ("data import-lapo", "convert the reference LAPO .npz data to a dataset", cmd.data_import_lapo,
     [("src", {"metavar": "SRC", "help": "SRC/GAME/{train,test}/N.npz or GAME/{train,test}"}),
      ("dst", {"metavar": "DST", "help": "new dataset folder"}),
      _opt("--game", "which game, when SRC holds several"),
      _opt("--chunk-frames", "frames per chunk at most", type=int, default=4096), QUIET], []),
    ("data import-video", "turn videos into an action-free dataset (one episode per video)",
     cmd.data_import_video,
     [("paths", {"metavar": "PATH", "nargs": "+", "help": "video files (mp4, webm, mkv, avi, "
                 "mov, gif) or folders of them"}),
      _req("--out", "new dataset folder (or --resume)", metavar="DIR"),
      _opt("--chunk-frames", "frames per chunk at most (default 4096)", type=int, default=4096),
      _opt("--resume", "continue an import in --out (the videos it lists are kept)",
           action="store_true"),
      _opt("--skip-bad", "skip files that are not importable videos and list them",
           action="store_true"), QUIET], [(config.VideoImportConfig, {})]),
    ("data export-video", "write a dataset's frames as a video (mp4, webm or gif)",
     cmd.data_export_video,
     [("dir", {"metavar": "DIR", "help": "dataset folder"}),
      _req("--out", "video file; the codec follows the extension (.mp4: H.264, .webm: VP9, "
           ".gif)", metavar="FILE"),
      _opt("--split", "which split", choices=["train", "test"], default="train"),
      _opt("--episodes", "comma-separated episode ids (default: every frame of the split)",
           metavar="IDS"),
      _opt("--frames", "frames A to B-1 of the split (A:B, either may be left out)",
           metavar="A:B"),
      _opt("--fps", "frame rate of the video (default 15)", type=float, default=15.0),
      _opt("--overlay-actions", "write each frame's true action on it", action="store_true"),
      _opt("--scale", "integer upscale for viewing (default 1)", type=int, default=1),
      _opt("--crf", "quality, lower is better (default 15: about 1 dB below crf 0 on Procgen "
           "frames; ignored for gif)", type=int, default=15), QUIET], []),
    ("data info", "validate a dataset and print its summary as JSON", cmd.data_info,
     [("dir", {"metavar": "DIR", "help": "dataset folder"})], []),
    ("lam train", "train the latent IDM + world model on a dataset", cmd.lam_train,
     [_req("--data", "dataset folder (actions not needed)"), OUT, LAM_PRESET, QUIET, CONFIG],
     [(config.LAMConfig, {"defaults": preset(config.LAMConfig, "cpu")})]),
    ("lam probe", "how well latent actions predict the true actions", cmd.lam_probe,
     [RUN1, WITH_ACTIONS,
      _opt("--labels", "labelled train windows", type=int, default=4096),
      _opt("--test", "test windows (at most)", type=int, default=8192),
      _opt("--seed", "seed of window choice and probe", type=int, default=0),
      _opt("--protocol", "quick: --labels/--test windows, 30 epochs; paper: the reference's "
           "65,536 labelled and 65,536 test windows (capped at what the data holds), 3 epochs",
           default="quick", choices=["quick", "paper"]),
      _opt("--target", "which action the probe predicts: current (a[t], what led to o[t+1]), "
           "previous (a[t-1]: a latent that carries velocity predicts it too) or next (a[t+1]: "
           "not visible in the window, so chance)", default="current",
           choices=["previous", "current", "next"]),
      _opt("--pair", "windows of four frames o[t-2]..o[t+1]: beside the probe of z[t], a probe "
           "of the pair (z[t-1], z[t]) for the same action ('pair' in the JSON)",
           action="store_true"),
      _opt("--threads", "torch CPU threads; 0 = all cores", type=int, default=0)], []),
    ("lam plot", "UMAP of latents, what each cluster of latents does, world-model predictions, "
     "rollout GIF", cmd.lam_plot,
     [RUN1, _req("--data", "dataset of the same game (actions not needed)"),
      _req("--out", "folder for the pictures"),
      _opt("--clusters", "k-means clusters of the latents (clusters.png; the latent map's "
           "colours on data without actions); 0: no clusters.png", type=int, default=8,
           metavar="K")],
     []),
    ("play", "play the world model in a browser: pick latent actions, see its frames", cmd.play,
     [RUN1, _opt("--data", "dataset of the same game (default: the run's own); its test split "
                 "gives the start frames and the buttons' latents", metavar="DIR"),
      _opt("--port", "port to serve on (0: any free one)", type=int, default=8765),
      _opt("--host", "address to serve on", default="127.0.0.1"),
      _opt("--no-browser", "do not open a browser", action="store_true"),
      _opt("--clusters", "buttons on data without actions: k-means clusters of the latents",
           type=int, default=8, metavar="K"),
      _opt("--windows", "data windows whose latents make the buttons", type=int, default=2000),
      _opt("--seed", "seed of the windows, the clusters and the start frames", type=int,
           default=0),
      _opt("--threads", "torch CPU threads; 0 = all cores", type=int, default=1)], []),
    ("eval", "play a policy for N episodes and print its returns as JSON", cmd.evaluate,
     [_req("--policy", "'random', 'demonstrator' (shipped), 'planner' (maze, bigfish) or a policy folder"),
      _opt("--env", "game (default: the policy's own)", metavar="GAME"),
      _opt("--demonstrator-return", "also normalise between random and this demonstrator mean "
           "return (default: the return recorded for the data a lapo policy was trained from)",
           type=float),
      _opt("--demonstrator-return-from", "normalise by the demonstrator return recorded in this "
           "dataset's manifest", metavar="DATA")],
     [(config.EvalConfig, {})]),
    ("demo", "the whole method on a CPU in minutes, ending in an HTML report", cmd.demo,
     [_opt("--out", "run folder (default: runs/demo-<time>, or resume the last)"),
      _opt("--runs", argparse.SUPPRESS, default="runs"),
      _opt("--fast", "toy sizes: a smoke check in about 2 minutes on 2 cores", action="store_true"), QUIET],
     [(config.DemoConfig, {})]),
    ("reproduce", "the paper's grid: games x seeds x every stage", cmd.reproduce,
     [_opt("--games", "'all' or a comma-separated list", default="all"),
      _opt("--preset", f"configuration: {', '.join(preset_names(config.ReproduceConfig))}",
           default="paper"),
      _opt("--out", "grid folder (resumes if present)", default="runs/reproduce"),
      *[_opt(f"--{step}-args", f"extra options for {what}", metavar="OPTIONS")
        for step, what in cmd.EXTRA_ARGS.items()],
      _opt("--force", "run the paper preset without a GPU", action="store_true"), QUIET],
     [(config.ReproduceConfig, {"skip": ("games", "preset", "extra")})]),
    ("bc train", "regress a policy onto the frozen IDM's latent actions", cmd.bc_train,
     [_req("--lam", "stage-1 run folder"),
      _req("--data", "dataset of the same game (actions not needed)"),
      OUT, BC_PRESET, QUIET, CONFIG],
     [(config.BCConfig, BC_CPU)]),
    ("decode offline", "fit a decoder on K labelled transitions", cmd.decode_offline,
     [STAGE2, WITH_ACTIONS, _req("--out", "folder for the decoded policy"), OFFLINE_PRESET,
      CONFIG],
     [(config.OfflineConfig, {})]),
    ("decode online", "PPO with rewards on top of the latent policy", cmd.decode_online,
     [STAGE2, ENV, OUT, ONLINE_PRESET, QUIET, CONFIG], [(config.OnlineConfig, {})]),
    ("baseline bc", "(a) BC from scratch on the K labelled transitions", cmd.baseline_bc,
     LABELLED, [(config.BCConfig, BC_CPU)]),
    ("baseline idm-bc", "(b) supervised IDM on K labels labels the dataset, then BC",
     cmd.baseline_bc, LABELLED, [(config.SupervisedIDMConfig, {"prefix": "idm_"}), (config.BCConfig, BC_CPU)]),
    ("baseline ppo", "(c) PPO from scratch with the policy's IMPALA-CNN", cmd.baseline_ppo,
     [ENV, OUT, QUIET, CONFIG],
     [(config.ExpertConfig, {"defaults": preset(config.ExpertConfig, "baseline"),
                             "only": PPO_BASELINE_FIELDS, "required": ("frames",)})]),
]
# fmt: on


def build_parser() -> argparse.ArgumentParser:
    """The ``lapo`` parser: every command of :data:`COMMANDS`, grouped as ``lapo GROUP CMD``."""
    parser = argparse.ArgumentParser(
        prog="lapo",
        description="Learning to Act without Actions: latent action policies from video.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    groups: dict[str, Any] = {}
    for name, help_, func, options, configs in COMMANDS:
        group, _, leaf = name.rpartition(" ")
        if group and group not in groups:
            groups[group] = sub.add_parser(group, help=GROUPS[group]).add_subparsers(
                dest=f"{group}_command", required=True, metavar="SUBCOMMAND"
            )
        p = (groups[group] if group else sub).add_parser(leaf, help=help_)
        for flag, kw in options:
            p.add_argument(flag, **kw)
        for cls, kw in configs:
            add_dataclass_args(p, cls, **kw)
        p.set_defaults(func=func)
    return parser
