"""Environments: Procgen behind a vectorised Gymnasium-style interface."""

from lapo.envs.procgen import (
    ACTION_NAMES,
    EXPERT_RETURN,
    GAMES,
    NUM_ACTIONS,
    OBS_SHAPE,
    RANDOM_RETURN,
    SPLIT_START_LEVEL,
    EnvError,
    ProcgenVecEnv,
    check_game,
    normalized_return,
)

__all__ = [
    "ACTION_NAMES",
    "EXPERT_RETURN",
    "GAMES",
    "NUM_ACTIONS",
    "OBS_SHAPE",
    "RANDOM_RETURN",
    "SPLIT_START_LEVEL",
    "EnvError",
    "ProcgenVecEnv",
    "check_game",
    "normalized_return",
]
