"""Evaluation: run a policy for whole episodes and report raw and normalised returns."""

from __future__ import annotations

import time

import numpy as np

from lapo.envs import ProcgenVecEnv, check_game, normalized_return
from lapo.evaluation.policies import Policy, attach, load_policy


def run_episodes(
    policy: Policy,
    game: str,
    episodes: int,
    seed: int = 0,
    num_envs: int = 16,
    distribution_mode: str = "easy",
    num_levels: int = 0,
    start_level: int = 0,
    max_steps: int = 1_000_000,
) -> np.ndarray:
    """Play until ``episodes`` episodes have ended; return their returns ``(episodes,)``.

    Each environment contributes a fixed quota of its first episodes, so short episodes are
    not over-represented (a plain "first N to finish" would favour them).
    """
    check_game(game)
    if episodes < 1:
        raise ValueError(f"episodes must be at least 1, got {episodes}")
    num_envs = min(num_envs, episodes)
    # each env contributes its first `quota` episodes; quotas add up to `episodes`
    quota = np.full(num_envs, episodes // num_envs)
    quota[: episodes % num_envs] += 1
    env = ProcgenVecEnv(
        game,
        num_envs=num_envs,
        distribution_mode=distribution_mode,
        num_levels=num_levels,
        start_level=start_level,
        seed=seed,
    )
    returns: list[list[float]] = [[] for _ in range(num_envs)]
    playing = np.ones(num_envs, bool)  # (N,): environments still short of their quota
    try:
        obs, _ = env.reset()
        attach(policy, env)
        for _ in range(max_steps):
            obs, _, _, _, info = env.step(act(policy, obs, playing))
            for i in np.flatnonzero(info["episode_done"]):
                if len(returns[i]) < quota[i]:
                    returns[i].append(float(info["episode_return"][i]))
            playing = np.array([len(r) < q for r, q in zip(returns, quota, strict=True)])
            if not playing.any():
                break
    finally:
        env.close()
    return np.array([x for r in returns for x in r], np.float64)


def act(policy: Policy, obs: np.ndarray, playing: np.ndarray) -> np.ndarray:
    """``policy``'s actions ``(N,)`` for ``obs`` ``(N, 64, 64, 3)``. A policy whose action for
    one environment depends on that environment's screen alone (``per_screen``) is asked only
    for the ``playing`` ones, the others get action 0 (their episodes no longer count): a
    policy that gets stuck keeps a few environments to the time limit, and the forward pass
    is most of a step's cost."""
    if playing.all() or not getattr(policy, "per_screen", False):
        return policy.act(obs)
    actions = np.zeros(len(obs), np.int64)
    actions[playing] = policy.act(obs[playing])
    return actions


def evaluate(
    policy: Policy,
    game: str,
    episodes: int = 100,
    seed: int = 0,
    num_envs: int = 16,
    demonstrator_return: float | None = None,
    **env_kwargs,
) -> dict:
    """Evaluate ``policy``; returns a JSON-able dict of mean/std return and normalised returns.

    ``normalized_return`` uses the published random/expert constants;
    ``demonstrator_normalized_return`` (when ``demonstrator_return`` is given) is normalised
    between the random policy and the demonstrator that produced a dataset.
    """
    t0 = time.time()
    rets = run_episodes(policy, game, episodes, seed=seed, num_envs=num_envs, **env_kwargs)
    mean = float(rets.mean())
    out = {
        "game": game,
        "policy": policy.describe(),
        "episodes": int(len(rets)),
        "seed": seed,
        "mean_return": mean,
        "std_return": float(rets.std()),
        "stderr_return": float(rets.std(ddof=1) / np.sqrt(len(rets))) if len(rets) > 1 else None,
        "normalized_return": float(normalized_return(game, mean)),
        # per episode, in a fixed order (by environment, then episode): another policy
        # evaluated with the same seed met the same levels in the same places
        "episode_returns": [float(r) for r in rets],
    }
    if demonstrator_return is not None:
        out["demonstrator_return"] = demonstrator_return
        out["demonstrator_normalized_return"] = float(
            normalized_return(game, mean, expert=demonstrator_return)
        )
    out["wall_seconds"] = round(time.time() - t0, 2)
    return out


def evaluate_seeds(
    policy_spec: str,
    game: str,
    seeds: int,
    episodes: int = 100,
    seed: int = 0,
    num_envs: int = 16,
    demonstrator_return: float | None = None,
    **env_kwargs,
) -> dict:
    """:func:`evaluate` with ``seeds`` seeds (``seed``, ``seed + 1``, ...), each loading the
    policy with that sampling seed; reports each seed and the mean and std over seeds."""
    runs = [
        evaluate(
            load_policy(policy_spec, game, seed=s),
            game,
            episodes=episodes,
            seed=s,
            num_envs=num_envs,
            demonstrator_return=demonstrator_return,
            **env_kwargs,
        )
        for s in range(seed, seed + seeds)
    ]
    if seeds == 1:
        return runs[0]
    out = {"game": game, "policy": runs[0]["policy"], "seeds": [r["seed"] for r in runs]}
    for key in ("mean_return", "normalized_return", "demonstrator_normalized_return"):
        if key in runs[0]:
            vals = np.array([r[key] for r in runs])
            out[key] = float(vals.mean())
            out[f"{key}_std_over_seeds"] = float(vals.std(ddof=1))
    if demonstrator_return is not None:
        out["demonstrator_return"] = demonstrator_return
    out["episodes_per_seed"] = episodes
    out["per_seed"] = runs
    return out
