"""``lapo data import-lapo``: reference .npz files -> a valid dataset with the same episodes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from lapo.cli import main
from lapo.data.dataset import WindowDataset
from lapo.data.format import validate_dataset, visible_chunks
from lapo.envs.procgen import ProcgenVecEnv

GAME = "bigfish"


@pytest.fixture(scope="module")
def frames() -> np.ndarray:
    """Real Procgen frames ``(96, 64, 64, 3)`` uint8 from a few steps of two envs."""
    env = ProcgenVecEnv(GAME, 2, seed=0)
    obs, _ = env.reset()
    out = [obs]
    rng = np.random.default_rng(0)
    for _ in range(47):
        obs, *_ = env.step(rng.integers(0, 15, 2))
        out.append(obs)
    env.close()
    return np.concatenate(out)


def reference_file(path: Path, obs: np.ndarray, done_at: list[int], seed: int, **drop) -> dict:
    """Write one reference-layout npz (keys obs, ta, done, rewards, ep_returns, values)."""
    rng = np.random.default_rng(seed)
    n = len(obs)
    done = np.zeros(n, bool)
    done[done_at] = True
    arrays = {
        "obs": obs,
        "ta": rng.integers(0, 15, n),
        "done": done,
        "rewards": rng.random(n).astype(np.float32),
        "ep_returns": np.where(done, rng.random(n) * 10, 0).astype(np.float32),
        "values": rng.random(n).astype(np.float32),
    }
    for key in drop:
        arrays.pop(key)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, **arrays)
    return arrays


@pytest.fixture
def src(tmp_path, frames) -> tuple[Path, list[dict], dict]:
    root = tmp_path / "expert_data"
    train = [
        reference_file(root / GAME / "train" / "0.npz", frames[:70], [9, 30, 31, 69], 1),
        reference_file(root / GAME / "train" / "1.npz", frames[70:90], [4], 2),
        # numeric order, not lexical: 10 comes after 1
        reference_file(root / GAME / "train" / "10.npz", frames[90:96], [], 3),
    ]
    test = reference_file(root / GAME / "test" / "0.npz", frames[:40], [20], 4)
    return root, train, test


def split_arrays(root: Path, split: str) -> dict[str, np.ndarray]:
    chunks = [root / split / n for n in visible_chunks(root / split)]
    names = ("obs", "actions", "rewards", "dones", "episode_ids", "level_seeds")
    return {k: np.concatenate([np.load(c / f"{k}.npy") for c in chunks]) for k in names}


def test_import_round_trip(src, tmp_path, capsys):
    root, train, test = src
    dst = tmp_path / "ds"
    assert (
        main(["data", "import-lapo", str(root), str(dst), "--chunk-frames", "32", "--quiet"]) == 0
    )
    summary = json.loads(capsys.readouterr().out)
    assert summary["frames"] == {"train": 96, "test": 40}
    assert summary["chunks"] == {"train": 3 + 1 + 1, "test": 2}  # 70 frames -> 32 + 32 + 6
    info = validate_dataset(dst)
    m = info.manifest
    assert m["policy"] == {"kind": "imported-lapo", "source": str(root)}
    assert m["game"] == GAME and m["has_actions"] is True

    got = split_arrays(dst, "train")
    np.testing.assert_array_equal(got["obs"], np.concatenate([f["obs"] for f in train]))
    np.testing.assert_array_equal(got["actions"], np.concatenate([f["ta"] for f in train]))
    np.testing.assert_array_equal(got["dones"], np.concatenate([f["done"] for f in train]))
    assert (got["level_seeds"] == -1).all()
    # A new episode starts after every done and at every file start, and nowhere else.
    starts = np.flatnonzero(np.diff(got["episode_ids"])) + 1
    after_done = np.flatnonzero(got["dones"][:-1]) + 1
    file_starts = [70, 90]
    np.testing.assert_array_equal(starts, sorted(set(after_done) | set(file_starts)))
    assert (np.diff(got["episode_ids"]) >= 0).all()
    test_ids = split_arrays(dst, "test")["episode_ids"]
    assert test_ids.min() > got["episode_ids"].max()

    # Mean return from ep_returns at done frames, over both splits.
    ends = [f["ep_returns"][f["done"]] for f in (*train, test)]
    assert m["policy_mean_return"] == pytest.approx(float(np.concatenate(ends).mean()), rel=1e-6)
    assert m["splits"]["train"]["episodes_completed"] == 5

    ds = WindowDataset(dst, "train", k=3)
    b = ds.sample(256, np.random.default_rng(0))
    assert b["obs"].shape == (256, 3, 64, 64, 3)
    assert not b["dones"][:, :2].any()
    assert (b["episode_ids"] == b["episode_ids"][:, :1]).all()
    for s in file_starts:  # no window spans two files
        assert s - 1 not in ds.starts and s - 2 not in ds.starts


def test_src_may_be_the_game_folder(src, tmp_path, capsys):
    root, _, _ = src
    dst = tmp_path / "ds"
    assert main(["data", "import-lapo", str(root / GAME), str(dst), "--quiet"]) == 0
    assert json.loads(capsys.readouterr().out)["frames"]["train"] == 96
    validate_dataset(dst)


def test_returns_from_rewards_without_ep_returns(tmp_path, frames):
    root = tmp_path / "src"
    f = reference_file(root / GAME / "train" / "0.npz", frames[:50], [9, 30], 1, ep_returns=1)
    assert main(["data", "import-lapo", str(root), str(tmp_path / "ds"), "--quiet"]) == 0
    m = json.loads((tmp_path / "ds" / "manifest.json").read_text())
    # The first episode may have begun before the file: only frames 10..30 are a whole episode.
    assert m["splits"]["train"]["episodes_completed"] == 1
    assert m["policy_mean_return"] == pytest.approx(float(f["rewards"][10:31].sum()), rel=1e-5)


def _several_games(root: Path, frames: np.ndarray) -> None:
    reference_file(root / "maze" / "train" / "0.npz", frames[:10], [], 5)


def _corrupt(root: Path, frames: np.ndarray) -> None:
    (root / GAME / "train" / "2.npz").write_bytes(b"PK\x03\x04 not really a zip file")


def _missing_key(root: Path, frames: np.ndarray) -> None:
    reference_file(root / GAME / "train" / "2.npz", frames[:10], [], 5, ta=1)


def _wrong_shape(root: Path, frames: np.ndarray) -> None:
    p = root / GAME / "train" / "2.npz"
    np.savez(p, obs=frames[:10, :, :, 0], ta=np.zeros(10, int), done=np.zeros(10, bool))


def _wrong_length(root: Path, frames: np.ndarray) -> None:
    p = root / GAME / "train" / "2.npz"
    np.savez(p, obs=frames[:10], ta=np.zeros(9, int), done=np.zeros(10, bool))


@pytest.mark.parametrize(
    "breaker, message",
    [
        (_several_games, "holds several games (bigfish, maze): pass --game"),
        (_corrupt, "train/2.npz is not a readable npz file"),
        (_missing_key, "train/2.npz lacks ta"),
        (_wrong_shape, "train/2.npz: obs is (10, 64, 64) uint8, expected (n, 64, 64, 3) uint8"),
        (_wrong_length, "train/2.npz: ta is (9,) int64, expected (10,) to match obs"),
    ],
)
def test_bad_source_fails_in_one_line(src, tmp_path, frames, capsys, breaker, message):
    root, _, _ = src
    breaker(root, frames)
    dst = tmp_path / "ds"
    assert main(["data", "import-lapo", str(root), str(dst), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("lapo: error: ") and err.count("\n") == 1
    assert message in err
    assert not dst.exists()  # every file is checked before anything is written


def test_game_option_picks_one_of_several(src, tmp_path, frames, capsys):
    root, _, _ = src
    _several_games(root, frames)
    dst = tmp_path / "ds"
    assert main(["data", "import-lapo", str(root), str(dst), "--game", "maze", "--quiet"]) == 0
    assert json.loads(capsys.readouterr().out)["frames"] == {"train": 10, "test": 0}
    assert validate_dataset(dst).manifest["game"] == "maze"


def test_refuses_non_empty_dst(src, tmp_path, capsys):
    root, _, _ = src
    dst = tmp_path / "ds"
    dst.mkdir()
    (dst / "keep.txt").write_text("mine")
    assert main(["data", "import-lapo", str(root), str(dst), "--quiet"]) == 2
    assert "already exists and is not empty: choose a new DST" in capsys.readouterr().err
    assert [p.name for p in dst.iterdir()] == ["keep.txt"]
