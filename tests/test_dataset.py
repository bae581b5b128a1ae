"""WindowDataset: windows match the recorded data and never cross an episode boundary."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lapo.data.collect import collect
from lapo.data.dataset import WindowDataset, to_torch, valid_window_starts
from lapo.data.format import DatasetError, visible_chunks

GAME = "dodgeball"  # short random-play episodes: many boundaries in a few hundred frames


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    out = tmp_path_factory.mktemp("dataset") / "ds"
    collect(GAME, "random", 600, out, test_frames=200, num_envs=4, chunk_frames=128, progress=False)
    # The split's frames in the loader's global order: chunk after chunk.
    split = {}
    for name in visible_chunks(out / "train"):
        for field in ("obs", "actions", "rewards", "dones", "episode_ids", "level_seeds"):
            split.setdefault(field, []).append(np.load(out / "train" / name / f"{field}.npy"))
    lengths = [len(a) for a in split["dones"]]
    arrays = {k: np.concatenate(v) for k, v in split.items()}
    chunk_of = np.repeat(np.arange(len(lengths)), lengths)
    return out, arrays, chunk_of


def test_valid_window_starts_by_hand():
    ids = np.array([0, 0, 0, 1, 1, 2])
    dones = np.array([0, 0, 1, 0, 1, 0], bool)
    np.testing.assert_array_equal(valid_window_starts(ids, dones, 2), [0, 1, 3])
    np.testing.assert_array_equal(valid_window_starts(ids, dones, 3), [0])
    np.testing.assert_array_equal(valid_window_starts(ids, dones, 1), [0, 1, 2, 3, 4, 5])
    assert len(valid_window_starts(ids, dones, 7)) == 0


def test_windows_match_recorded_frames(data):
    out, rec, chunk_of = data
    ds = WindowDataset(out, "train", k=3)
    b = ds.sample(64, np.random.default_rng(0))
    assert b["obs"].shape == (64, 3, 64, 64, 3) and b["obs"].dtype == np.uint8
    assert b["actions"].shape == (64, 3) and b["actions"].dtype == np.int64
    for key in ("rewards", "dones", "episode_ids", "level_seeds"):
        assert b[key].shape == (64, 3)
    for i, s in enumerate(b["index"]):
        frames = slice(s, s + 3)
        np.testing.assert_array_equal(b["obs"][i], rec["obs"][frames])
        np.testing.assert_array_equal(b["actions"][i], rec["actions"][frames])
        np.testing.assert_array_equal(b["rewards"][i], rec["rewards"][frames])
        assert len(set(chunk_of[frames])) == 1  # one chunk, so one env's consecutive frames


def test_no_window_crosses_an_episode_boundary(data):
    out, rec, chunk_of = data
    k = 3
    assert rec["dones"].sum() >= 5, "the data needs episode boundaries to test this"
    ds = WindowDataset(out, "train", k=k)
    # Brute force: every start whose k frames lie in one chunk, one episode, no done before the end.
    expected = [
        s
        for s in range(len(rec["dones"]) - k + 1)
        if len(set(chunk_of[s : s + k])) == 1
        and len(set(rec["episode_ids"][s : s + k])) == 1
        and not rec["dones"][s : s + k - 1].any()
    ]
    np.testing.assert_array_equal(ds.starts, expected)
    assert len(ds) == len(expected) < len(rec["dones"]) - k + 1
    # Windows that would straddle a done are absent.
    for t in np.flatnonzero(rec["dones"]):
        assert t not in ds.starts and t - 1 not in ds.starts
    b = ds.sample(2000, np.random.default_rng(1))
    assert not b["dones"][:, : k - 1].any()
    assert (b["episode_ids"] == b["episode_ids"][:, :1]).all()
    assert len(np.unique(b["index"])) > 0.8 * len(ds)  # uniform draws reach most windows


def test_sampling_is_uniform(data):
    out, _, _ = data
    ds = WindowDataset(out, "train", k=2)
    n = len(ds)
    draws = ds.sample(40 * n, np.random.default_rng(2))["index"]
    counts = np.bincount(np.searchsorted(ds.starts, draws), minlength=n)
    assert counts.min() > 0  # every valid window can be drawn (P(miss) ~ e^-40 each)
    # Chi-square over n cells has mean n - 1 and sd sqrt(2n); 6 sd is far outside chance.
    chi2 = ((counts - 40) ** 2 / 40).sum()
    assert chi2 < n + 6 * np.sqrt(2 * n)


def test_batches_are_reproducible_and_test_split_loads(data):
    out, _, _ = data
    ds = WindowDataset(out, "train", k=3)
    a, b = next(ds.batches(16, seed=5)), next(ds.batches(16, seed=5))
    np.testing.assert_array_equal(a["index"], b["index"])
    np.testing.assert_array_equal(a["obs"], b["obs"])
    test = WindowDataset(out, "test", k=3)
    assert test.frames == 200
    assert (test.sample(8, np.random.default_rng(0))["level_seeds"] >= 10**9).all()


def test_to_torch_keeps_uint8(data):
    out, _, _ = data
    batch = to_torch(WindowDataset(out).sample(4, np.random.default_rng(0)), "cpu")
    assert batch["obs"].dtype == torch.uint8 and batch["obs"].shape == (4, 3, 64, 64, 3)
    assert batch["actions"].dtype == torch.int64


def test_dataset_shorter_than_a_window(tmp_path):
    out = tmp_path / "tiny"
    collect(GAME, "random", 2, out, test_frames=0, num_envs=1, progress=False)
    with pytest.raises(
        DatasetError, match=r"has 2 frames in split 'train', a window needs 3: collect more"
    ):
        WindowDataset(out, "train", k=3)
    with pytest.raises(DatasetError, match=r"has 0 frames in split 'test'"):
        WindowDataset(out, "test", k=3)


def test_chunks_read_the_windows_in_order(data):
    out, _, _ = data
    ds = WindowDataset(out, "train", k=3)
    starts = ds.starts[:50]
    parts = list(ds.chunks(starts, 16))
    assert [len(p["index"]) for p in parts] == [16, 16, 16, 2]
    np.testing.assert_array_equal(np.concatenate([p["obs"] for p in parts]), ds.read(starts)["obs"])


def test_dataset_checks_say_one_thing_each(data, tmp_path):
    import json
    import shutil

    from lapo.data.checks import dataset_for

    out, _, _ = data
    assert dataset_for(out, "run r", GAME, actions_for="the probe")["game"] == GAME
    with pytest.raises(DatasetError, match=f"run r is for coinrun but {out} holds {GAME}"):
        dataset_for(out, "run r", "coinrun")
    plain = tmp_path / "plain"
    shutil.copytree(out, plain)
    manifest = json.loads((plain / "manifest.json").read_text())
    (plain / "manifest.json").write_text(json.dumps({**manifest, "has_actions": False}))
    with pytest.raises(DatasetError, match="has no actions: the probe needs a dataset with true"):
        dataset_for(plain, actions_for="the probe")
    (plain / "manifest.json").write_text(json.dumps({**manifest, "obs_shape": [84, 84, 3]}))
    with pytest.raises(DatasetError, match="holds 84x84x3 frames; lapo.s networks take 64x64x3"):
        dataset_for(plain)


def test_windows_held_in_memory_are_the_windows_read_from_disk(data):
    from lapo.data.dataset import DeviceWindows

    out, arrays, _ = data
    ds = WindowDataset(out, "train", k=4)
    cpu = torch.device("cpu")
    held, read = DeviceWindows(ds, cpu, resident=True), DeviceWindows(ds, cpu)
    assert held.resident and not read.resident
    torch.testing.assert_close(held.frames, torch.from_numpy(arrays["obs"]))  # every frame
    starts = ds.draw(32, np.random.default_rng(0))
    a, b = held(starts), read(starts)
    assert a["obs"].dtype == torch.uint8 and a["obs"].shape == (32, 4, 64, 64, 3)
    assert torch.equal(a["obs"], b["obs"])
    np.testing.assert_array_equal(a["actions"], b["actions"])
