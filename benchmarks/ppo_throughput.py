"""PPO demonstrator training throughput (frames/s) per encoder, on this machine.

    python benchmarks/ppo_throughput.py [--updates 2] [--game coinrun] [--archs impala,nature]

Runs ``train_expert`` for a few updates of the Procgen baseline's rollout (64 envs x 256
steps, 8 minibatches, 3 epochs) per encoder and prints the whole-loop frames/s (environment
stepping, inference and the PPO update together) as JSON.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile

import torch

from lapo.config import ExpertConfig
from lapo.rl.expert import train_expert


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--game", default="coinrun")
    ap.add_argument("--updates", type=int, default=2)
    ap.add_argument("--archs", default="impala,nature")
    ap.add_argument("--num-steps", type=int, default=256)
    args = ap.parse_args()
    results = {
        "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads",
        "torch": torch.__version__,
    }
    for arch in args.archs.split(","):
        cfg = ExpertConfig(
            game=args.game, arch=arch, num_steps=args.num_steps, checkpoint_every=10**9
        )
        cfg.frames = cfg.batch_size * args.updates
        with tempfile.TemporaryDirectory() as d:
            s = train_expert(cfg, d, progress=False)
        results[arch] = {"frames": s["frames"], "frames_per_second": s["frames_per_second"]}
        print(json.dumps({arch: results[arch]}), flush=True)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
