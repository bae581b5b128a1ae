"""``lapo collect`` on real Procgen at tiny sizes: counts, alignment, splits, kill + resume, errors."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from lapo.cli import main
from lapo.data.collect import _split_seed, collect
from lapo.data.format import SPLITS, validate_dataset, visible_chunks
from lapo.envs.procgen import LEVELS_PER_SPLIT, ProcgenVecEnv
from lapo.evaluation.policies import RandomPolicy

# dodgeball under random play ends an episode every ~40 steps, so boundaries are plentiful.
GAME = "dodgeball"


def chunk_arrays(root: Path, split: str) -> list[dict[str, np.ndarray]]:
    out = []
    for name in visible_chunks(root / split):
        d = root / split / name
        out.append({p.stem: np.load(p, allow_pickle=False) for p in d.glob("*.npy")})
    return out


def snapshot(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p): (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*")}


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    out = tmp_path_factory.mktemp("collect") / "ds"
    summary = collect(
        GAME, "random", 600, out, test_frames=200, num_envs=4, chunk_frames=128, progress=False
    )
    return out, summary


def test_manifest_matches_files(small):
    out, summary = small
    m = json.loads((out / "manifest.json").read_text())
    assert m["format_version"] == 1 and m["game"] == GAME and m["has_actions"] is True
    assert m["policy"] == {"kind": "random"}
    for split, target in (("train", 600), ("test", 200)):
        chunks = chunk_arrays(out, split)
        lengths = [len(c["obs"]) for c in chunks]
        assert sum(lengths) == target == m["splits"][split]["frames"]  # exactly N frames
        assert len(chunks) == m["splits"][split]["chunks"]
        assert max(lengths) <= 128
        assert list(m["splits"][split]["chunk_lengths"].values()) == lengths
        for c in chunks:
            assert c["obs"].dtype == np.uint8 and c["obs"].shape[1:] == (64, 64, 3)
            assert c["actions"].dtype == np.int64 and c["rewards"].dtype == np.float32
            assert len({len(v) for v in c.values()}) == 1
        dones = np.concatenate([c["dones"] for c in chunks])
        assert m["splits"][split]["episodes_completed"] == dones.sum()
        ids = np.concatenate([c["episode_ids"] for c in chunks])
        assert ids.max() < m["next_episode_id"]
    assert m["splits"]["train"]["episodes_completed"] > 0
    assert summary["frames"] == {"train": 600, "test": 200}
    assert 12288 < summary["bytes_per_frame"] < 12400
    validate_dataset(out)


def test_splits_are_level_disjoint(small):
    out, _ = small
    levels = {s: np.concatenate([c["level_seeds"] for c in chunk_arrays(out, s)]) for s in SPLITS}
    assert ((levels["train"] >= 0) & (levels["train"] < LEVELS_PER_SPLIT)).all()
    assert (levels["test"] >= LEVELS_PER_SPLIT).all()
    assert not set(levels["train"].tolist()) & set(levels["test"].tolist())


def test_frames_actions_rewards_dones_are_aligned(small):
    """Replaying the same env and policy seeds reproduces env 0's first chunk frame by frame."""
    out, _ = small
    chunk = chunk_arrays(out, "train")[0]  # env 0's first 128 frames
    seed = _split_seed(0, 0, "train")
    env = ProcgenVecEnv(GAME, 4, num_levels=LEVELS_PER_SPLIT, start_level=0, seed=seed)
    policy = RandomPolicy(GAME, seed)
    obs, info = env.reset()
    for t in range(128):
        np.testing.assert_array_equal(chunk["obs"][t], obs[0])  # obs before the action
        assert chunk["level_seeds"][t] == info["level_seed"][0]
        actions = policy.act(obs)
        assert chunk["actions"][t] == actions[0]
        obs, reward, term, trunc, info = env.step(actions)
        assert chunk["rewards"][t] == reward[0]
        assert chunk["dones"][t] == (term[0] or trunc[0])
    env.close()
    # Episode ids change exactly after a done, and episodes keep one level.
    ids, dones, lv = chunk["episode_ids"], chunk["dones"], chunk["level_seeds"]
    assert dones[:-1].any()
    np.testing.assert_array_equal(np.diff(ids) != 0, dones[:-1])
    assert ((np.diff(lv) != 0) <= dones[:-1]).all()


def test_episode_ids_unique_across_envs(small):
    """An id is shared by two chunks only when one env's episode runs on into its next chunk."""
    out, _ = small
    owner: dict[int, dict[str, np.ndarray]] = {}
    for split in SPLITS:
        for c in chunk_arrays(out, split):
            ids = c["episode_ids"]
            for e in np.unique(ids):
                prev = owner.get(int(e))
                if prev is not None:
                    assert prev["episode_ids"][-1] == e and not prev["dones"][-1]
                    assert ids[0] == e
                    np.testing.assert_array_equal(prev["level_seeds"][-1], c["level_seeds"][0])
                owner[int(e)] = c
    train = {int(e) for c in chunk_arrays(out, "train") for e in c["episode_ids"]}
    test = {int(e) for c in chunk_arrays(out, "test") for e in c["episode_ids"]}
    assert not train & test


@pytest.mark.slow
def test_resume_after_kill(tmp_path, capsys):
    out = tmp_path / "ds"
    args = ["collect", "--env", GAME, "--policy", "random", "--frames", "2000"]
    args += ["--test-frames", "0", "--num-envs", "4", "--chunk-frames", "64", "--out", str(out)]
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).parents[1] / "src"))
    proc = subprocess.Popen(
        [sys.executable, "-m", "lapo.cli", *args, "--quiet"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )

    def committed_frames() -> int:
        try:  # the manifest is replaced atomically, so it is always whole when present
            return json.loads((out / "manifest.json").read_text())["splits"]["train"]["frames"]
        except FileNotFoundError:
            return 0

    deadline = time.time() + 60
    while not committed_frames() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert committed_frames(), "collection committed no chunk before the deadline"

    info = validate_dataset(out)  # only complete chunks count; the manifest is consistent
    before = info.frames("train")
    assert 0 < before < 2000, "the kill came too late to test resume"
    m = json.loads((out / "manifest.json").read_text())
    old_ids = np.concatenate([c["episode_ids"] for c in chunk_arrays(out, "train")])
    old_chunks = set(visible_chunks(out / "train"))
    old_first = {n: np.load(out / "train" / n / "obs.npy")[0] for n in old_chunks}

    assert main([*args, "--resume", "--quiet"]) == 0
    capsys.readouterr()
    info = validate_dataset(out)
    assert info.frames("train") == 2000  # exact target
    assert info.uncommitted == []
    assert not [p for p in (out / "train").iterdir() if p.name.startswith(".")]
    new_chunks = [n for n in visible_chunks(out / "train") if n not in old_chunks]
    new_ids = np.concatenate([np.load(out / "train" / n / "episode_ids.npy") for n in new_chunks])
    # Ids continue after everything recorded before the kill: no id is reused.
    assert new_ids.min() >= max(m["next_episode_id"], old_ids.max() + 1)
    # The resumed environments were seeded differently: the new data is not a replay.
    new_first = np.load(out / "train" / new_chunks[0] / "obs.npy")[0]
    assert not any(np.array_equal(new_first, f) for f in old_first.values())

    # Resuming a complete dataset changes nothing and says so.
    snap = snapshot(out)
    assert main([*args, "--resume", "--quiet"]) == 0
    captured = capsys.readouterr()
    assert "already complete" in captured.err
    assert json.loads(captured.out)["already_complete"] is True
    assert snapshot(out) == snap

    # Resuming with another game is refused.
    bad = [*args, "--resume", "--quiet"]
    bad[bad.index(GAME)] = "coinrun"
    assert main(bad) == 2
    assert f"holds {GAME} data, not coinrun" in capsys.readouterr().err
    assert snapshot(out) == snap


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--frames", "0"], "--frames must be a positive number of frames, got 0"),
        (["--frames", "-5"], "--frames must be a positive number of frames, got -5"),
        (["--frames", "10", "--policy", "no/such/dir"], "neither 'random' nor a folder"),
    ],
)
def test_bad_arguments_fail_in_one_line(tmp_path, capsys, extra, message):
    out = tmp_path / "ds"
    argv = ["collect", "--env", GAME, "--policy", "random", "--out", str(out), "--quiet", *extra]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("lapo: error: ") and err.count("\n") == 1
    assert message in err
    assert not out.exists()  # nothing written


def test_existing_out_needs_resume(small, capsys):
    out, _ = small
    snap = snapshot(out)
    argv = ["collect", "--env", GAME, "--policy", "random", "--frames", "10", "--out", str(out)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "already exists and is not empty: pass --resume" in err and "another --out" in err
    assert err.count("\n") == 1
    assert snapshot(out) == snap


def test_procgen_diagnostics_are_recorded_and_change_the_frames(tmp_path, capsys):
    # coinrun: the velocity is painted in a corner and the level has background images
    base = ["collect", "--env", "coinrun", "--policy", "random", "--frames", "96",
            "--test-frames", "0", "--num-envs", "2", "--seed", "3", "--quiet"]  # fmt: skip
    plain, both = tmp_path / "plain", tmp_path / "both"
    assert main([*base, "--out", str(plain)]) == 0
    assert main([*base, "--out", str(both), "--paint-velocity", "--no-background"]) == 0
    capsys.readouterr()
    m = json.loads((both / "manifest.json").read_text())
    assert m["env"]["procgen_options"] == {"paint_vel_info": True, "use_backgrounds": False}
    assert "procgen_options" not in json.loads((plain / "manifest.json").read_text())["env"]
    a, b = chunk_arrays(plain, "train"), chunk_arrays(both, "train")
    # the same levels and the same random actions, drawn differently
    for x, y in zip(a, b, strict=True):
        assert np.array_equal(x["actions"], y["actions"])
        assert np.array_equal(x["level_seeds"], y["level_seeds"])
    frames_a = np.concatenate([c["obs"] for c in a])
    frames_b = np.concatenate([c["obs"] for c in b])
    assert (frames_a != frames_b).any(axis=(1, 2, 3)).mean() > 0.9  # nearly every frame
    # each option alone changes the frames too
    for option in ("--paint-velocity", "--no-background"):
        one = tmp_path / option.strip("-")
        assert main([*base, "--out", str(one), option]) == 0
        frames = np.concatenate([c["obs"] for c in chunk_arrays(one, "train")])
        assert (frames != frames_a).any()
    # a resume must ask for the same options: one line, exit 2, nothing written
    snap = snapshot(both)
    assert main([*base[:6], "192", *base[7:], "--out", str(both), "--resume"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--paint-velocity / --no-background" in err
    assert snapshot(both) == snap
