"""Procgen behind one vectorised, Gymnasium-style interface.

This is the only module that imports ``procgen`` / ``gym3``. Procgen's native interface is
gym3's ``act`` / ``observe`` pair, where ``observe`` after ``act`` returns the reward of that
action and ``first=True`` when the returned observation already starts a new episode (the
environment resets itself). :class:`ProcgenVecEnv` turns that into
``obs, reward, terminated, truncated, info = step(actions)`` in the style of
``gymnasium.vector``, with the same auto-reset: for an env whose episode ended, the returned
observation is the first frame of its next episode.
"""

from __future__ import annotations

import contextlib
import io
import math

import numpy as np

from lapo.errors import LapoError

GAMES: tuple[str, ...] = (
    "bigfish",
    "bossfight",
    "caveflyer",
    "chaser",
    "climber",
    "coinrun",
    "dodgeball",
    "fruitbot",
    "heist",
    "jumper",
    "leaper",
    "maze",
    "miner",
    "ninja",
    "plunder",
    "starpilot",
)

NUM_ACTIONS = 15
ACTION_NAMES: tuple[str, ...] = (
    "LEFT-DOWN",
    "LEFT",
    "LEFT-UP",
    "DOWN",
    "NOOP",
    "UP",
    "RIGHT-DOWN",
    "RIGHT",
    "RIGHT-UP",
    "D",
    "A",
    "W",
    "S",
    "Q",
    "E",
)
OBS_SHAPE = (64, 64, 3)
# Procgen ends every episode after 1000 steps; an episode that reaches it was truncated.
MAX_EPISODE_STEPS = 1000

# Mean episodic return of a uniform-random policy and of the PPO expert, easy mode
# (the constants published with LAPO; ../shared/LAPO_NOTES.md).
RANDOM_RETURN: dict[str, float] = {
    "bigfish": 0.874,
    "bossfight": 0.046,
    "caveflyer": 2.597,
    "chaser": 0.663,
    "climber": 2.224,
    "coinrun": 2.705,
    "dodgeball": 0.613,
    "fruitbot": -2.533,
    "heist": 3.076,
    "jumper": 3.411,
    "leaper": 2.511,
    "maze": 4.273,
    "miner": 1.251,
    "ninja": 2.560,
    "plunder": 4.321,
    "starpilot": 1.525,
}
EXPERT_RETURN: dict[str, float] = {
    "bigfish": 36.336,
    "bossfight": 11.634,
    "caveflyer": 9.184,
    "chaser": 9.956,
    "climber": 10.234,
    "coinrun": 9.933,
    "dodgeball": 13.487,
    "fruitbot": 29.925,
    "heist": 9.685,
    "jumper": 8.460,
    "leaper": 7.408,
    "maze": 9.969,
    "miner": 11.893,
    "ninja": 9.475,
    "plunder": 11.461,
    "starpilot": 66.986,
}

# Level ranges of the train and test splits. Procgen draws level seeds uniformly from
# [start_level, start_level + num_levels); these two halves of the int32 range never meet,
# so "train" and "test" data come from disjoint levels while each still looks unbounded.
LEVELS_PER_SPLIT = 1_000_000_000
SPLIT_START_LEVEL: dict[str, int] = {"train": 0, "test": LEVELS_PER_SPLIT}


class EnvError(LapoError, ValueError):
    """A user's environment option is wrong; the message says what to do."""


def check_game(game: str) -> str:
    """Return ``game`` if it is one of the 16 Procgen games, else raise :class:`EnvError`."""
    if game not in GAMES:
        raise EnvError(f"unknown game {game!r}: choose one of {', '.join(GAMES)}")
    return game


def normalized_return(
    game: str, ret: float | np.ndarray, expert: float | None = None, random: float | None = None
) -> float | np.ndarray:
    """Return ``(ret - random) / (expert - random)``: 0 is a uniform-random policy, 1 the expert.

    By default the notes' published constants for ``game``; pass ``expert`` (e.g. the mean
    return of the demonstrator that produced a dataset) to normalise against another policy.
    """
    check_game(game)
    lo = RANDOM_RETURN[game] if random is None else random
    hi = EXPERT_RETURN[game] if expert is None else expert
    if not math.isfinite(hi - lo) or hi == lo:
        raise ValueError(f"cannot normalise: expert return {hi} equals random return {lo}")
    return (ret - lo) / (hi - lo)


def _import_procgen():
    # gym 0.26 prints a deprecation banner to stderr on import; it is noise for our users.
    with contextlib.redirect_stderr(io.StringIO()):
        from procgen import ProcgenGym3Env
    return ProcgenGym3Env


class ProcgenVecEnv:
    """``num_envs`` Procgen environments stepped together, Gymnasium vector style.

    ``reset(seed)`` returns ``(obs, info)``; ``step(actions)`` returns
    ``(obs, reward, terminated, truncated, info)`` with ``obs`` ``(N, 64, 64, 3)`` uint8,
    ``reward`` ``(N,)`` float32 and the flags ``(N,)`` bool. ``info`` holds ``level_seed``
    ``(N,)`` (the level each returned observation belongs to), and for environments whose
    episode just ended, ``episode_return`` and ``episode_length`` (``(N,)``, NaN / 0
    elsewhere) and the boolean mask ``episode_done``.
    """

    def __init__(
        self,
        game: str,
        num_envs: int = 64,
        distribution_mode: str = "easy",
        num_levels: int = 0,
        start_level: int = 0,
        seed: int = 0,
        **options,
    ) -> None:
        check_game(game)
        if num_envs < 1:
            raise EnvError(f"num_envs must be at least 1, got {num_envs}")
        if distribution_mode not in ("easy", "hard"):
            raise EnvError(f"distribution_mode must be easy or hard, got {distribution_mode!r}")
        if num_levels < 0 or start_level < 0:
            raise EnvError("num_levels and start_level must be non-negative")
        self.game = game
        self.num_envs = num_envs
        self.distribution_mode = distribution_mode
        self.num_levels = num_levels
        self.start_level = start_level
        self.options = options
        self.single_observation_shape = OBS_SHAPE
        self.num_actions = NUM_ACTIONS
        self._env = None
        self._seed = seed
        self._ep_return = np.zeros(num_envs, np.float64)
        self._ep_length = np.zeros(num_envs, np.int64)

    def _make(self, seed: int) -> None:
        if self._env is not None:
            self._env.close()
        cls = _import_procgen()
        self._env = cls(
            num=self.num_envs,
            env_name=self.game,
            distribution_mode=self.distribution_mode,
            num_levels=self.num_levels,
            start_level=self.start_level,
            rand_seed=int(seed),
            **self.options,
        )

    def _level_seeds(self) -> np.ndarray:
        return np.array([i["level_seed"] for i in self._env.get_info()], np.int64)

    def reset(self, seed: int | None = None) -> tuple[np.ndarray, dict]:
        """Start fresh episodes in every environment; ``seed`` makes them repeatable."""
        self._make(self._seed if seed is None else seed)
        self._ep_return[:] = 0
        self._ep_length[:] = 0
        _, obs, _ = self._env.observe()
        return obs["rgb"].copy(), {"level_seed": self._level_seeds()}

    def get_state(self) -> list[bytes]:
        """Each environment's whole game state (Procgen's ``get_state``): what a planner
        (:class:`lapo.evaluation.planner.PlannerPolicy`) searches from."""
        if self._env is None:
            raise RuntimeError("call reset() before get_state()")
        return self._env.get_state()

    def step(
        self, actions: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict]:
        """Apply ``actions`` ``(N,)`` ints in [0, 15) and return the next step (see class doc)."""
        if self._env is None:
            raise RuntimeError("call reset() before step()")
        actions = np.asarray(actions)
        if actions.shape != (self.num_envs,):
            raise EnvError(f"expected {self.num_envs} actions, got shape {actions.shape}")
        self._env.act(actions.astype(np.int32))
        rew, obs, first = self._env.observe()
        rew = rew.astype(np.float32)
        self._ep_return += rew
        self._ep_length += 1
        done = first.astype(bool)
        truncated = done & (self._ep_length >= MAX_EPISODE_STEPS)
        terminated = done & ~truncated
        info = {
            "level_seed": self._level_seeds(),
            "episode_done": done,
            "episode_return": np.where(done, self._ep_return, np.nan),
            "episode_length": np.where(done, self._ep_length, 0),
        }
        self._ep_return[done] = 0
        self._ep_length[done] = 0
        return obs["rgb"].copy(), rew, terminated, truncated, info

    def close(self) -> None:
        if self._env is not None:
            self._env.close()
            self._env = None
