"""Demonstrators: PPO on Procgen as in the Procgen benchmark's baseline (Cobbe et al. 2020).

``train_expert`` is one loop that reads top to bottom: rollout, advantages, minibatch epochs,
logging, checkpoint. A run folder holds ``policy.safetensors`` + ``config.json`` (the policy,
loadable by :func:`lapo.policies.load_policy`), ``checkpoint.safetensors`` (everything needed
to resume), ``progress.csv`` and TensorBoard event files.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections import deque
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.distributions import Categorical

from lapo.checkpoint import (
    CheckpointError,
    load_tensors,
    read_json,
    restore_training_state,
    save_tensors,
    training_state,
    write_json,
)
from lapo.config import ExpertConfig
from lapo.envs import NUM_ACTIONS, ProcgenVecEnv, check_game, normalized_return
from lapo.models.impala import make_encoder, obs_to_float
from lapo.ppo import RewardNormalizer, compute_gae, ppo_loss
from lapo.runs import CsvLog, start_run


class ActorCritic(nn.Module):
    """Encoder -> policy logits ``(B, 15)`` and value ``(B,)`` from uint8 ``(B, 64, 64, 3)``."""

    def __init__(self, arch: str = "impala", width: int = 1, num_actions: int = NUM_ACTIONS):
        super().__init__()
        self.encoder = make_encoder(arch, in_channels=3, width=width)
        self.actor = nn.Linear(self.encoder.out_features, num_actions)
        self.critic = nn.Linear(self.encoder.out_features, 1)
        # small policy init so the first policy is near uniform (as in CleanRL / baselines)
        nn.init.orthogonal_(self.actor.weight, 0.01)
        nn.init.zeros_(self.actor.bias)
        nn.init.orthogonal_(self.critic.weight, 1.0)
        nn.init.zeros_(self.critic.bias)

    def forward(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # (B, 64, 64, 3) uint8 -> (B, 3, 64, 64) float -> (B, F) -> (B, 15), (B,)
        h = self.encoder(obs_to_float(obs).contiguous(memory_format=torch.channels_last))
        return self.actor(h), self.critic(h).squeeze(-1)


def save_policy(
    out: Path, model: ActorCritic, cfg: ExpertConfig, extra: dict | None = None
) -> None:
    """Write ``policy.safetensors`` + ``config.json``: what ``load_policy`` and ``eval`` read."""
    out = Path(out)
    save_tensors(out / "policy.safetensors", model.state_dict())
    write_json(
        out / "config.json",
        {
            "kind": "ppo-expert",
            "game": cfg.game,
            "arch": cfg.arch,
            "width": cfg.width,
            "num_actions": NUM_ACTIONS,
            "train": dataclasses.asdict(cfg),
            **(extra or {}),
        },
    )


def train_expert(
    cfg: ExpertConfig, out: Path, progress: bool = True, command: str | None = None
) -> dict:
    """Train a PPO demonstrator into ``out``; resumes from ``out/checkpoint.safetensors``.

    Returns a summary: frames trained, wall time, frames/s and recent mean return.
    """
    from torch.utils.tensorboard import SummaryWriter
    from tqdm import tqdm

    check_game(cfg.game)
    if cfg.frames <= 0:
        raise ValueError(f"--frames must be positive, got {cfg.frames}")
    out, device = start_run(out, cfg.threads, cfg.device)
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)

    model = ActorCritic(cfg.arch, cfg.width).to(device).to(memory_format=torch.channels_last)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.learning_rate, eps=1e-5)
    normalizer = RewardNormalizer(cfg.num_envs, cfg.gamma)
    start_update, elapsed_before = 0, 0.0
    recent_returns: deque[float] = deque(maxlen=100)

    ckpt_path = out / "checkpoint.safetensors"
    if ckpt_path.exists():
        tensors, meta = load_tensors(ckpt_path)
        if meta["config"]["game"] != cfg.game:
            raise CheckpointError(
                f"{ckpt_path} was trained on {meta['config']['game']}, not {cfg.game}: "
                "use another --out"
            )
        restore_training_state(tensors, meta, model, optimizer, rng)
        normalizer.load_state_dict(meta["normalizer"])
        start_update, elapsed_before = meta["update"], meta["elapsed"]
        recent_returns.extend(meta["recent_returns"])
    write_json(out / "train_config.json", {**dataclasses.asdict(cfg), "command": command})

    # the environments restart on resume, with a seed that differs per resumption point
    env = ProcgenVecEnv(
        cfg.game,
        num_envs=cfg.num_envs,
        distribution_mode=cfg.distribution_mode,
        num_levels=cfg.num_levels,
        start_level=cfg.start_level,
        seed=cfg.seed * 1_000_003 + start_update,
    )
    next_obs_np, _ = env.reset()
    next_obs = torch.from_numpy(next_obs_np).to(device)
    next_done = torch.zeros(cfg.num_envs, device=device)

    T, N = cfg.num_steps, cfg.num_envs
    obs_buf = torch.zeros((T, N, 64, 64, 3), dtype=torch.uint8, device=device)
    actions = torch.zeros((T, N), dtype=torch.long, device=device)
    logprobs = torch.zeros((T, N), device=device)
    rewards = torch.zeros((T, N), device=device)
    dones = torch.zeros((T, N), device=device)
    values = torch.zeros((T, N), device=device)

    writer = SummaryWriter(str(out / "tb"))
    log = CsvLog(
        out / "progress.csv",
        ["update", "frames", "mean_return", "normalized_return", "fps"],
        start_update,
    )
    bar = tqdm(
        total=cfg.num_updates * cfg.batch_size,
        initial=start_update * cfg.batch_size,
        unit="frame",
        unit_scale=True,
        disable=not progress,
        desc=f"ppo {cfg.game}",
        dynamic_ncols=True,
    )
    t0 = time.time()
    update = start_update
    try:
        for update in range(start_update, cfg.num_updates):
            # 1. rollout: num_steps steps in each of num_envs environments
            model.eval()
            for step in range(T):
                obs_buf[step] = next_obs
                dones[step] = next_done
                with torch.no_grad():
                    logits, value = model(next_obs)
                dist = Categorical(logits=logits)
                action = dist.sample()
                actions[step], logprobs[step], values[step] = action, dist.log_prob(action), value
                obs_np, reward, term, trunc, info = env.step(action.cpu().numpy())
                done = term | trunc
                if cfg.norm_reward:
                    reward = normalizer(reward, done)
                rewards[step] = torch.from_numpy(reward).to(device)
                next_obs = torch.from_numpy(obs_np).to(device)
                next_done = torch.from_numpy(done.astype(np.float32)).to(device)
                recent_returns.extend(info["episode_return"][info["episode_done"]].tolist())

            # 2. advantages (GAE); truncation at Procgen's time limit counts as an episode end
            with torch.no_grad():
                _, next_value = model(next_obs)
            advantages, returns = compute_gae(
                rewards, values, dones, next_value, next_done, cfg.gamma, cfg.gae_lambda
            )

            # 3. update_epochs passes over the rollout in num_minibatches minibatches
            model.train()
            b_obs = obs_buf.reshape(T * N, 64, 64, 3)
            b_act, b_logp = actions.reshape(-1), logprobs.reshape(-1)
            b_adv, b_ret = advantages.reshape(-1), returns.reshape(-1)
            mb_size = cfg.batch_size // cfg.num_minibatches
            for _epoch in range(cfg.update_epochs):
                perm = torch.from_numpy(rng.permutation(cfg.batch_size)).to(device)
                for start in range(0, cfg.batch_size, mb_size):
                    idx = perm[start : start + mb_size]
                    logits, new_value = model(b_obs[idx])
                    dist = Categorical(logits=logits)
                    loss = ppo_loss(
                        dist.log_prob(b_act[idx]),
                        b_logp[idx],
                        b_adv[idx],
                        new_value,
                        b_ret[idx],
                        dist.entropy(),
                        cfg.clip_coef,
                        cfg.ent_coef,
                        cfg.vf_coef,
                    )
                    optimizer.zero_grad(set_to_none=True)
                    loss.total.backward()
                    grad_norm = nn.utils.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
                    optimizer.step()

            # 4. logging
            frames = (update + 1) * cfg.batch_size
            elapsed = elapsed_before + time.time() - t0
            fps = (update + 1 - start_update) * cfg.batch_size / max(time.time() - t0, 1e-9)
            mean_ret = float(np.mean(recent_returns)) if recent_returns else float("nan")
            norm_ret = float(normalized_return(cfg.game, mean_ret)) if recent_returns else math.nan
            for name, val in {
                "charts/episodic_return": mean_ret,
                "charts/normalized_return": norm_ret,
                "charts/fps": fps,
                "losses/policy": loss.policy.item(),
                "losses/value": loss.value.item(),
                "losses/entropy": loss.entropy.item(),
                "losses/approx_kl": loss.approx_kl.item(),
                "losses/clip_frac": loss.clip_frac.item(),
                "losses/grad_norm": float(grad_norm),
            }.items():
                writer.add_scalar(name, val, frames)
            log.write([update + 1, frames, mean_ret, norm_ret, round(fps, 1)])
            bar.update(cfg.batch_size)
            bar.set_postfix(ret=f"{mean_ret:.2f}", norm=f"{norm_ret:.2f}", refresh=False)

            # 5. checkpoint: everything needed to resume, and the policy alone
            last = update + 1 == cfg.num_updates
            if (update + 1) % cfg.checkpoint_every == 0 or last:
                tensors, meta = training_state(
                    model,
                    optimizer,
                    rng,
                    update=update + 1,
                    frames=frames,
                    elapsed=elapsed,
                    normalizer=normalizer.state_dict(),
                    recent_returns=list(recent_returns),
                    config=dataclasses.asdict(cfg),
                )
                save_tensors(ckpt_path, tensors, meta)
                save_policy(
                    out, model, cfg, {"frames_trained": frames, "train_mean_return": mean_ret}
                )
    finally:
        bar.close()
        writer.close()
        log.close()
        env.close()
    frames_done = cfg.num_updates * cfg.batch_size
    wall = time.time() - t0
    return {
        "frames": frames_done,
        "wall_seconds": round(elapsed_before + wall, 1),
        "frames_per_second": round((cfg.num_updates - start_update) * cfg.batch_size / wall, 1)
        if cfg.num_updates > start_update
        else None,
        "recent_mean_return": float(np.mean(recent_returns)) if recent_returns else None,
    }


def package_demonstrator(
    run: Path, dest: Path, episodes: int = 100, seed: int = 12345, num_envs: int = 16
) -> dict:
    """Evaluate the policy in ``run`` over ``episodes`` episodes and copy it to ``dest``.

    ``dest`` receives ``policy.safetensors``, ``config.json`` and ``manifest.json`` (the exact
    training command, the frames trained and the measured return), written atomically.
    """
    from lapo.eval import evaluate
    from lapo.policies import ExpertPolicy

    run, dest = Path(run), Path(dest)
    policy = ExpertPolicy(run, seed=seed)
    result = evaluate(policy, policy.game, episodes=episodes, seed=seed, num_envs=num_envs)
    train_cfg = read_json(run / "train_config.json")
    tensors, _ = load_tensors(run / "policy.safetensors")
    save_tensors(dest / "policy.safetensors", tensors)
    config = read_json(run / "config.json")
    write_json(dest / "config.json", config)
    manifest = {
        "game": policy.game,
        "command": train_cfg.get("command"),
        "frames_trained": config.get("frames_trained"),
        "train_config": {k: v for k, v in train_cfg.items() if k != "command"},
        "eval": {k: v for k, v in result.items() if k != "policy"},
        "eval_command": f"lapo eval --policy demonstrator --env {policy.game} "
        f"--episodes {episodes} --seed {seed} --num-envs {num_envs}",
    }
    write_json(dest / "manifest.json", manifest)
    return manifest
