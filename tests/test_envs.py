import contextlib
import io

import numpy as np
import pytest

from lapo.envs import (
    EXPERT_RETURN,
    GAMES,
    RANDOM_RETURN,
    EnvError,
    ProcgenVecEnv,
    normalized_return,
)
from lapo.evaluation.episodes import run_episodes
from lapo.evaluation.policies import RandomPolicy


def raw_env(game, num, seed):
    with contextlib.redirect_stderr(io.StringIO()):
        from procgen import ProcgenGym3Env
    return ProcgenGym3Env(
        num=num,
        env_name=game,
        distribution_mode="easy",
        num_levels=0,
        start_level=0,
        rand_seed=seed,
    )


def test_sixteen_games_with_constants():
    assert len(GAMES) == 16
    assert set(RANDOM_RETURN) == set(GAMES) == set(EXPERT_RETURN)
    assert all(EXPERT_RETURN[g] > RANDOM_RETURN[g] for g in GAMES)


def test_unknown_game_lists_valid_names():
    with pytest.raises(EnvError) as e:
        ProcgenVecEnv("pong")
    msg = str(e.value)
    assert "'pong'" in msg
    for g in GAMES:
        assert g in msg


def test_normalized_return_by_hand():
    # coinrun: random 2.705, expert 9.933
    assert normalized_return("coinrun", 2.705) == pytest.approx(0.0)
    assert normalized_return("coinrun", 9.933) == pytest.approx(1.0)
    assert normalized_return("coinrun", 6.319) == pytest.approx(0.5)
    # against a demonstrator instead of the published expert
    assert normalized_return("coinrun", 5.0, expert=7.295) == pytest.approx(0.5)


def test_step_matches_raw_procgen_and_episode_statistics():
    n, seed, steps = 4, 7, 400
    env = ProcgenVecEnv("coinrun", num_envs=n, seed=seed)
    raw = raw_env("coinrun", n, seed)
    obs, info = env.reset()
    _, raw_obs, _ = raw.observe()
    assert obs.shape == (n, 64, 64, 3) and obs.dtype == np.uint8
    assert info["level_seed"].shape == (n,)
    np.testing.assert_array_equal(obs, raw_obs["rgb"])

    rng = np.random.default_rng(0)
    running = np.zeros(n)
    lengths = np.zeros(n, int)
    episodes = 0
    for _ in range(steps):
        a = rng.integers(0, 15, n)
        obs, rew, term, trunc, info = env.step(a)
        raw.act(a.astype(np.int32))
        raw_rew, raw_obs, raw_first = raw.observe()
        np.testing.assert_array_equal(obs, raw_obs["rgb"])
        np.testing.assert_allclose(rew, raw_rew)
        np.testing.assert_array_equal(term | trunc, raw_first)
        assert rew.dtype == np.float32 and term.dtype == bool
        running += raw_rew
        lengths += 1
        done = raw_first.astype(bool)
        np.testing.assert_array_equal(info["episode_done"], done)
        np.testing.assert_allclose(info["episode_return"][done], running[done])
        np.testing.assert_array_equal(info["episode_length"][done], lengths[done])
        assert np.isnan(info["episode_return"][~done]).all()
        episodes += done.sum()
        running[done] = 0
        lengths[done] = 0
    assert episodes > 0, "random coinrun play should end some episodes in 400 steps"


def test_reset_seed_is_repeatable_and_levels_follow_start_level():
    a = ProcgenVecEnv("maze", num_envs=3, num_levels=10, start_level=500)
    o1, i1 = a.reset(seed=3)
    o2, i2 = a.reset(seed=3)
    np.testing.assert_array_equal(o1, o2)
    assert ((i1["level_seed"] >= 500) & (i1["level_seed"] < 510)).all()


def test_bad_actions_shape():
    env = ProcgenVecEnv("coinrun", num_envs=2)
    env.reset()
    with pytest.raises(EnvError):
        env.step(np.zeros(3, int))


class CountingRandom(RandomPolicy):
    """Random play that records how many screens each call was given."""

    def __init__(self, per_screen: bool) -> None:
        super().__init__("coinrun", seed=0)
        self.per_screen, self.sizes = per_screen, []

    def act(self, obs: np.ndarray) -> np.ndarray:
        self.sizes.append(len(obs))
        return super().act(obs)


def test_evaluation_asks_a_per_screen_policy_only_for_the_environments_still_playing():
    # 4 environments, 2 episodes each: once one has played its 2, only the others are asked
    asked = CountingRandom(per_screen=True)
    returns = run_episodes(asked, "bigfish", episodes=8, seed=3, num_envs=4)
    assert len(returns) == 8
    assert asked.sizes[0] == 4 and asked.sizes[-1] >= 1 and min(asked.sizes) < 4
    assert sorted(asked.sizes, reverse=True) == asked.sizes  # finished ones never come back
    # a policy that reads the game's state (the planner) is always asked for every one
    every = CountingRandom(per_screen=False)
    assert len(run_episodes(every, "bigfish", episodes=8, seed=3, num_envs=4)) == 8
    assert set(every.sizes) == {4}
