"""The planners (maze, bigfish) and the demonstrators distilled from them (lapo.evaluation.planner,
lapo.rl.distill)."""

import csv

import numpy as np
import pytest
import torch

from lapo.checkpoint import load_tensors, read_json
from lapo.cli import main
from lapo.config import DistillConfig
from lapo.envs.procgen import EnvError
from lapo.evaluation.planner import MOVES, Lookahead, ShortestPaths, check_planner_game, one_game
from lapo.evaluation.policies import load_policy
from lapo.rl.distill import distill_expert

LEVELS = 12


def maze(seed: int):
    return one_game("maze", seed=seed)


def planner_playing(game: str, num_envs: int, seed: int):
    """``(env, policy, obs)``: ``num_envs`` environments of ``game`` just reset (seed ``seed``)
    and the planner attached to them."""
    from lapo.envs import ProcgenVecEnv
    from lapo.evaluation.policies import attach

    env = ProcgenVecEnv(game, num_envs=num_envs, seed=seed)
    policy = load_policy("planner", game, seed=0)
    obs, _ = env.reset()
    attach(policy, env)
    return env, policy, obs


def play(env, choose, limit: int) -> tuple[float, int]:
    """Play one episode of at most ``limit`` steps; return (return, steps)."""
    total = 0.0
    for step in range(1, limit + 1):
        _, obs, _ = env.observe()
        env.act(np.array([choose(obs["rgb"][0])], np.int32))
        reward, _, first = env.observe()
        total += float(reward[0])
        if first[0]:
            return total, step
    return total, limit


def test_the_planner_reaches_the_cheese_in_the_steps_it_says_where_random_play_does_not():
    env = maze(seed=7)
    planner = ShortestPaths(env, "maze")
    rng = np.random.default_rng(0)
    planned, randomly = [], []
    for _ in range(LEVELS):
        _, obs, _ = env.observe()
        steps = planner.steps_to_reward(obs["rgb"][0])
        assert steps is not None and steps >= 1
        # the same level, played at random for the same number of steps (state restored)
        state = env.get_state()
        randomly.append(play(env, lambda o: rng.integers(15), steps)[0])
        env.set_state(state)
        ret, taken = play(env, lambda o: planner.moves(o)[0], steps)
        assert (ret, taken) == (10.0, steps)  # the cheese, in exactly the steps it said
        planned.append(ret)
        planner.new_level()
    assert np.mean(planned) == 10.0
    assert np.mean(randomly) < 5.0


def test_the_planner_finds_the_way_back_after_random_moves():
    env = maze(seed=3)
    planner = ShortestPaths(env, "maze")
    rng = np.random.default_rng(1)
    for _ in range(20):  # wander off the shortest path first (an episode may end: a new level)
        env.act(np.array([rng.integers(15)], np.int32))
        if env.observe()[2][0]:
            planner.new_level()
    _, obs, _ = env.observe()
    moves = planner.moves(obs["rgb"][0])
    assert moves and set(moves) <= set(MOVES["maze"])
    steps = planner.steps_to_reward(obs["rgb"][0])
    assert play(env, lambda o: planner.moves(o)[0], steps) == (10.0, steps)


def test_the_lookahead_scores_a_move_by_the_games_real_future_and_restores_the_state():
    env = one_game("bigfish", seed=4)
    planner = Lookahead(env, "bigfish", horizon=6, discount=0.5, death_penalty=100.0)
    rng = np.random.default_rng(1)
    for _ in range(40):  # somewhere into the level
        env.act(np.array([rng.integers(9)], np.int32))
    _, before, _ = env.observe()
    state = env.get_state()
    moves = planner.moves()
    _, after, _ = env.observe()
    assert env.get_state() == state  # searching leaves the game where it was
    np.testing.assert_array_equal(before["rgb"], after["rgb"])
    # each move's score by hand: hold it 6 steps, rewards discounted by 0.5 per step
    by_hand = []
    for a in MOVES["bigfish"]:
        env.set_state(state)
        total = 0.0
        for t in range(6):
            env.act(np.array([a], np.int32))
            reward, _, first = env.observe()
            total += float(reward[0]) * 0.5**t - (
                100.0 * 0.5**t if first[0] and reward[0] <= 0 else 0
            )
            if first[0]:
                break
        by_hand.append(total)
    env.set_state(state)
    assert moves == [
        a for a, s in zip(MOVES["bigfish"], by_hand, strict=True) if s >= max(by_hand) - 1e-6
    ]


@pytest.mark.slow
def test_the_lookahead_eats_and_survives_in_bigfish_where_random_play_does_not():
    planned, randomly = [], []
    rng = np.random.default_rng(0)
    for seed in range(3):
        env = one_game("bigfish", seed=seed)
        planner = Lookahead(env, "bigfish")
        state = env.get_state()
        randomly.append(play(env, lambda o: rng.integers(9), 300))
        env.set_state(state)
        planned.append(play(env, lambda o, p=planner: rng.choice(p.moves()), 300))
    # at most 300 steps of the same levels: the planner lives longer and eats more; random
    # play dies early (a bigger fish) with a reward or two. (The planner can die too: a fish
    # that appears beside the agent leaves no move that escapes; one of these three levels.)
    assert sum(r for r, _ in planned) > 2 * sum(r for r, _ in randomly) + 5, (planned, randomly)
    assert sum(n for _, n in planned) > sum(n for _, n in randomly), (planned, randomly)


def test_the_planner_policy_plays_bigfish_by_the_lookahead_from_each_environments_state():
    env, policy, obs = planner_playing("bigfish", num_envs=3, seed=5)
    rng = np.random.default_rng(0)
    search = one_game("bigfish")
    narrowed = 0  # decisions where some moves are worse than others
    for step in range(40):
        if step < 20:  # somewhere into the levels, each environment elsewhere
            obs, *_ = env.step(rng.integers(0, 9, size=3))
            continue
        states = env.get_state()
        actions = policy.act(obs)
        for i, state in enumerate(states):  # each its own environment's best moves
            best = Lookahead(search, "bigfish").moves(state=state)
            assert actions[i] in best
            narrowed += len(best) < 9
        obs, *_ = env.step(actions)
    env.close()
    assert narrowed >= 5  # so a policy that ignored the lookahead would have been caught


def test_games_the_planner_cannot_search_are_refused_in_one_line(tmp_path, capsys):
    with pytest.raises(EnvError, match="cannot search 'coinrun'"):
        check_planner_game("coinrun")
    assert main(["expert", "distill", "--env", "coinrun", "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "lapo expert train" in err[0]
    assert not (tmp_path / "r").exists()


def test_distill_writes_a_demonstrator_folder_and_resumes_with_more_rounds(tmp_path):
    cfg = DistillConfig(game="maze", arch="nature_small", obs_size=32, rounds=2,
                        frames_per_round=150, epochs=1, threads=1)  # fmt: skip
    run = tmp_path / "run"
    summary = distill_expert(cfg, run, progress=False)
    assert summary["round"] == 2 and summary["frames"] == 300
    config = read_json(run / "config.json")
    assert config["kind"] == "ppo-expert" and config["trained_by"] == "distill"
    assert config["frames_trained"] == 300
    shard, _ = load_tensors(run / "round_0.safetensors")
    screens, targets = shard["screens"], shard["targets"]
    assert screens.shape == (150, 64, 64, 3) and screens.dtype == torch.uint8
    assert targets.shape == (150, 15)
    torch.testing.assert_close(targets.sum(1), torch.ones(150))
    # the targets are the planner's moves only
    assert set(torch.nonzero(targets)[:, 1].tolist()) <= set(MOVES["maze"])
    # the folder is a policy like a PPO run's
    policy = load_policy(run, "maze")
    actions = policy.act(screens[:4].numpy())
    assert actions.shape == (4,)
    # one more round resumes after the second
    distill_expert(DistillConfig(**{**cfg.__dict__, "rounds": 3}), run, progress=False)
    with open(run / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["round"]) for r in rows] == [1, 2, 3]
    assert [r["player"] for r in rows] == ["planner", "network", "network"]
    assert float(rows[0]["mean_return"]) > 5.0  # the planner, noisy, still reaches the cheese


def test_the_planner_records_a_dataset(tmp_path):
    from lapo.data.collect import collect
    from lapo.data.dataset import WindowDataset

    policy = load_policy("planner", "maze", seed=0)
    assert policy.describe() == {"kind": "planner", "game": "maze"}
    out = tmp_path / "maze"
    summary = collect("maze", "planner", 256, out, test_frames=64, num_envs=4,
                      chunk_frames=64, progress=False)  # fmt: skip
    assert summary["policy_mean_return"] == 10.0  # every finished episode reached the cheese
    ds = WindowDataset(out, "train", k=2)
    actions = ds.labels_at(ds.starts)["actions"]
    assert set(np.unique(actions).tolist()) <= set(MOVES["maze"])
    assert len(np.unique(actions)) >= 3  # it goes several ways, not one


def test_the_planner_policy_finds_its_way_after_moves_it_did_not_choose():
    env, policy, obs = planner_playing("maze", num_envs=4, seed=11)
    rng = np.random.default_rng(2)
    returns, noops = [], 0
    for step in range(300):
        actions = policy.act(obs)
        noops += int((actions == 4).sum())
        if step % 3 == 0:  # every third step a random action instead: off the shortest paths
            actions = rng.integers(0, 15, size=4)
        obs, _, _, _, info = env.step(actions)
        returns += info["episode_return"][info["episode_done"]].tolist()
    env.close()
    assert noops == 0  # it always knows a way on
    assert len(returns) >= 8 and set(returns) == {10.0}


def test_the_demo_takes_the_planner_on_the_games_it_can_search():
    from lapo.config import PLANNER_GAMES, DemoConfig
    from lapo.errors import ConfigError

    assert set(PLANNER_GAMES) == set(MOVES)  # the config's list is the planner's
    assert DemoConfig(game="maze", policy="planner").policy == "planner"
    with pytest.raises(ConfigError, match="cannot search 'coinrun'"):
        DemoConfig(game="coinrun", policy="planner")
