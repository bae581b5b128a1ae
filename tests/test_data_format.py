"""The dataset format: chunk writer round trip, atomic commit, and validation messages via the CLI.

These tests build datasets from synthetic frames (no Procgen), so they are fast.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from lapo.cli import main
from lapo.data.format import (
    FRAME_BYTES,
    ChunkWriter,
    DatasetError,
    DatasetWriter,
    new_manifest,
    read_npy_header,
    validate_dataset,
    visible_chunks,
)


def synthetic_chunk(n: int, first_id: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """``n`` frames of random pixels with an episode ending after frames 9 and 20."""
    dones = np.zeros(n, bool)
    dones[[9, 20]] = True
    ids = first_id + np.concatenate([[0], np.cumsum(dones[:-1])])
    return {
        "obs": rng.integers(0, 256, (n, 64, 64, 3), dtype=np.uint8),
        "dones": dones,
        "episode_ids": ids,
        "level_seeds": np.full(n, 7),
        "actions": rng.integers(0, 15, n),
        "rewards": rng.random(n).astype(np.float32),
    }


def make_dataset(root: Path, chunks: int = 2, n: int = 40) -> list[dict[str, np.ndarray]]:
    """A valid dataset of ``chunks`` train chunks and one test chunk; returns the train data."""
    rng = np.random.default_rng(0)
    m = new_manifest("coinrun", {}, {"kind": "random"}, True, n, 0, {"test": True})
    w = DatasetWriter(root, m)
    root.mkdir(parents=True)
    w.write_manifest()
    written = []
    for split, count in (("train", chunks), ("test", 1)):
        for _ in range(count):
            data = synthetic_chunk(n, m["next_episode_id"], rng)
            m["next_episode_id"] = int(data["episode_ids"][-1]) + 1
            c = w.new_chunk(split)
            c.append(**data)
            w.commit(split, c, [1.0, 2.0])
            if split == "train":
                written.append(data)
    return written


def snapshot(root: Path) -> dict[str, tuple[str, int]]:
    """Every file's content hash and mtime under ``root``."""
    return {
        str(p.relative_to(root)): (hashlib.sha1(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_chunk_writer_round_trip(tmp_path):
    rng = np.random.default_rng(1)
    data = synthetic_chunk(30, 5, rng)
    w = ChunkWriter(tmp_path / "train", 3)
    # Appending in two pieces (one frame at a time for the second) gives one contiguous chunk.
    w.append(**{k: v[:12] for k, v in data.items()})
    for t in range(12, 30):
        w.append_frame(
            data["obs"][t],
            bool(data["dones"][t]),
            int(data["episode_ids"][t]),
            int(data["level_seeds"][t]),
            int(data["actions"][t]),
            float(data["rewards"][t]),
        )
    assert visible_chunks(tmp_path / "train") == []  # nothing visible before commit
    path = w.commit()
    assert path.name == "chunk_000003"
    assert visible_chunks(tmp_path / "train") == ["chunk_000003"]
    assert not (tmp_path / "train" / ".chunk_000003.tmp").exists()
    for name, arr in data.items():
        got = np.load(path / f"{name}.npy", allow_pickle=False)
        assert got.dtype == {"obs": np.uint8, "dones": bool, "rewards": np.float32}.get(
            name, np.int64
        )
        np.testing.assert_array_equal(got, arr)
    # The header was rewritten in place with the final length; data starts right after it.
    h = read_npy_header(path / "obs.npy")
    assert h.shape == (30, 64, 64, 3)
    assert h.file_size == h.offset + 30 * FRAME_BYTES


def test_aborted_or_killed_chunk_is_invisible(tmp_path):
    data = synthetic_chunk(25, 0, np.random.default_rng(2))
    w = ChunkWriter(tmp_path / "train", 0)
    w.append(**data)
    # A kill here leaves only the dot-folder: readers do not see it, a new writer replaces it.
    assert (tmp_path / "train" / ".chunk_000000.tmp" / "obs.npy").is_file()
    assert visible_chunks(tmp_path / "train") == []
    w2 = ChunkWriter(tmp_path / "train", 0)
    w2.append(**data)
    w2.commit()
    assert visible_chunks(tmp_path / "train") == ["chunk_000000"]
    w3 = ChunkWriter(tmp_path / "train", 1)
    w3.append(**data)
    w3.abort()
    assert visible_chunks(tmp_path / "train") == ["chunk_000000"]
    assert not (tmp_path / "train" / ".chunk_000001.tmp").exists()


def test_manifest_counts_committed_chunks(tmp_path):
    make_dataset(tmp_path / "d", chunks=2, n=40)
    info = validate_dataset(tmp_path / "d")
    m = json.loads((tmp_path / "d" / "manifest.json").read_text())
    assert m["splits"]["train"]["frames"] == 80 == info.frames("train")
    assert m["splits"]["train"]["chunks"] == 2
    assert m["splits"]["train"]["episodes_completed"] == 4
    assert m["splits"]["train"]["mean_return"] == pytest.approx(1.5)
    assert m["policy_mean_return"] == pytest.approx(1.5)
    assert [c.frames for c in info.chunks["train"]] == [40, 40]


def test_info_prints_summary(tmp_path, capsys):
    make_dataset(tmp_path / "d")
    assert main(["data", "info", str(tmp_path / "d")]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["valid"] is True
    assert out["splits"]["train"]["frames"] == 80
    assert out["splits"]["test"]["frames"] == 40
    assert 12288 < out["bytes_per_frame"] < 12288 + 200


def _break_missing_file(d: Path) -> None:
    (d / "train/chunk_000001/actions.npy").unlink()


def _break_truncated_obs(d: Path) -> None:
    p = d / "train/chunk_000001/obs.npy"
    h = read_npy_header(p)
    with open(p, "r+b") as f:
        f.truncate(h.offset + 12 * FRAME_BYTES + 100)


def _break_dtype(d: Path) -> None:
    p = d / "train/chunk_000000/episode_ids.npy"
    np.save(p, np.load(p).astype(np.int32))


def _break_shape(d: Path) -> None:
    p = d / "train/chunk_000000/dones.npy"
    np.save(p, np.zeros((40, 2), bool))


def _break_missing_chunk(d: Path) -> None:
    shutil.rmtree(d / "train/chunk_000000")


def _break_manifest(d: Path) -> None:
    (d / "manifest.json").unlink()


def _break_episode_ids(d: Path) -> None:
    p = d / "train/chunk_000000/episode_ids.npy"
    ids = np.load(p)
    ids[5:] += 1  # a new episode without a done before it
    np.save(p, ids)


@pytest.mark.parametrize(
    "breaker, message",
    [
        (
            _break_missing_file,
            "train/chunk_000001/actions.npy is missing: delete that chunk folder",
        ),
        (
            _break_truncated_obs,
            "train/chunk_000001/obs.npy is truncated (expected 40 frames, found 12): delete that "
            "chunk folder and re-run collect with --resume",
        ),
        (_break_dtype, "episode_ids.npy has dtype int32, expected int64"),
        (_break_shape, "dones.npy has shape (40, 2), expected (n,)"),
        (_break_missing_chunk, "train/chunk_000000 is missing (manifest.json lists it)"),
        (_break_manifest, "manifest.json is missing"),
        (_break_episode_ids, "episode id changes where dones is not set"),
    ],
)
def test_info_reports_bad_data_in_one_line(tmp_path, capsys, breaker, message):
    d = tmp_path / "d"
    make_dataset(d)
    breaker(d)
    before = snapshot(d)
    assert main(["data", "info", str(d)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("lapo: error: ")
    assert err.count("\n") == 1  # one line
    assert message in err
    assert str(d) in err  # names the file
    assert snapshot(d) == before  # validation changes nothing


def test_validate_counts_further_problems(tmp_path):
    d = tmp_path / "d"
    make_dataset(d)
    _break_missing_file(d)
    _break_dtype(d)
    with pytest.raises(DatasetError, match=r"\(and 1 more problems\)"):
        validate_dataset(d)


def test_uncommitted_chunk_is_ignored(tmp_path):
    """A chunk renamed into place just before a kill, but not yet in the manifest."""
    d = tmp_path / "d"
    make_dataset(d)
    c = ChunkWriter(d / "train", 2)
    c.append(**synthetic_chunk(40, 100, np.random.default_rng(3)))
    c.commit()
    info = validate_dataset(d)
    assert info.frames("train") == 80
    assert info.uncommitted == ["train/chunk_000002"]
