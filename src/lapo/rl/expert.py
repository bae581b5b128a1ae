"""Demonstrators: PPO on Procgen as in the Procgen benchmark's baseline (Cobbe et al. 2020).

``train_expert`` is one loop that reads top to bottom: rollout, minibatch epochs, logging,
checkpoint, each step one call into :mod:`lapo.rl.ppo`. A run folder (:class:`lapo.runs.Run`)
holds ``policy.safetensors`` + ``config.json`` (kind ``ppo-expert``: the policy, loadable by
:func:`lapo.evaluation.policies.load_policy`, with the training config under ``train`` and the command),
``checkpoint.safetensors`` (everything needed to resume), ``metrics.csv`` and TensorBoard
event files in ``tb/``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from lapo.checkpoint import CheckpointError, load_tensors, read_json, save_tensors, write_json
from lapo.config import DistillConfig, ExpertConfig
from lapo.envs import NUM_ACTIONS, check_game
from lapo.evaluation.episodes import evaluate
from lapo.evaluation.policies import ExpertPolicy
from lapo.models.actor_critic import ActorCritic
from lapo.rl import ppo
from lapo.runkinds import PPO_EXPERT


def refuse_other_game(ckpt: Path, game: str) -> None:
    """Raise :class:`CheckpointError` when the run that wrote ``ckpt`` played another game."""
    if ckpt.exists():
        trained = load_tensors(ckpt)[1]["config"]["game"]
        if trained != game:
            raise CheckpointError(f"{ckpt} was trained on {trained}, not {game}: use another --out")


def network_spec(cfg: ExpertConfig | DistillConfig) -> dict:
    """What :func:`lapo.evaluation.policies.load_policy` reads from a demonstrator folder's
    ``config.json``: its game, the network's architecture and input, and the action count."""
    return dict(
        game=cfg.game,
        arch=cfg.arch,
        width=cfg.width,
        obs_size=cfg.obs_size,
        grey=cfg.grey,
        num_actions=NUM_ACTIONS,
    )


def train_expert(
    cfg: ExpertConfig, out: Path, progress: bool = True, command: str | None = None
) -> dict:
    """Train a PPO demonstrator into ``out``; resumes from ``out/checkpoint.safetensors``.

    Returns a summary: frames trained, wall time, frames/s and recent mean return.
    """
    check_game(cfg.game)
    run = ppo.ppo_run(out, PPO_EXPERT, cfg, f"ppo {cfg.game}", progress)
    with run:
        torch.manual_seed(cfg.seed)
        rng = np.random.default_rng(cfg.seed)
        model = ActorCritic(NUM_ACTIONS, cfg.arch, cfg.width, cfg.obs_size, cfg.grey)
        model = model.to(run.device, memory_format=torch.channels_last)
        optimizer = torch.optim.Adam(model.parameters(), lr=cfg.learning_rate, eps=1e-5)
        refuse_other_game(run.ckpt, cfg.game)
        start = run.resume(model, optimizer, rng, counter="update")
        spec = network_spec(cfg)
        run.write_config("train", **spec, command=command, frames_trained=run.meta.get("frames"))
        with ppo.PPOEnvs(cfg.game, cfg, run.device, start, run.meta) as envs:
            buf = ppo.RolloutBuffer(cfg.num_steps, envs.num_envs, run.device)
            for update in range(start, cfg.num_updates):
                model.eval()
                advantages, returns = ppo.collect_rollout(model, envs, buf, cfg)
                model.train()
                loss, grad_norm = ppo.ppo_epochs(
                    model, optimizer, buf.batch(advantages, returns), cfg, rng
                )
                ppo.log_update(run, update + 1, start, envs, loss, grad_norm)
                if ppo.checkpoint_due(update + 1, cfg):
                    ppo.ppo_checkpoint(run, update + 1, model, optimizer, rng, envs)
                    run.save("policy.safetensors", model.state_dict())
                    frames, ret = (update + 1) * cfg.batch_size, envs.mean_return()
                    extra = dict(command=command, frames_trained=frames, train_mean_return=ret)
                    run.write_config("train", **spec, **extra)
    trained = (cfg.num_updates - start) * cfg.batch_size
    fps = round(trained / run.wall_seconds(), 1) if trained else None
    return ppo.ppo_summary(run, cfg, envs, frames_per_second=fps)


def package_demonstrator(
    run: Path, dest: Path, episodes: int = 100, seed: int = 12345, num_envs: int = 16
) -> dict:
    """Evaluate the policy in ``run`` over ``episodes`` episodes and copy it to ``dest``.

    ``dest`` receives ``policy.safetensors``, ``config.json`` and ``manifest.json`` (the exact
    training command, the frames trained and the measured return), written atomically.
    """
    run, dest = Path(run), Path(dest)
    policy = ExpertPolicy(run, seed=seed)
    result = evaluate(policy, policy.game, episodes=episodes, seed=seed, num_envs=num_envs)
    tensors, _ = load_tensors(run / "policy.safetensors")
    save_tensors(dest / "policy.safetensors", tensors)
    config = read_json(run / "config.json")
    write_json(dest / "config.json", config)
    manifest = {
        "game": policy.game,
        "command": config.get("command"),
        "frames_trained": config.get("frames_trained"),
        "train_config": config.get("train") or config.get("distill"),
        "eval": {k: v for k, v in result.items() if k != "policy"},
        "eval_command": f"lapo eval --policy demonstrator --env {policy.game} "
        f"--episodes {episodes} --seed {seed} --num-envs {num_envs}",
    }
    write_json(dest / "manifest.json", manifest)
    return manifest
