"""The parts of PPO (Schulman et al. 2017) that are maths, kept apart from any training loop.

Names follow the paper and CleanRL: ``gamma``, ``gae_lambda``, ``clip_coef``, ``ent_coef``,
``vf_coef``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


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
        self.ret = np.asarray(state["ret"], np.float64)
        self.mean, self.var, self.count = state["mean"], state["var"], state["count"]
