"""PPO demonstrator training speed per network, on one CPU thread: frames/s and where the time goes.

    python benchmarks/ppo_speed.py [--game bigfish] [--updates 2] [--threads 1]
        [--variants nature,nature-grey,nature-32,nature_small,nature_small-32,nature_small-32-grey]
        [--num-envs 64] [--num-steps 256] [--minutes M]

A variant is ``ARCH[-32][-grey]``: ``lapo expert train``'s ``--arch`` (impala, nature,
nature_small), with ``--obs-size 32`` and ``--grey``; the environments and the rollout always
hold the recorded 64x64 RGB frames. Each variant runs the loop of ``lapo expert train``
(:func:`lapo.rl.expert.train_expert`) from the same parts (:mod:`lapo.rl.ppo`: rollout with GAE,
then the epochs), without its logging and checkpoints, for ``--updates`` updates of Procgen's
PPO baseline (64 envs x 256 steps, 8 minibatches, 3 epochs). It prints a markdown table: the
network's parameters and multiply-adds per frame, frames/s (wall clock, rollout and update) and
the split of that time between the environment steps, the rest of the rollout (the network's
forward passes, action sampling, GAE) and the update (forward, backward and Adam over the epochs).

``--minutes M`` instead trains each variant for M minutes of this process's CPU time and adds
the frames reached and the mean return of the last 100 episodes (a long measurement: M x the
number of variants).
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import time

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from lapo.config import ExpertConfig
from lapo.envs import NUM_ACTIONS
from lapo.errors import LapoError
from lapo.models.actor_critic import ActorCritic
from lapo.rl import ppo

VARIANTS = "nature,nature-grey,nature-32,nature_small,nature_small-32,nature_small-32-grey"


class TimedEnvs(ppo.PPOEnvs):
    """:class:`lapo.rl.ppo.PPOEnvs` adding up the wall time of its steps in ``seconds``."""

    seconds = 0.0

    def step(self, action: torch.Tensor) -> torch.Tensor:
        t0 = time.perf_counter()
        reward = super().step(action)
        self.seconds += time.perf_counter() - t0
        return reward


def variant_config(name: str, game: str, num_envs: int, num_steps: int) -> ExpertConfig:
    """The :class:`ExpertConfig` of variant ``ARCH[-32][-grey]``."""
    arch, *options = name.split("-")
    if set(options) - {"32", "grey"}:
        raise LapoError(f"variant {name!r}: write ARCH[-32][-grey], e.g. nature_small-32-grey")
    obs_size, grey = (32 if "32" in options else 64), "grey" in options
    return ExpertConfig(
        game=game, arch=arch, obs_size=obs_size, grey=grey, num_envs=num_envs, num_steps=num_steps
    )


def macs_per_frame(model: ActorCritic) -> float:
    """The network's multiply-adds for one frame's forward pass."""
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(torch.zeros(1, 64, 64, 3, dtype=torch.uint8))
    return counter.get_total_flops() / 2


def measure(cfg: ExpertConfig, updates: int, minutes: float) -> dict:
    """Train ``cfg``'s network for ``updates`` updates (or ``minutes`` of CPU time when
    non-zero); return its size, frames/s, time split and recent mean return."""
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    device = torch.device("cpu")
    model = ActorCritic(NUM_ACTIONS, cfg.arch, cfg.width, cfg.obs_size, cfg.grey)
    model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.learning_rate, eps=1e-5)
    rollout = update = 0.0
    done = 0
    with TimedEnvs(cfg.game, cfg, device) as envs:
        buf = ppo.RolloutBuffer(cfg.num_steps, envs.num_envs, device)
        cpu0 = time.process_time()
        while (time.process_time() - cpu0 < minutes * 60) if minutes else (done < updates):
            t0 = time.perf_counter()
            model.eval()
            advantages, returns = ppo.collect_rollout(model, envs, buf, cfg)
            t1 = time.perf_counter()
            model.train()
            ppo.ppo_epochs(model, optimizer, buf.batch(advantages, returns), cfg, rng)
            rollout, update = rollout + t1 - t0, update + time.perf_counter() - t1
            done += 1
        total = rollout + update
        return {
            "params": sum(p.numel() for p in model.parameters()),
            "macs": macs_per_frame(model),
            "frames": done * cfg.batch_size,
            "fps": done * cfg.batch_size / total,
            "env": envs.seconds / total,
            "net": (rollout - envs.seconds) / total,
            "update": update / total,
            "mean_return": envs.mean_return(),
        }


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--game", default="bigfish")
    ap.add_argument("--updates", type=int, default=2, help="updates per variant")
    ap.add_argument("--variants", default=VARIANTS, help="comma-separated ARCH[-32][-grey]")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    ap.add_argument("--num-envs", type=int, default=64)
    ap.add_argument("--num-steps", type=int, default=256)
    ap.add_argument("--minutes", type=float, default=0.0, help="CPU minutes per variant")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    try:
        configs = {
            v: variant_config(v, args.game, args.num_envs, args.num_steps)
            for v in args.variants.split(",")
        }
    except LapoError as e:
        ap.error(str(e))  # one line, exit status 2
    budget = f"{args.minutes:g} CPU minutes" if args.minutes else f"{args.updates} updates"
    print(
        f"{args.game}, {args.num_envs} envs x {args.num_steps} steps, {budget} per variant; "
        f"{cpu_model()}, {os.cpu_count()} cores, torch {torch.__version__} on "
        f"{torch.get_num_threads()} thread(s); {datetime.date.today()}"
    )
    long = " frames | mean return (last 100) |" if args.minutes else ""
    # load: the 1-minute load average before the variant ran (other processes' share)
    print(
        f"\n| variant | params | MMAC/frame | frames/s | env | rollout net | update |{long} load |"
    )
    print("|---" * (8 + 2 * bool(args.minutes)) + "|")
    for name, cfg in configs.items():
        load = os.getloadavg()[0]
        r = measure(cfg, args.updates, args.minutes)
        row = (
            f"| {name} | {r['params']:,} | {r['macs'] / 1e6:.2f} | {r['fps']:,.0f} | "
            f"{r['env']:.0%} | {r['net']:.0%} | {r['update']:.0%} |"
        )
        if args.minutes:
            row += f" {r['frames']:,} | {r['mean_return']:.2f} |"
        print(f"{row} {load:.1f} |", flush=True)


if __name__ == "__main__":
    main()
