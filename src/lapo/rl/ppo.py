"""One PPO (Schulman et al. 2017), shared by every loop that trains with rewards.

The maths (:func:`compute_gae`, :func:`ppo_loss`, :class:`RewardNormalizer`) and the parts a
PPO loop is made of, in the order it runs them, as in CleanRL:

- :class:`PPOEnvs`: the vectorised Procgen environments and what carries over from one
  rollout to the next (next observation, reward normaliser, recent episode returns);
- :class:`RolloutBuffer` and :func:`collect_rollout`: ``num_steps`` steps in every
  environment, then the advantages (GAE);
- :func:`ppo_epochs`: ``update_epochs`` passes over the rollout in minibatches;
- :func:`log_update`, :func:`checkpoint_due`, :func:`ppo_summary`: the bookkeeping both loops
  share, through :class:`lapo.runs.Run`.

``lapo expert train`` and ``lapo baseline ppo`` (:func:`lapo.rl.expert.train_expert`) and
``lapo decode online`` (:func:`lapo.stages.decode.online.decode_online`) are built from these.
Names follow the paper and CleanRL: ``gamma``, ``gae_lambda``, ``clip_coef``, ``ent_coef``,
``vf_coef``.

Under ``torchrun`` (:mod:`lapo.distributed`) a PPO loop is data-parallel as CleanRL's
multi-GPU PPO: ``num_envs`` is the global count, split among the ranks; each rank steps its
share of environments with its own level seed and action-sampling stream, computes its own
advantages and takes the same number of minibatches, whose gradients are averaged over the
ranks, so every optimiser step sees the global minibatch and every rank keeps the same
weights. The reward normaliser's statistics are per rank (each rank's own environments; the
checkpoint keeps rank 0's); logged returns are over every rank's recent episodes and frames
are global.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from torch import nn
from torch.distributions import Categorical

from lapo import distributed
from lapo.config import PPOConfig
from lapo.envs import ProcgenVecEnv, normalized_return
from lapo.runs import Run


def compute_gae(
    rewards: torch.Tensor,
    values: torch.Tensor,
    dones: torch.Tensor,
    next_value: torch.Tensor,
    next_done: torch.Tensor,
    gamma: float,
    gae_lambda: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation (Schulman et al. 2016).

    ``rewards``, ``values``, ``dones``: ``(T, N)``; ``dones[t]`` is 1 where ``obs[t]`` is the
    first frame of a new episode (so nothing flows from step ``t`` back into ``t-1``).
    ``next_value``, ``next_done``: ``(N,)`` for the observation after the last step.
    Returns ``(advantages, returns)``, each ``(T, N)``, with ``returns = advantages + values``.
    """
    T = rewards.shape[0]
    advantages = torch.zeros_like(rewards)
    last_gae = torch.zeros_like(next_value)
    for t in reversed(range(T)):
        if t == T - 1:
            not_done, v_next = 1.0 - next_done, next_value
        else:
            not_done, v_next = 1.0 - dones[t + 1], values[t + 1]
        delta = rewards[t] + gamma * v_next * not_done - values[t]
        last_gae = delta + gamma * gae_lambda * not_done * last_gae
        advantages[t] = last_gae
    return advantages, advantages + values


@dataclass
class PPOLoss:
    total: torch.Tensor
    policy: torch.Tensor
    value: torch.Tensor
    entropy: torch.Tensor
    approx_kl: torch.Tensor
    clip_frac: torch.Tensor


def ppo_loss(
    new_logprob: torch.Tensor,
    old_logprob: torch.Tensor,
    advantages: torch.Tensor,
    new_value: torch.Tensor,
    returns: torch.Tensor,
    entropy: torch.Tensor,
    clip_coef: float,
    ent_coef: float,
    vf_coef: float,
    norm_adv: bool = True,
) -> PPOLoss:
    """The clipped surrogate objective with value and entropy terms; all inputs ``(B,)``.

    The value loss is the plain squared error, as in Procgen's PPO baseline; ``norm_adv``
    standardises the advantages within the minibatch.
    """
    if norm_adv and advantages.numel() > 1:
        advantages = (advantages - advantages.mean()) / (advantages.std() + 1e-8)
    log_ratio = new_logprob - old_logprob
    ratio = log_ratio.exp()
    pg1 = -advantages * ratio
    pg2 = -advantages * ratio.clamp(1 - clip_coef, 1 + clip_coef)
    policy = torch.max(pg1, pg2).mean()
    value = 0.5 * (new_value - returns).pow(2).mean()
    ent = entropy.mean()
    with torch.no_grad():
        # k3 estimator of KL(old || new) (Schulman 2020, "Approximating KL divergence")
        approx_kl = ((ratio - 1) - log_ratio).mean()
        clip_frac = ((ratio - 1.0).abs() > clip_coef).float().mean()
    total = policy - ent_coef * ent + vf_coef * value
    return PPOLoss(total, policy, value, ent, approx_kl, clip_frac)


class RewardNormalizer:
    """Scale rewards by the running std of the discounted return, then clip.

    As gym's ``NormalizeReward`` / baselines' ``VecNormalize`` used by Procgen's PPO:
    ``ret = ret * gamma + r`` per env (reset at episode ends), ``r / sqrt(var(ret) + eps)``.
    """

    def __init__(self, num_envs: int, gamma: float, clip: float = 10.0, eps: float = 1e-8) -> None:
        self.gamma = gamma
        self.clip = clip
        self.eps = eps
        self.ret = np.zeros(num_envs, np.float64)
        self.mean = 0.0
        self.var = 1.0
        self.count = 1e-4

    def _update(self, x: np.ndarray) -> None:
        # parallel-variance update (Chan et al. 1979)
        b_mean, b_var, b_count = float(x.mean()), float(x.var()), x.size
        delta = b_mean - self.mean
        tot = self.count + b_count
        m2 = self.var * self.count + b_var * b_count + delta**2 * self.count * b_count / tot
        self.mean = self.mean + delta * b_count / tot
        self.var = m2 / tot
        self.count = tot

    def __call__(self, reward: np.ndarray, done: np.ndarray) -> np.ndarray:
        """``reward``, ``done``: ``(N,)``; returns the scaled, clipped ``(N,)`` float32 rewards."""
        self.ret = self.ret * self.gamma + reward
        self._update(self.ret)
        scaled = reward / np.sqrt(self.var + self.eps)
        self.ret[done] = 0.0
        return np.clip(scaled, -self.clip, self.clip).astype(np.float32)

    def state_dict(self) -> dict:
        return {"ret": self.ret.tolist(), "mean": self.mean, "var": self.var, "count": self.count}

    def load_state_dict(self, state: dict) -> None:
        ret = np.asarray(state["ret"], np.float64)
        if ret.shape == self.ret.shape:  # else another env count per process: start at 0
            self.ret = ret
        self.mean, self.var, self.count = state["mean"], state["var"], state["count"]


class PPOAgent(Protocol):
    """What :func:`collect_rollout` needs of a network: its forward pass split in two."""

    def features(self, obs: torch.Tensor) -> torch.Tensor:
        """uint8 observations ``(B, 64, 64, 3)`` -> features ``(B, F)``."""
        ...

    def heads(self, feats: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Features ``(B, F)`` -> ``(logits (B, num_actions), value (B,))``."""
        ...


class PPOEnvs:
    """The ``num_envs`` Procgen environments a PPO run acts in, and what carries over from
    one rollout to the next: the next observation ``next_obs`` ``(N, 64, 64, 3)``, whether it
    starts an episode ``next_done`` ``(N,)``, the reward normaliser and the last 100 episode
    returns (the last two are saved in checkpoints: :meth:`state_dict`).

    A run resumed at update ``update`` passes its checkpoint's meta as ``state`` (normaliser
    and returns); the environments restart, with a seed that differs per resumption point
    (``seed * 1_000_003 + update``). A context manager: leaving it closes the environments.

    Under torchrun this rank's share of the ``num_envs`` (``N`` is then the share), with its
    own seed (:func:`lapo.distributed.rank_seed`) and its own action-sampling stream
    ``generator`` (None in one process: torch's global one).
    """

    def __init__(
        self,
        game: str,
        cfg: PPOConfig,
        device: torch.device,
        update: int = 0,
        state: dict | None = None,
    ) -> None:
        self.game, self.device, self.norm_reward = game, device, cfg.norm_reward
        self.num_envs = n = distributed.split(cfg.num_envs, "--num-envs")  # this rank's
        self.normalizer = RewardNormalizer(n, cfg.gamma)
        self.recent_returns: deque[float] = deque(maxlen=100)
        if state:
            d = distributed.current()
            self.normalizer.load_state_dict(state["normalizer"])
            self.recent_returns.extend(state["recent_returns"][d.rank :: d.world])
        seed = cfg.seed * 1_000_003 + update
        self.generator = distributed.rank_generator(seed, device)
        self.env = ProcgenVecEnv(
            game,
            num_envs=n,
            distribution_mode=cfg.distribution_mode,
            num_levels=cfg.num_levels,
            start_level=cfg.start_level,
            seed=distributed.rank_seed(seed),
        )
        self.next_obs = torch.from_numpy(self.env.reset()[0]).to(device)
        self.next_done = torch.zeros(n, device=device)

    def step(self, action: torch.Tensor) -> torch.Tensor:
        """Take ``action`` ``(N,)``; return the (normalised) rewards ``(N,)`` and move
        ``next_obs``/``next_done`` on. Truncation at Procgen's time limit ends an episode."""
        obs, reward, term, trunc, info = self.env.step(action.cpu().numpy())
        done = term | trunc
        if self.norm_reward:
            reward = self.normalizer(reward, done)
        self.next_obs = torch.from_numpy(obs).to(self.device)
        self.next_done = torch.from_numpy(done.astype(np.float32)).to(self.device)
        self.recent_returns.extend(info["episode_return"][info["episode_done"]].tolist())
        return torch.from_numpy(reward).to(self.device)

    def sample(self, dist: Categorical) -> torch.Tensor:
        """Actions ``(N,)`` drawn from ``dist`` with :attr:`generator` (as ``dist.sample()``
        does with torch's global one)."""
        return torch.multinomial(dist.probs, 1, True, generator=self.generator)[:, 0]

    def mean_return(self) -> float:
        """Mean of the last 100 episode returns (of every rank's, under torchrun: called by
        every rank alike); NaN before the first episode ends."""
        return distributed.global_mean(self.recent_returns)

    def normalized_return(self, expert: float | None = None) -> float:
        """:meth:`mean_return` normalised between random and ``expert`` (the published
        constants when None); NaN before the first episode ends."""
        mean = self.mean_return()
        if math.isnan(mean):
            return math.nan
        return float(normalized_return(self.game, mean, expert=expert))

    def state_dict(self) -> dict:
        """What a checkpoint keeps: the reward normaliser (rank 0's under torchrun) and the
        recent returns (every rank's, shared out among the ranks on resume; called by every
        rank alike)."""
        mine = torch.tensor(list(self.recent_returns), dtype=torch.float64)
        return {
            "normalizer": self.normalizer.state_dict(),
            "recent_returns": distributed.gather_rows(mine).tolist(),
        }

    def __enter__(self) -> PPOEnvs:
        return self

    def __exit__(self, *exc: object) -> None:
        self.env.close()


@dataclass
class PPOBatch:
    """A rollout flattened to ``B = T * N`` samples: what :func:`ppo_epochs` trains on.

    ``inputs``: what the network being trained reads, uint8 observations ``(B, 64, 64, 3)``
    or cached features ``(B, F)``; ``actions``, ``logprobs``, ``advantages``, ``returns``:
    ``(B,)``.
    """

    inputs: torch.Tensor
    actions: torch.Tensor
    logprobs: torch.Tensor
    advantages: torch.Tensor
    returns: torch.Tensor


class RolloutBuffer:
    """One rollout of ``T`` steps in ``N`` environments, on the training device.

    ``obs`` uint8 ``(T, N, 64, 64, 3)``; ``actions``, ``logprobs``, ``rewards``, ``dones``,
    ``values``: ``(T, N)``, with ``dones[t]`` 1 where ``obs[t]`` starts a new episode;
    ``feats`` ``(T, N, feat_dim)``: the policy's features of each frame, kept when
    ``feat_dim > 0`` (a frozen trunk's, computed once and reused by every epoch), else None.
    """

    def __init__(self, T: int, N: int, device: torch.device, feat_dim: int = 0) -> None:
        self.T, self.N = T, N
        self.obs = torch.zeros((T, N, 64, 64, 3), dtype=torch.uint8, device=device)
        self.feats = torch.zeros((T, N, feat_dim), device=device) if feat_dim else None
        self.actions = torch.zeros((T, N), dtype=torch.long, device=device)
        self.logprobs = torch.zeros((T, N), device=device)
        self.rewards = torch.zeros((T, N), device=device)
        self.dones = torch.zeros((T, N), device=device)
        self.values = torch.zeros((T, N), device=device)

    def batch(self, advantages: torch.Tensor, returns: torch.Tensor) -> PPOBatch:
        """The rollout with its ``advantages`` and ``returns`` ``(T, N)``, flattened; the
        inputs are the cached features when there are any, else the observations."""
        inputs = self.obs if self.feats is None else self.feats
        return PPOBatch(
            inputs.reshape(self.T * self.N, *inputs.shape[2:]),
            self.actions.reshape(-1),
            self.logprobs.reshape(-1),
            advantages.reshape(-1),
            returns.reshape(-1),
        )


def collect_rollout(
    agent: PPOAgent, envs: PPOEnvs, buf: RolloutBuffer, cfg: PPOConfig
) -> tuple[torch.Tensor, torch.Tensor]:
    """Fill ``buf`` with ``T`` steps of ``agent`` sampling its actions in ``envs``; return
    ``(advantages, returns)`` ``(T, N)`` by GAE, bootstrapped from the value of the
    observation after the last step."""
    for step in range(buf.T):
        buf.obs[step] = envs.next_obs
        buf.dones[step] = envs.next_done
        with torch.no_grad():
            feats = agent.features(envs.next_obs)
            logits, value = agent.heads(feats)
        dist = Categorical(logits=logits.float())
        action = envs.sample(dist)
        if buf.feats is not None:
            buf.feats[step] = feats
        buf.actions[step], buf.logprobs[step], buf.values[step] = (
            action,
            dist.log_prob(action),
            value,
        )
        buf.rewards[step] = envs.step(action)
    with torch.no_grad():
        _, next_value = agent.heads(agent.features(envs.next_obs))
    return compute_gae(
        buf.rewards, buf.values, buf.dones, next_value, envs.next_done, cfg.gamma, cfg.gae_lambda
    )


def ppo_epochs(
    evaluate: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]],
    optimizer: torch.optim.Optimizer,
    batch: PPOBatch,
    cfg: PPOConfig,
    rng: np.random.Generator,
) -> tuple[PPOLoss, torch.Tensor]:
    """``update_epochs`` passes over ``batch`` in ``num_minibatches`` shuffled minibatches,
    one Adam step on :func:`ppo_loss` each, gradients clipped to ``max_grad_norm`` over every
    parameter ``optimizer`` holds. Under torchrun ``batch`` is this rank's rollout and the
    gradients are averaged over the ranks (the same minibatch count on each).

    ``evaluate`` maps ``batch.inputs[idx]`` to ``(logits (b, num_actions), value (b,))``.
    Returns the last minibatch's :class:`PPOLoss` and gradient norm.
    """
    params = [p for g in optimizer.param_groups for p in g["params"]]
    B = batch.actions.shape[0]
    mb_size = B // cfg.num_minibatches
    for _epoch in range(cfg.update_epochs):
        perm = torch.from_numpy(rng.permutation(B)).to(batch.actions.device)
        for start in range(0, B, mb_size):
            idx = perm[start : start + mb_size]
            logits, value = evaluate(batch.inputs[idx])
            dist = Categorical(logits=logits)
            loss = ppo_loss(
                dist.log_prob(batch.actions[idx]),
                batch.logprobs[idx],
                batch.advantages[idx],
                value,
                batch.returns[idx],
                dist.entropy(),
                cfg.clip_coef,
                cfg.ent_coef,
                cfg.vf_coef,
            )
            optimizer.zero_grad(set_to_none=True)
            loss.total.backward()
            distributed.average_gradients(params)  # the global minibatch's (torchrun)
            grad_norm = nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
            optimizer.step()
    return loss, grad_norm


# metrics.csv of a PPO run; a loop may add its own columns after these
PPO_COLUMNS = ["update", "frames", "mean_return", "normalized_return", "fps"]


def ppo_run(
    out: Path,
    kind: str,
    cfg: PPOConfig,
    desc: str,
    progress: bool = True,
    columns: list[str] = PPO_COLUMNS,
    compare: dict | None = None,
) -> Run:
    """The :class:`Run` of a PPO loop: counted in updates, shown in (global) frames,
    resumable with a new budget (the config's ``resumable()`` fields); under torchrun the
    ranks split ``num_envs``."""
    return Run(
        out,
        kind,
        cfg,
        columns=columns,
        total=cfg.num_updates * cfg.batch_size,
        unit="frame",
        per_step=cfg.batch_size,
        desc=desc,
        resumable=cfg.resumable(),
        compare=compare,
        progress=progress,
        threads=cfg.threads,
        device=cfg.device,
        shared={"--num-envs": cfg.num_envs},
    )


def log_update(
    run: Run,
    update: int,
    start: int,
    envs: PPOEnvs,
    loss: PPOLoss,
    grad_norm: torch.Tensor,
    scalars: dict[str, float] | None = None,
    row: dict[str, float] | None = None,
) -> None:
    """TensorBoard scalars, a ``metrics.csv`` row and the progress bar after update
    ``update`` (1-based) of a run resumed at ``start``; ``scalars`` and ``row`` are the
    loop's own. Called by every rank alike: returns and losses are reduced over the ranks."""
    frames = update * run.per_step
    fps = (update - start) * run.per_step / max(run.wall_seconds(), 1e-9)
    mean_ret, norm_ret = envs.mean_return(), envs.normalized_return()
    names = ("policy", "value", "entropy", "approx_kl", "clip_frac")
    # averaged over the ranks' last minibatches
    losses = run.floats({f"losses/{n}": getattr(loss, n).detach() for n in names})
    run.scalars(
        frames,
        {
            "charts/episodic_return": mean_ret,
            "charts/normalized_return": norm_ret,
            "charts/fps": fps,
            **losses,
            "losses/grad_norm": float(grad_norm),
            **(scalars or {}),
        },
    )
    base = {"update": update, "frames": frames, "mean_return": mean_ret}
    run.row({**base, "normalized_return": norm_ret, "fps": round(fps, 1), **(row or {})})
    run.advance(run.per_step, ret=f"{mean_ret:.2f}", norm=f"{norm_ret:.2f}")


def checkpoint_due(update: int, cfg: PPOConfig) -> bool:
    """Whether a checkpoint is written after update ``update`` (1-based)."""
    return update % cfg.checkpoint_every == 0 or update == cfg.num_updates


def ppo_summary(run: Run, cfg: PPOConfig, envs: PPOEnvs, **extra: object) -> dict:
    """Frames trained, wall time (across resumes), the loop's ``extra`` figures and the
    recent mean return (None before the first episode ends)."""
    ret = envs.mean_return()
    return {
        "frames": cfg.num_updates * cfg.batch_size,
        "wall_seconds": round(run.meta.get("elapsed", 0.0) + run.wall_seconds(), 1),
        **extra,
        "recent_mean_return": None if math.isnan(ret) else ret,
    }


def ppo_checkpoint(
    run: Run,
    update: int,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    rng: np.random.Generator,
    envs: PPOEnvs,
    **meta: object,
) -> None:
    """Everything needed to resume after update ``update``: :meth:`Run.checkpoint` plus the
    frames, the wall time across resumes, the reward normaliser and the recent returns."""
    run.checkpoint(
        update,
        model,
        optimizer,
        rng,
        counter="update",
        frames=update * run.per_step,
        elapsed=run.meta.get("elapsed", 0.0) + run.wall_seconds(),
        **envs.state_dict(),
        **meta,
    )
