"""Online decoding: PPO with rewards on top of the latent policy (LAPO's stage 3).

The published scheme (../shared/LAPO_NOTES.md), as one loop that reads top to bottom:

1. rollout: the :class:`lapo.models.policy.OnlineAgent` acts; its logits are the mean of the
   frozen latent path's decoded logits and a zero-initialised RL head's;
2. decoder data: the frozen IDM labels the agent's own frame triples
   ``o[t-1], o[t], o[t+1]`` with a latent; (latent, action taken) pairs are kept;
3. PPO on the RL path and value head, each parameter group under its own learning-rate
   warm-up (:func:`group_lr`); the CNN trunk is frozen, so its features are computed once
   per frame during the rollout and reused by every epoch;
4. the decoder is re-initialised and re-fit on all pairs so far, after every update while
   under ``decoder_fit_every_until`` frames and every ``decoder_fit_every`` updates after,
   only between ``decoder_fit_start`` and ``decoder_fit_end`` frames.

A run folder holds ``policy.safetensors`` + ``config.json`` (kind ``online-agent``: what
``lapo eval`` reads), ``checkpoint.safetensors`` and ``decoder_pairs.safetensors`` (resume),
``progress.csv`` (the learning curve) and TensorBoard files in ``tb/``.
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

from lapo.bc import load_stage2
from lapo.checkpoint import (
    CheckpointError,
    load_tensors,
    refuse_changed_settings,
    restore_training_state,
    save_tensors,
    training_state,
    write_json,
)
from lapo.config import ONLINE_RESUMABLE, OnlineConfig
from lapo.decode import fit_decoder
from lapo.envs import ProcgenVecEnv, check_game, normalized_return
from lapo.lam import frames_to_float
from lapo.models.policy import OnlineAgent
from lapo.ppo import RewardNormalizer, compute_gae, ppo_loss
from lapo.runs import CsvLog, start_run

# parameter group -> (frames where its rate leaves 0, frames where it reaches its peak,
# peak as a fraction of the base rate); ../shared/LAPO_NOTES.md
GROUP_SCHEDULES: dict[str, tuple[int, int, float]] = {
    "value_head": (25_000, 50_000, 1 / 4),
    "rl_head": (35_000, 50_000, 1 / 4),
    "rl_fc": (50_000, 200_000, 1 / 10),
}


def group_lr(group: str, frames: int, cfg: OnlineConfig) -> float:
    """Learning rate of ``group`` after ``frames`` env frames: 0, a linear ramp to its peak,
    all times a linear decay to 0 at ``lr_decay_frames``."""
    begin, end, peak = GROUP_SCHEDULES[group]
    ramp = min(max((frames - begin) / (end - begin), 0.0), 1.0)
    decay = max(0.0, 1.0 - frames / cfg.lr_decay_frames)
    return cfg.learning_rate * peak * ramp * decay


def make_optimizer(agent: OnlineAgent) -> torch.optim.Adam:
    """Adam with one parameter group per schedule; the trunk, latent path and decoder are
    not in it (frozen, or fit by :func:`fit_decoder`)."""
    groups = [
        {"params": list(getattr(agent, name).parameters()), "name": name, "lr": 0.0}
        for name in GROUP_SCHEDULES
    ]
    return torch.optim.Adam(groups, lr=0.0, eps=1e-5)


def decoder_fit_due(update: int, frames: int, cfg: OnlineConfig) -> bool:
    """Whether the decoder is re-fit after update ``update`` (1-based), at ``frames`` frames."""
    if not cfg.decoder_fit_start <= frames <= cfg.decoder_fit_end:
        return False
    return frames <= cfg.decoder_fit_every_until or update % cfg.decoder_fit_every == 0


@torch.no_grad()
def rollout_pairs(
    idm: nn.Module, obs: torch.Tensor, actions: torch.Tensor, dones: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(IDM latent, action taken) for every triple ``o[t-1], o[t], o[t+1]`` of a rollout that
    lies inside one episode.

    ``obs`` uint8 ``(T, N, 64, 64, 3)``, ``actions`` ``(T, N)``, ``dones`` ``(T, N)`` (1 where
    ``obs[t]`` starts a new episode). Returns ``z (M, A)`` float16 and ``a (M,)`` int64, on CPU.
    """
    if obs.shape[0] < 3:
        raise ValueError(f"a rollout needs at least 3 steps for frame triples, got {obs.shape[0]}")
    # window centred at t (1 <= t <= T-2) is valid when neither o[t] nor o[t+1] starts an episode
    valid = (dones[1:-1] == 0) & (dones[2:] == 0)  # (T-2, N)
    t_idx, n_idx = valid.nonzero(as_tuple=True)
    t_idx = t_idx + 1
    zs = []
    for i in range(0, len(t_idx), 1024):
        t, n = t_idx[i : i + 1024], n_idx[i : i + 1024]
        windows = torch.stack([obs[t - 1, n], obs[t, n], obs[t + 1, n]], 1)  # (b, 3, 64, 64, 3)
        zs.append(idm(frames_to_float(windows))[0].to(torch.float16).cpu())
    z = torch.cat(zs) if zs else torch.zeros(0, idm.latent_dim, dtype=torch.float16)
    return z, actions[t_idx, n_idx].cpu()


def ppo_update(
    agent: OnlineAgent,
    optimizer: torch.optim.Optimizer,
    feats: torch.Tensor,
    actions: torch.Tensor,
    logprobs: torch.Tensor,
    advantages: torch.Tensor,
    returns: torch.Tensor,
    frames: int,
    cfg: OnlineConfig,
    rng: np.random.Generator,
):
    """``update_epochs`` PPO epochs over one rollout of cached trunk features ``(B, F)``.

    Each parameter group's rate is set from :func:`group_lr` at ``frames``. Returns the last
    minibatch's :class:`lapo.ppo.PPOLoss` and gradient norm.
    """
    for g in optimizer.param_groups:
        g["lr"] = group_lr(g["name"], frames, cfg)
    params = [p for g in optimizer.param_groups for p in g["params"]]
    B = feats.shape[0]
    mb = B // cfg.num_minibatches
    for _epoch in range(cfg.update_epochs):
        perm = torch.from_numpy(rng.permutation(B)).to(feats.device)
        for start in range(0, B, mb):
            idx = perm[start : start + mb]
            logits, value = agent.heads(feats[idx])
            dist = Categorical(logits=logits)
            loss = ppo_loss(
                dist.log_prob(actions[idx]),
                logprobs[idx],
                advantages[idx],
                value,
                returns[idx],
                dist.entropy(),
                cfg.clip_coef,
                cfg.ent_coef,
                cfg.vf_coef,
            )
            optimizer.zero_grad(set_to_none=True)
            loss.total.backward()
            grad_norm = nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
            optimizer.step()
    return loss, grad_norm


def decode_online(
    cfg: OnlineConfig,
    policy_run: Path,
    game: str,
    out: Path,
    progress: bool = True,
    command: str | None = None,
) -> dict:
    """Online decoding of stage-2 run ``policy_run`` in ``game`` into ``out`` (resumable)."""
    from torch.utils.tensorboard import SummaryWriter
    from tqdm import tqdm

    check_game(game)
    policy, idm, stage2 = load_stage2(policy_run)
    if stage2.get("game") and stage2["game"] != game:
        raise CheckpointError(
            f"stage-2 run {policy_run} was trained on {stage2['game']}, not {game}: "
            f"use --env {stage2['game']}"
        )
    demo_return = stage2.get("demonstrator_return")
    out, device = start_run(out, cfg.threads, cfg.device)
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    agent = OnlineAgent.from_latent_policy(policy).to(device, memory_format=torch.channels_last)
    idm = idm.to(device).eval()
    optimizer = make_optimizer(agent)
    normalizer = RewardNormalizer(cfg.num_envs, cfg.gamma)
    start_update, elapsed_before, fits = 0, 0.0, 0
    recent_returns: deque[float] = deque(maxlen=100)
    pair_z: list[torch.Tensor] = []
    pair_a: list[torch.Tensor] = []

    ckpt_path = out / "checkpoint.safetensors"
    pairs_path = out / "decoder_pairs.safetensors"
    if ckpt_path.exists():
        tensors, meta = load_tensors(ckpt_path)
        refuse_changed_settings(
            ckpt_path,
            {**meta["config"], "policy": meta["policy_run"], "env": meta["game"]},
            {**dataclasses.asdict(cfg), "policy": str(policy_run), "env": game},
            ONLINE_RESUMABLE,
        )
        restore_training_state(tensors, meta, agent, optimizer, rng)
        normalizer.load_state_dict(meta["normalizer"])
        start_update, elapsed_before, fits = meta["update"], meta["elapsed"], meta["fits"]
        recent_returns.extend(meta["recent_returns"])
        if meta["pairs"]:
            # pairs written after this checkpoint (a kill between the two files) are dropped
            pt, _ = load_tensors(pairs_path)
            pair_z, pair_a = [pt["z"][: meta["pairs"]]], [pt["a"][: meta["pairs"]]]
    config = {
        "kind": "online-agent",
        "network": {
            "class": "online-agent",
            "latent_dim": policy.latent_dim,
            "width": stage2["network"]["width"],
        },
        "game": game,
        "demonstrator_return": demo_return,
        "data_policy": stage2.get("data_policy"),
        "policy_run": str(policy_run),
        "online": dataclasses.asdict(cfg),
        "command": command,
    }

    env = ProcgenVecEnv(
        game,
        num_envs=cfg.num_envs,
        distribution_mode=cfg.distribution_mode,
        num_levels=cfg.num_levels,
        start_level=cfg.start_level,
        seed=cfg.seed * 1_000_003 + start_update,
    )
    next_obs = torch.from_numpy(env.reset()[0]).to(device)
    next_done = torch.zeros(cfg.num_envs, device=device)
    T, N = cfg.num_steps, cfg.num_envs
    feat_dim = agent.rl_fc.in_features
    obs_buf = torch.zeros((T, N, 64, 64, 3), dtype=torch.uint8, device=device)
    feats = torch.zeros((T, N, feat_dim), device=device)
    actions = torch.zeros((T, N), dtype=torch.long, device=device)
    logprobs = torch.zeros((T, N), device=device)
    rewards = torch.zeros((T, N), device=device)
    dones = torch.zeros((T, N), device=device)
    values = torch.zeros((T, N), device=device)

    writer = SummaryWriter(str(out / "tb"))
    log = CsvLog(
        out / "progress.csv",
        [
            "update",
            "frames",
            "mean_return",
            "normalized_return",
            "demonstrator_normalized_return",
            "decoder_pairs",
            "decoder_fits",
            "fps",
        ],
        start_update,
    )
    bar = tqdm(
        total=cfg.num_updates * cfg.batch_size,
        initial=start_update * cfg.batch_size,
        unit="frame",
        unit_scale=True,
        disable=not progress,
        desc=f"online {game}",
        dynamic_ncols=True,
    )
    t0 = time.time()
    try:
        for update in range(start_update, cfg.num_updates):
            frames_before = update * cfg.batch_size
            # 1. rollout with the averaged logits; trunk features are cached for PPO
            agent.eval()
            for step in range(T):
                obs_buf[step] = next_obs
                dones[step] = next_done
                with torch.no_grad():
                    f = agent.trunk_features(next_obs)
                    logits, value = agent.heads(f)
                dist = Categorical(logits=logits.float())
                action = dist.sample()
                feats[step] = f
                actions[step], logprobs[step], values[step] = action, dist.log_prob(action), value
                obs_np, reward, term, trunc, info = env.step(action.cpu().numpy())
                done = term | trunc
                if cfg.norm_reward:
                    reward = normalizer(reward, done)
                rewards[step] = torch.from_numpy(reward).to(device)
                next_obs = torch.from_numpy(obs_np).to(device)
                next_done = torch.from_numpy(done.astype(np.float32)).to(device)
                recent_returns.extend(info["episode_return"][info["episode_done"]].tolist())

            # 2. decoder data: the IDM's latents of the agent's own frame triples
            if frames_before < cfg.decoder_fit_end:
                z, a = rollout_pairs(idm, obs_buf, actions, dones)
                pair_z.append(z)
                pair_a.append(a)

            # 3. PPO on the RL path and value head, over cached features
            with torch.no_grad():
                _, next_value = agent.heads(agent.trunk_features(next_obs))
            advantages, returns = compute_gae(
                rewards, values, dones, next_value, next_done, cfg.gamma, cfg.gae_lambda
            )
            agent.train()
            loss, grad_norm = ppo_update(
                agent,
                optimizer,
                feats.reshape(T * N, feat_dim),
                actions.reshape(-1),
                logprobs.reshape(-1),
                advantages.reshape(-1),
                returns.reshape(-1),
                frames_before,
                cfg,
                rng,
            )

            # 4. re-fit the decoder on every pair so far
            frames = (update + 1) * cfg.batch_size
            if decoder_fit_due(update + 1, frames, cfg) and pair_z:
                pair_z, pair_a = [torch.cat(pair_z)], [torch.cat(pair_a)]
                n = len(pair_a[0])
                steps = max(1, cfg.decoder_epochs * math.ceil(n / cfg.decoder_batch_size))
                decoder = fit_decoder(
                    pair_z[0],
                    pair_a[0],
                    steps,
                    cfg.decoder_batch_size,
                    cfg.decoder_learning_rate,
                    label_smoothing=cfg.label_smoothing,
                    seed=cfg.seed * 1_000 + fits,
                )
                agent.decoder.load_state_dict(decoder.state_dict())
                fits += 1

            # 5. logging
            elapsed = elapsed_before + time.time() - t0
            fps = (update + 1 - start_update) * cfg.batch_size / max(time.time() - t0, 1e-9)
            mean_ret = float(np.mean(recent_returns)) if recent_returns else math.nan
            norm_ret = float(normalized_return(game, mean_ret)) if recent_returns else math.nan
            demo_norm = (
                float(normalized_return(game, mean_ret, expert=demo_return))
                if recent_returns and demo_return
                else math.nan
            )
            n_pairs = sum(len(a) for a in pair_a)
            for name, val in {
                "charts/episodic_return": mean_ret,
                "charts/normalized_return": norm_ret,
                "charts/demonstrator_normalized_return": demo_norm,
                "charts/fps": fps,
                "decoder/pairs": n_pairs,
                "decoder/fits": fits,
                "losses/policy": loss.policy.item(),
                "losses/value": loss.value.item(),
                "losses/entropy": loss.entropy.item(),
                "losses/approx_kl": loss.approx_kl.item(),
                "losses/grad_norm": float(grad_norm),
                **{f"lr/{g['name']}": g["lr"] for g in optimizer.param_groups},
            }.items():
                writer.add_scalar(name, val, frames)
            log.write(
                [update + 1, frames, mean_ret, norm_ret, demo_norm, n_pairs, fits, round(fps, 1)]
            )
            bar.update(cfg.batch_size)
            bar.set_postfix(ret=f"{mean_ret:.2f}", norm=f"{norm_ret:.2f}", refresh=False)

            # 6. checkpoint
            last = update + 1 == cfg.num_updates
            if (update + 1) % cfg.checkpoint_every == 0 or last:
                if pair_z:
                    pair_z, pair_a = [torch.cat(pair_z)], [torch.cat(pair_a)]
                    save_tensors(pairs_path, {"z": pair_z[0], "a": pair_a[0]})
                tensors, meta = training_state(
                    agent,
                    optimizer,
                    rng,
                    update=update + 1,
                    frames=frames,
                    elapsed=elapsed,
                    fits=fits,
                    pairs=sum(len(a) for a in pair_a),
                    normalizer=normalizer.state_dict(),
                    recent_returns=list(recent_returns),
                    config=dataclasses.asdict(cfg),
                    policy_run=str(policy_run),
                    game=game,
                )
                save_tensors(ckpt_path, tensors, meta)
                save_tensors(out / "policy.safetensors", agent.state_dict())
                write_json(out / "config.json", {**config, "frames_trained": frames})
    finally:
        bar.close()
        writer.close()
        log.close()
        env.close()
    wall = time.time() - t0
    return {
        "out": str(out),
        "frames": cfg.num_updates * cfg.batch_size,
        "wall_seconds": round(elapsed_before + wall, 1),
        "decoder_fits": fits,
        "recent_mean_return": float(np.mean(recent_returns)) if recent_returns else None,
    }
