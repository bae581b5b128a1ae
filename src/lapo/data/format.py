"""The on-disk dataset format (version 1): chunk folders of plain ``.npy`` files + a manifest.

A dataset is a folder::

    DIR/manifest.json
    DIR/train/chunk_000000/{obs,actions,rewards,dones,episode_ids,level_seeds}.npy
    DIR/test/chunk_000000/...

Each chunk is one contiguous stretch of play of one environment, ``n`` frames:

- ``obs`` ``(n, 64, 64, 3)`` uint8: the frame the agent saw;
- ``actions`` ``(n,)`` int64: the action taken at that frame (absent in action-free data);
- ``rewards`` ``(n,)`` float32: the reward that action earned (absent like ``actions``);
- ``dones`` ``(n,)`` bool: the episode ends after this frame (its last observed frame);
- ``episode_ids`` ``(n,)`` int64: unique per dataset, nondecreasing within a chunk;
- ``level_seeds`` ``(n,)`` int64: Procgen level of the frame, -1 when unknown.

Files are uncompressed so they can be read at an offset without loading. A chunk is written
into ``.chunk_XXXXXX.tmp/``, fsynced and renamed, so a visible ``chunk_XXXXXX`` is always
complete; readers ignore dot-folders. The manifest lists the chunks it *commits*
(``splits.<split>.chunk_lengths``); it is rewritten atomically after every chunk, so a
collection killed at any point leaves a valid dataset (a chunk renamed just before the kill
but not yet in the manifest is "uncommitted": readers skip it, ``collect --resume`` adopts it).
A writer whose unit is larger than a chunk (``import-video``: one video) records the unit's
chunks in one manifest write when the unit is complete (:meth:`DatasetWriter.record_pending`);
its resume deletes the uncommitted chunks of an unfinished unit (:func:`remove_uncommitted`).
"""

from __future__ import annotations

import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lapo.checkpoint import CheckpointError, read_json, write_json
from lapo.envs.procgen import NUM_ACTIONS, OBS_SHAPE

FORMAT_VERSION = 1
SPLITS: tuple[str, ...] = ("train", "test")
FRAME_BYTES = int(np.prod(OBS_SHAPE))  # 12,288 bytes per 64x64x3 frame
MANIFEST = "manifest.json"

# name -> dtype. Every array is (n,) except obs (n, 64, 64, 3); actions and rewards are
# absent from action-free data (manifest has_actions / has_rewards false).
FIELDS: dict[str, np.dtype] = {
    "obs": np.dtype(np.uint8),
    "actions": np.dtype(np.int64),
    "rewards": np.dtype(np.float32),
    "dones": np.dtype(np.bool_),
    "episode_ids": np.dtype(np.int64),
    "level_seeds": np.dtype(np.int64),
}
SMALL_FIELDS: tuple[str, ...] = tuple(f for f in FIELDS if f != "obs")
_CHUNK_RE = re.compile(r"^chunk_(\d{6,})$")


class DatasetError(CheckpointError):
    """A dataset folder is missing, incomplete or malformed; the message says what to do."""


def chunk_name(index: int) -> str:
    """``chunk_000042`` for ``index`` 42."""
    return f"chunk_{index:06d}"


def chunk_index(name: str) -> int | None:
    """The index of a chunk folder name, or None when ``name`` is not one."""
    m = _CHUNK_RE.match(name)
    return int(m.group(1)) if m else None


def visible_chunks(split_dir: Path) -> list[str]:
    """Names of the complete (renamed) chunk folders in ``split_dir``, in index order."""
    split_dir = Path(split_dir)
    if not split_dir.is_dir():
        return []
    names = [p.name for p in split_dir.iterdir() if p.is_dir() and chunk_index(p.name) is not None]
    return sorted(names, key=lambda n: chunk_index(n))  # type: ignore[arg-type, return-value]


def remove_uncommitted(root: Path, manifest: dict) -> list[str]:
    """Delete what a killed writer left that ``manifest`` does not list: unfinished
    ``.chunk_*.tmp`` folders and visible chunks it had not recorded yet. Returns what went.

    For writers that commit several chunks at once (:meth:`DatasetWriter.record_pending`):
    an unrecorded chunk is part of an unfinished unit, which is written again from its start.
    """
    gone = []
    for split in SPLITS:
        split_dir = Path(root) / split
        if not split_dir.is_dir():
            continue
        committed = manifest["splits"][split]["chunk_lengths"]
        for p in sorted(split_dir.iterdir()):
            unfinished = p.name.startswith(".chunk_") and p.name.endswith(".tmp")
            if p.is_dir() and (unfinished or (_CHUNK_RE.match(p.name) and p.name not in committed)):
                shutil.rmtree(p)
                gone.append(f"{split}/{p.name}")
    return gone


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _npy_header(dtype: np.dtype, shape: tuple[int, ...]) -> bytes:
    """The .npy (version 1.0) header for a C-order array of ``dtype`` and ``shape``.

    numpy pads the header so that axis 0 can grow to 21 digits with the same header length;
    that is what lets :class:`ChunkWriter` write the header first and fix ``n`` at the end.
    """
    import io

    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        buf, {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False, "shape": shape}
    )
    return buf.getvalue()


class ChunkWriter:
    """Writes one chunk: frames are appended, then :meth:`commit` makes it visible at once.

    Observations stream straight into ``.chunk_XXXXXX.tmp/obs.npy`` so memory stays flat
    however long the chunk; the small per-frame arrays are kept in lists until commit.
    """

    def __init__(
        self, split_dir: Path, index: int, has_actions: bool = True, has_rewards: bool = True
    ) -> None:
        self.split_dir = Path(split_dir)
        self.index = index
        self.name = chunk_name(index)
        self.has_actions = has_actions
        self.has_rewards = has_rewards
        self.tmp = self.split_dir / f".{self.name}.tmp"
        if (self.split_dir / self.name).exists():
            raise DatasetError(f"{self.split_dir / self.name} already exists; not overwriting it")
        if self.tmp.exists():  # left by a killed writer; it was never visible
            shutil.rmtree(self.tmp)
        self.tmp.mkdir(parents=True)
        self._header = _npy_header(FIELDS["obs"], (0, *OBS_SHAPE))
        self._obs = open(self.tmp / "obs.npy", "wb", buffering=1 << 20)  # noqa: SIM115
        self._obs.write(self._header)
        self._small: dict[str, list] = {f: [] for f in SMALL_FIELDS}
        self.frames = 0

    def __len__(self) -> int:
        return self.frames

    def append(
        self,
        obs: np.ndarray,
        dones: np.ndarray,
        episode_ids: np.ndarray,
        level_seeds: np.ndarray,
        actions: np.ndarray | None = None,
        rewards: np.ndarray | None = None,
    ) -> None:
        """Append ``m`` frames: ``obs`` ``(m, 64, 64, 3)`` uint8, the others ``(m,)``."""
        obs = np.asarray(obs)
        if obs.dtype != np.uint8 or obs.shape[1:] != OBS_SHAPE:
            raise DatasetError(f"obs must be (m, 64, 64, 3) uint8, got {obs.shape} {obs.dtype}")
        if (actions is None) == self.has_actions or (rewards is None) == self.has_rewards:
            raise DatasetError("actions / rewards given do not match has_actions / has_rewards")
        m = len(obs)
        given = {
            "dones": dones,
            "episode_ids": episode_ids,
            "level_seeds": level_seeds,
            "actions": actions,
            "rewards": rewards,
        }
        for name, value in given.items():
            if value is None:
                continue
            arr = np.asarray(value).astype(FIELDS[name], copy=False).reshape(-1)
            if len(arr) != m:
                raise DatasetError(f"{name} has {len(arr)} frames, obs has {m}")
            self._small[name].extend(arr.tolist())
        self._obs.write(np.ascontiguousarray(obs).data)
        self.frames += m

    def append_frame(
        self,
        obs: np.ndarray,
        done: bool,
        episode_id: int,
        level_seed: int,
        action: int | None = None,
        reward: float | None = None,
    ) -> None:
        """Append one frame, ``obs`` ``(64, 64, 3)`` C-contiguous uint8 (the collector's fast path)."""
        self._obs.write(obs.data)
        s = self._small
        s["dones"].append(done)
        s["episode_ids"].append(episode_id)
        s["level_seeds"].append(level_seed)
        if self.has_actions:
            s["actions"].append(action)
        if self.has_rewards:
            s["rewards"].append(reward)
        self.frames += 1

    def commit(self) -> Path:
        """Finish the files, fsync them and rename the folder into place; returns its path."""
        if self.frames == 0:
            raise DatasetError("refusing to commit an empty chunk")
        header = _npy_header(FIELDS["obs"], (self.frames, *OBS_SHAPE))
        if len(header) != len(self._header):  # cannot happen with numpy's growth padding
            raise DatasetError("obs.npy header changed length; cannot finish chunk in place")
        self._obs.flush()
        self._obs.seek(0)
        self._obs.write(header)
        self._obs.flush()
        os.fsync(self._obs.fileno())
        self._obs.close()
        for name in SMALL_FIELDS:
            if not self._small[name]:
                continue
            arr = np.array(self._small[name], dtype=FIELDS[name])
            with open(self.tmp / f"{name}.npy", "wb") as f:
                np.lib.format.write_array(f, arr, allow_pickle=False)
                f.flush()
                os.fsync(f.fileno())
        _fsync_dir(self.tmp)
        final = self.split_dir / self.name
        os.rename(self.tmp, final)
        _fsync_dir(self.split_dir)
        return final

    def abort(self) -> None:
        """Drop the unfinished chunk."""
        if not self._obs.closed:
            self._obs.close()
        shutil.rmtree(self.tmp, ignore_errors=True)


# ---------------------------------------------------------------------------------------------
# Manifest


def empty_split() -> dict[str, Any]:
    """The manifest entry of a split with no data."""
    return {
        "frames": 0,
        "chunks": 0,
        "episodes_completed": 0,
        "mean_return": None,
        "chunk_lengths": {},
    }


def new_manifest(
    game: str,
    env: dict,
    policy: dict,
    has_actions: bool,
    chunk_frames: int,
    seed: int | None,
    created_by: dict,
    has_rewards: bool | None = None,
) -> dict[str, Any]:
    """A manifest for an empty dataset; :func:`record_chunk` fills it in."""
    return {
        "format_version": FORMAT_VERSION,
        "game": game,
        "env": env,
        "policy": policy,
        "has_actions": has_actions,
        "has_rewards": has_actions if has_rewards is None else has_rewards,
        "obs_shape": list(OBS_SHAPE),
        "splits": {s: empty_split() for s in SPLITS},
        "policy_mean_return": None,
        "chunk_frames": chunk_frames,
        "seed": seed,
        "created_by": created_by,
        "next_episode_id": 0,
    }


def refresh_policy_return(manifest: dict) -> None:
    """Set ``policy_mean_return``: the mean over completed episodes of both splits."""
    n = sum(s["episodes_completed"] for s in manifest["splits"].values())
    total = sum(
        s["mean_return"] * s["episodes_completed"]
        for s in manifest["splits"].values()
        if s["episodes_completed"]
    )
    manifest["policy_mean_return"] = total / n if n else None


def record_chunk(
    manifest: dict, split: str, name: str, frames: int, episode_returns: list[float]
) -> None:
    """Count a committed chunk of ``frames`` frames in which ``episode_returns`` episodes ended."""
    s = manifest["splits"][split]
    if name in s["chunk_lengths"]:
        raise DatasetError(f"{split}/{name} is already in the manifest")
    s["chunk_lengths"][name] = int(frames)
    s["chunks"] = len(s["chunk_lengths"])
    s["frames"] += int(frames)
    if episode_returns:
        n0 = s["episodes_completed"]
        total = (s["mean_return"] or 0.0) * n0 + float(np.sum(episode_returns, dtype=np.float64))
        s["episodes_completed"] = n0 + len(episode_returns)
        s["mean_return"] = total / s["episodes_completed"]
    refresh_policy_return(manifest)


class DatasetWriter:
    """Owns a dataset folder being written: hands out chunk writers, commits them to the manifest.

    The one implementation of writing data, shared by ``collect``, ``import-lapo`` and
    ``import-video``.
    """

    def __init__(self, root: Path, manifest: dict) -> None:
        self.root = Path(root)
        self.manifest = manifest
        self._next_index = {
            s: 1 + max([chunk_index(n) for n in visible_chunks(self.root / s)], default=-1)
            for s in SPLITS
        }
        self._pending: list[tuple[str, str, int, list[float]]] = []

    def write_manifest(self) -> None:
        write_json(self.root / MANIFEST, self.manifest)

    def new_chunk(self, split: str) -> ChunkWriter:
        index = self._next_index[split]
        self._next_index[split] += 1
        return ChunkWriter(
            self.root / split,
            index,
            has_actions=self.manifest["has_actions"],
            has_rewards=self.manifest["has_rewards"],
        )

    def commit(
        self, split: str, writer: ChunkWriter, episode_returns: list[float], defer: bool = False
    ) -> None:
        """Make ``writer``'s chunk visible, then record it in the manifest (in that order).

        With ``defer`` the chunk is made visible but stays uncommitted (readers skip it) until
        :meth:`record_pending` records it with the others in one manifest write: how a unit of
        work larger than a chunk (an imported video) appears in the dataset all at once.
        """
        writer.commit()
        self._pending.append((split, writer.name, writer.frames, list(episode_returns)))
        if not defer:
            self.record_pending()

    def record_pending(self) -> None:
        """Record the chunks committed with ``defer`` in the manifest, in one atomic write."""
        for split, name, frames, returns in self._pending:
            record_chunk(self.manifest, split, name, frames, returns)
        self._pending = []
        self.write_manifest()

    def drop_pending(self) -> None:
        """Delete the chunks committed with ``defer`` and not yet recorded (their names are
        handed out again)."""
        for split, name, *_ in self._pending:
            shutil.rmtree(self.root / split / name, ignore_errors=True)
            self._next_index[split] = min(self._next_index[split], chunk_index(name))  # type: ignore[type-var]
        self._pending = []


# ---------------------------------------------------------------------------------------------
# Reading and validation


@dataclass
class NpyInfo:
    """Where an .npy file's data lies and what it holds."""

    shape: tuple[int, ...]
    dtype: np.dtype
    offset: int
    """Byte offset of the first element (the header length)."""
    file_size: int


def read_npy_header(path: Path) -> NpyInfo:
    """Parse an .npy header with numpy's own reader (no pickle); raises ``ValueError``/``OSError``."""
    with open(path, "rb") as f:
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
        elif version == (2, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
        else:
            raise ValueError(f"unsupported .npy version {version}")
        if fortran and len(shape) > 1:
            raise ValueError("array is stored in Fortran order")
        return NpyInfo(tuple(shape), np.dtype(dtype), f.tell(), os.fstat(f.fileno()).st_size)


@dataclass
class ChunkInfo:
    """One committed chunk: its folder, length and where its frames start in obs.npy."""

    path: Path
    frames: int
    obs_offset: int


@dataclass
class DatasetInfo:
    """A checked dataset: its manifest and, per split, its committed chunks in order."""

    root: Path
    manifest: dict
    chunks: dict[str, list[ChunkInfo]] = field(default_factory=dict)
    uncommitted: list[str] = field(default_factory=list)
    """Visible chunk folders the manifest does not list (a kill between rename and manifest)."""

    @property
    def has_actions(self) -> bool:
        return bool(self.manifest["has_actions"])

    @property
    def has_rewards(self) -> bool:
        return bool(self.manifest.get("has_rewards", self.manifest["has_actions"]))

    def frames(self, split: str) -> int:
        return sum(c.frames for c in self.chunks[split])


def _imported(manifest: dict) -> bool:
    """Imported data (reference .npz files, videos) is re-imported, not collected again."""
    return (manifest.get("policy") or {}).get("kind") in ("imported-lapo", "video")


def more_data_hint(manifest: dict, split: str = "train") -> str:
    """What to do when a dataset holds too little for a command, by where its data came from."""
    kind = (manifest.get("policy") or {}).get("kind")
    if kind == "video":
        if split == "test":
            return (
                "import the videos again into a new folder with a larger --test-fraction (one "
                "video: its last --test-fraction becomes the test split)"
            )
        return "import longer videos, more of them or a higher --fps into a new folder"
    if kind == "imported-lapo":
        return "import more of the reference data (lapo data import-lapo) into a new folder"
    flag = "--test-frames" if split == "test" else "--frames"
    return f"collect more (lapo collect ... {flag} N)"


def _fix_hint(manifest: dict) -> str:
    """What to do about a broken chunk: a collection can drop it and collect its frames again."""
    if _imported(manifest):
        return "import the source again into a new folder"
    return "delete that chunk folder and re-run collect with --resume"


def _recount_hint(manifest: dict) -> str:
    if _imported(manifest):
        return "import the source again into a new folder"
    return "re-run collect with --resume, which recounts the chunks present"


def read_manifest(root: Path) -> dict:
    """Read and check ``root/manifest.json``; raises :class:`DatasetError`."""
    root = Path(root)
    path = root / MANIFEST
    if not root.is_dir():
        raise DatasetError(f"{root} does not exist or is not a folder; collect a dataset into it")
    if not path.is_file():
        raise DatasetError(
            f"{path} is missing: {root} is not a lapo dataset; collect one with 'lapo collect'"
        )
    try:
        m = read_json(path)
    except CheckpointError as e:
        raise DatasetError(str(e)) from None
    if not isinstance(m, dict):
        raise DatasetError(f"{path} is not a lapo manifest (not a JSON object); restore it")
    version = m.get("format_version")
    if version != FORMAT_VERSION:
        raise DatasetError(
            f"{path} has format_version {version!r}; this lapo reads version {FORMAT_VERSION}"
        )
    required = ("game", "has_actions", "splits", "obs_shape", "next_episode_id")
    missing = [k for k in required if k not in m]
    if missing:
        raise DatasetError(
            f"{path} lacks {', '.join(missing)}; restore it or re-create the dataset"
        )
    if list(m["obs_shape"]) != list(OBS_SHAPE):
        shape = "x".join(map(str, m["obs_shape"]))
        raise DatasetError(
            f"{path} holds {shape} frames; lapo's networks take 64x64x3 Procgen frames"
        )
    for s in SPLITS:
        entry = m["splits"].get(s)
        if not isinstance(entry, dict) or not isinstance(entry.get("chunk_lengths"), dict):
            raise DatasetError(f"{path} has no valid splits.{s}.chunk_lengths; restore it")
    return m


def check_chunk(path: Path, manifest: dict, expected: int | None) -> tuple[list[str], ChunkInfo]:
    """Header-level checks of one chunk folder; returns (problems, info). Reads no frame data."""
    path = Path(path)
    problems: list[str] = []
    hint = _fix_hint(manifest)
    has = {
        "actions": bool(manifest["has_actions"]),
        "rewards": bool(manifest.get("has_rewards", manifest["has_actions"])),
    }
    lengths: dict[str, int] = {}
    obs_offset = 0
    if not path.is_dir():
        problem = (
            f"{path} is missing (manifest.json lists it): restore it, or {_recount_hint(manifest)}"
        )
        return [problem], ChunkInfo(path, 0, 0)
    for name, dtype in FIELDS.items():
        f = path / f"{name}.npy"
        wanted = has.get(name, True)
        if not f.is_file():
            if wanted:
                problems.append(f"{f} is missing: {hint}")
            continue
        if not wanted:
            continue  # e.g. actions of an action-free dataset: ignored
        try:
            info = read_npy_header(f)
        except (ValueError, OSError, EOFError) as e:
            problems.append(f"{f} is not a readable .npy file ({e}): {hint}")
            continue
        want_shape_tail = OBS_SHAPE if name == "obs" else ()
        if info.dtype != dtype:
            problems.append(
                f"{f} has dtype {info.dtype}, expected {dtype}: the file was not written by lapo; "
                f"{hint}"
            )
            continue
        if len(info.shape) != 1 + len(want_shape_tail) or info.shape[1:] != want_shape_tail:
            want = "(n, 64, 64, 3)" if name == "obs" else "(n,)"
            problems.append(f"{f} has shape {info.shape}, expected {want}: {hint}")
            continue
        n = info.shape[0]
        per = dtype.itemsize * (FRAME_BYTES if name == "obs" else 1)
        data = info.file_size - info.offset
        if data < n * per:
            problems.append(
                f"{f} is truncated (expected {n} frames, found {max(data, 0) // per}): {hint}"
            )
            continue
        if data > n * per:
            problems.append(f"{f} has {data - n * per} bytes after its {n} frames: {hint}")
            continue
        lengths[name] = n
        if name == "obs":
            obs_offset = info.offset
    if not problems:
        if len(set(lengths.values())) > 1:
            detail = ", ".join(f"{k} {v}" for k, v in lengths.items())
            problems.append(f"{path} holds arrays of different lengths ({detail}): {hint}")
        elif lengths and expected is not None and lengths["obs"] != expected:
            problems.append(
                f"{path} has {lengths['obs']} frames but manifest.json says {expected}: {hint}"
            )
        elif lengths.get("obs") == 0:
            problems.append(f"{path} holds no frames: {hint}")
    return problems, ChunkInfo(path, lengths.get("obs", 0), obs_offset)


def check_chunk_content(path: Path, manifest: dict) -> list[str]:
    """Checks that read the small arrays: episode ids ordered and consistent with dones."""
    path = Path(path)
    hint = _fix_hint(manifest)
    ids = np.load(path / "episode_ids.npy", allow_pickle=False)
    dones = np.load(path / "dones.npy", allow_pickle=False)
    problems = []
    step = np.diff(ids)
    if (step < 0).any():
        problems.append(f"{path}/episode_ids.npy decreases within the chunk: {hint}")
    elif (step.astype(bool) != dones[:-1]).any():
        t = int(np.flatnonzero(step.astype(bool) != dones[:-1])[0])
        problems.append(
            f"{path}: episode id changes where dones is not set (or the reverse) at frame {t}: "
            f"the chunk is inconsistent; {hint}"
        )
    if manifest["has_actions"] and (path / "actions.npy").is_file():
        a = np.load(path / "actions.npy", allow_pickle=False)
        if len(a) and (a.min() < 0 or a.max() >= NUM_ACTIONS):
            problems.append(f"{path}/actions.npy holds actions outside [0, {NUM_ACTIONS}): {hint}")
    return problems


def find_problems(root: Path, deep: bool = True) -> tuple[DatasetInfo | None, list[str]]:
    """Check a dataset; returns ``(info, problems)``, ``info`` None when the manifest is unusable.

    ``deep`` also reads the small per-frame arrays (a few bytes per frame) to check episode ids.
    """
    root = Path(root)
    try:
        manifest = read_manifest(root)
    except DatasetError as e:
        return None, [str(e)]
    info = DatasetInfo(root, manifest, {s: [] for s in SPLITS})
    problems: list[str] = []
    for split in SPLITS:
        entry = manifest["splits"][split]
        committed = entry["chunk_lengths"]
        for name, expected in committed.items():
            p, chunk = check_chunk(root / split / name, manifest, int(expected))
            if not p and deep:
                p = check_chunk_content(root / split / name, manifest)
            problems += p
            info.chunks[split].append(chunk)
        info.uncommitted += [
            f"{split}/{n}" for n in visible_chunks(root / split) if n not in committed
        ]
        total = sum(int(v) for v in committed.values())
        if entry.get("frames") != total or entry.get("chunks") != len(committed):
            problems.append(
                f"{root / MANIFEST}: splits.{split} says {entry.get('frames')} frames in "
                f"{entry.get('chunks')} chunks but lists {total} frames in {len(committed)}; "
                f"{_recount_hint(manifest)}"
            )
    return info, problems


def validate_dataset(root: Path, deep: bool = True) -> DatasetInfo:
    """Check manifest and every committed chunk; raise :class:`DatasetError` on the first problem.

    The message names the file and what to do, and counts any further problems.
    """
    info, problems = find_problems(root, deep=deep)
    if problems:
        more = f" (and {len(problems) - 1} more problems)" if len(problems) > 1 else ""
        raise DatasetError(problems[0] + more)
    assert info is not None
    return info


def open_dataset(root: Path) -> DatasetInfo:
    """Open a dataset for reading: header-level validation only (fast for any size)."""
    return validate_dataset(root, deep=False)


def load_small(chunk: ChunkInfo, name: str) -> np.ndarray:
    """Load one small per-frame array ``(n,)`` of a chunk into memory."""
    return np.load(chunk.path / f"{name}.npy", allow_pickle=False)


def disk_bytes(root: Path) -> int:
    """Bytes of all committed chunk files under ``root`` (what the data costs on disk)."""
    info = open_dataset(root)
    return sum(
        f.stat().st_size for split in SPLITS for c in info.chunks[split] for f in c.path.iterdir()
    )
