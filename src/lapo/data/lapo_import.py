"""Convert the reference implementation's expert data (``.npz`` files) into a lapo dataset.

Reference layout: ``SRC/GAME/{train,test}/N.npz`` (or ``SRC`` is ``GAME/`` itself), each
file one contiguous stretch of play with ``obs`` ``(n, 64, 64, 3)`` uint8, ``ta`` ``(n,)``
actions, ``done`` ``(n,)`` bool (the episode ends after frame t), float ``rewards``,
``ep_returns`` and ``values``. Every file becomes one or more chunks; episode ids are
counted from ``done``; levels are unknown (-1). Files are read with ``allow_pickle=False``.
"""

from __future__ import annotations

import time
import zipfile
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from lapo.data.format import (
    SPLITS,
    DatasetError,
    DatasetWriter,
    disk_bytes,
    new_manifest,
)
from lapo.envs.procgen import GAMES, NUM_ACTIONS, OBS_SHAPE

REQUIRED_KEYS = ("obs", "ta", "done")
_READ_ERRORS = (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error, KeyError)


def _has_splits(d: Path) -> bool:
    return any((d / s).is_dir() for s in SPLITS)


def find_game_dir(src: Path, game: str | None = None) -> tuple[Path, str]:
    """Locate the folder holding ``train/`` and ``test/`` and name its game."""
    src = Path(src)
    if not src.is_dir():
        raise DatasetError(f"{src} does not exist or is not a folder; point SRC to the data")
    if _has_splits(src):
        name = game or src.name
        if name not in GAMES:
            raise DatasetError(
                f"cannot tell the game of {src} from its name; pass --game (one of "
                f"{', '.join(GAMES)})"
            )
        return src, name
    found = sorted(d.name for d in src.iterdir() if d.is_dir() and _has_splits(d))
    if game is not None:
        if game not in found:
            raise DatasetError(
                f"{src / game} has no train/ or test/ folder (games found: "
                f"{', '.join(found) or 'none'}); check SRC and --game"
            )
        return src / game, game
    if not found:
        raise DatasetError(
            f"no reference data in {src}: expected {src}/GAME/train/*.npz or {src}/train/*.npz"
        )
    if len(found) > 1:
        raise DatasetError(f"{src} holds several games ({', '.join(found)}): pass --game")
    if found[0] not in GAMES:
        raise DatasetError(f"{src / found[0]} is not a Procgen game's name; pass --game")
    return src / found[0], found[0]


def _npz_files(split_dir: Path) -> list[Path]:
    # The reference names files 0.npz, 1.npz, ... and reads them in numeric order.
    files = [p for p in split_dir.glob("*.npz") if p.is_file()] if split_dir.is_dir() else []
    return sorted(files, key=lambda p: (0, int(p.stem), "") if p.stem.isdigit() else (1, 0, p.stem))


def inspect_npz(path: Path) -> int:
    """Check an npz file's keys, dtypes and shapes from the member headers; returns ``n``.

    Reads no array data, so every file can be checked before anything is written.
    """
    path = Path(path)
    try:
        with zipfile.ZipFile(path) as zf:
            members = {Path(m).stem: m for m in zf.namelist() if m.endswith(".npy")}
            missing = [k for k in REQUIRED_KEYS if k not in members]
            if missing:
                raise DatasetError(
                    f"{path} lacks {', '.join(missing)} (has {', '.join(sorted(members))}): it "
                    "is not reference LAPO data; remove it or fix SRC"
                )
            headers = {}
            for key in (*REQUIRED_KEYS, "rewards", "ep_returns"):
                if key not in members:
                    continue
                with zf.open(members[key]) as f:
                    version = np.lib.format.read_magic(f)
                    read = (
                        np.lib.format.read_array_header_1_0
                        if version == (1, 0)
                        else np.lib.format.read_array_header_2_0
                    )
                    shape, _, dtype = read(f)
                headers[key] = (tuple(shape), np.dtype(dtype))
    except DatasetError:
        raise
    except _READ_ERRORS as e:
        raise DatasetError(
            f"{path} is not a readable npz file ({e}); remove or replace it"
        ) from None
    shape, dtype = headers["obs"]
    if dtype != np.uint8 or len(shape) != 4 or shape[1:] != OBS_SHAPE:
        raise DatasetError(
            f"{path}: obs is {shape} {dtype}, expected (n, 64, 64, 3) uint8; remove or fix it"
        )
    n = shape[0]
    kinds = {"ta": "iu", "done": "biu", "rewards": "fiu", "ep_returns": "fiu"}
    for key, (shape, dtype) in headers.items():
        if key == "obs":
            continue
        if shape != (n,) or dtype.kind not in kinds[key]:
            raise DatasetError(
                f"{path}: {key} is {shape} {dtype}, expected ({n},) to match obs; remove or fix it"
            )
    return n


def _episode_returns(done: np.ndarray, ids: np.ndarray, data: Any) -> np.ndarray:
    """Return of the episode ending at each frame ``(n,)`` float64 (NaN where unknown)."""
    out = np.full(len(done), np.nan)
    if "ep_returns" in data:
        out[done] = np.asarray(data["ep_returns"], np.float64)[done]
    elif "rewards" in data:
        local = ids - ids[0]
        sums = np.bincount(local, weights=np.asarray(data["rewards"], np.float64))
        # The file's first episode may have begun before the file did: its sum is partial.
        whole = done & (local > 0)
        out[whole] = sums[local[whole]]
    return out


def import_lapo(
    src: str | Path,
    dst: str | Path,
    game: str | None = None,
    chunk_frames: int = 4096,
    progress: bool = True,
    created_by: dict | None = None,
) -> dict[str, Any]:
    """Convert reference data under ``src`` into a new dataset folder ``dst``; returns a summary.

    Refuses a ``dst`` that exists and is not empty. Checks every file's keys and shapes before
    writing anything; a file that fails to load later ends the import with its name (``dst``
    then holds the valid dataset of the files imported before it).
    """
    from tqdm import tqdm

    t0 = time.time()
    src, dst = Path(src), Path(dst)
    if chunk_frames < 1:
        raise DatasetError(f"--chunk-frames must be at least 1, got {chunk_frames}")
    if dst.exists() and (not dst.is_dir() or any(dst.iterdir())):
        raise DatasetError(f"{dst} already exists and is not empty: choose a new DST folder")
    game_dir, game = find_game_dir(src, game)
    files = {s: _npz_files(game_dir / s) for s in SPLITS}
    if not any(files.values()):
        raise DatasetError(f"{game_dir}/train and {game_dir}/test hold no .npz files")
    sizes = {p: inspect_npz(p) for s in SPLITS for p in files[s]}
    created_by = created_by or {
        "function": "lapo.data.lapo_import.import_lapo",
        "args": {"src": str(src), "dst": str(dst), "game": game, "chunk_frames": chunk_frames},
    }
    manifest = new_manifest(
        game,
        {"source": "imported-lapo", "distribution_mode": None, "splits": None},
        {"kind": "imported-lapo", "source": str(src)},
        True,
        chunk_frames,
        None,
        created_by,
    )
    dst.mkdir(parents=True, exist_ok=True)
    writer = DatasetWriter(dst, manifest)
    writer.write_manifest()
    bar = tqdm(total=sum(sizes.values()), unit="frame", unit_scale=True, disable=not progress)
    try:
        for split in SPLITS:
            for path in files[split]:
                _import_file(writer, split, path, chunk_frames)
                bar.update(sizes[path])
    finally:
        bar.close()
    total = sum(manifest["splits"][s]["frames"] for s in SPLITS)
    nbytes = disk_bytes(dst)
    return {
        "out": str(dst),
        "game": game,
        "source": str(game_dir),
        "files": {s: len(files[s]) for s in SPLITS},
        "frames": {s: manifest["splits"][s]["frames"] for s in SPLITS},
        "chunks": {s: manifest["splits"][s]["chunks"] for s in SPLITS},
        "episodes_completed": {s: manifest["splits"][s]["episodes_completed"] for s in SPLITS},
        "policy_mean_return": manifest["policy_mean_return"],
        "bytes_on_disk": nbytes,
        "bytes_per_frame": nbytes / total if total else None,
        "wall_seconds": round(time.time() - t0, 2),
    }


def _import_file(writer: DatasetWriter, split: str, path: Path, chunk_frames: int) -> None:
    """Write one reference file as chunks of at most ``chunk_frames`` frames."""
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
    except _READ_ERRORS as e:
        raise DatasetError(
            f"{path} could not be read ({e}); remove or replace it ({writer.root} holds a valid "
            "dataset of the files before it)"
        ) from None
    obs = arrays["obs"]
    done = arrays["done"].astype(bool)
    actions = arrays["ta"].astype(np.int64)
    if len(actions) and (actions.min() < 0 or actions.max() >= NUM_ACTIONS):
        raise DatasetError(f"{path}: ta holds actions outside [0, {NUM_ACTIONS}); remove or fix it")
    n = len(obs)
    if n == 0:
        return
    rewards = arrays.get("rewards", np.zeros(n, np.float32)).astype(np.float32)
    first = int(writer.manifest["next_episode_id"])
    # Frame t + 1 starts a new episode when done[t]; each file starts a new one.
    ids = first + np.concatenate([[0], np.cumsum(done[:-1], dtype=np.int64)])
    writer.manifest["next_episode_id"] = int(ids[-1]) + 1
    ep_return = _episode_returns(done, ids, arrays)
    levels = np.full(n, -1, np.int64)
    for a in range(0, n, chunk_frames):
        b = min(n, a + chunk_frames)
        chunk = writer.new_chunk(split)
        try:
            chunk.append(obs[a:b], done[a:b], ids[a:b], levels[a:b], actions[a:b], rewards[a:b])
        except BaseException:
            chunk.abort()
            raise
        ended = ep_return[a:b][done[a:b]]
        writer.commit(split, chunk, [float(r) for r in ended if np.isfinite(r)])
