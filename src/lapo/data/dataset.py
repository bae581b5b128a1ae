"""Windows of ``k`` consecutive frames of one episode, sampled uniformly from a dataset.

Host memory does not grow with the dataset: observations are never held or memory-mapped
(pages of a memory map that is read at random stay in the process's RSS); each window's
``k`` frames are one ``os.preadv`` of ``k * 12288`` bytes from its chunk's ``obs.npy``
straight into the batch array. Only the small per-frame arrays (episode ids, dones,
actions, rewards, level seeds: 29 bytes a frame) and the index of valid window starts
(8 bytes a window) live in RAM.

:class:`DeviceWindows` hands training loops batches as tensors on their device; asked to
(``data_on_device``), it holds the split's frames there as uint8 (a GPU's memory fits
millions of frames) and gathers each batch's windows without a trip through the host.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lapo.data.format import (
    FRAME_BYTES,
    DatasetError,
    load_small,
    more_data_hint,
    open_dataset,
)
from lapo.envs.procgen import OBS_SHAPE


def valid_window_starts(episode_ids: np.ndarray, dones: np.ndarray, k: int) -> np.ndarray:
    """Starts ``s`` of one chunk's windows ``[s, s + k)`` that stay inside one episode.

    ``episode_ids`` and ``dones`` are the chunk's ``(n,)`` arrays; returns int64 ``(m,)``.
    A window is valid when all its frames share one episode id and no episode ends before
    its last frame (``dones`` False on its first ``k - 1`` frames).
    """
    n = len(episode_ids)
    m = n - k + 1
    if m <= 0:
        return np.zeros(0, np.int64)
    same = episode_ids[:m] == episode_ids[k - 1 :]
    ends = np.concatenate([[0], np.cumsum(dones, dtype=np.int64)])  # (n + 1,)
    no_end = ends[k - 1 : k - 1 + m] - ends[:m] == 0  # dones on [s, s + k - 1)
    return np.flatnonzero(same & no_end).astype(np.int64)


class WindowDataset:
    """Uniform sampling of ``k``-frame windows from one split of a dataset folder.

    ``sample(B, rng)`` returns ``obs`` uint8 ``(B, k, 64, 64, 3)``, ``dones``,
    ``episode_ids``, ``level_seeds`` ``(B, k)``, ``actions`` int64 ``(B, k)`` and ``rewards``
    float32 ``(B, k)`` when the dataset has them, and ``index`` int64 ``(B,)``: the global
    frame position of each window's first frame (frames numbered across the split's
    chunks in order).
    """

    def __init__(
        self,
        path: str | Path,
        split: str = "train",
        k: int = 3,
        read_threads: int = 1,
        max_open_files: int = 1024,
    ) -> None:
        if k < 1:
            raise ValueError(f"k must be at least 1, got {k}")
        self.path = Path(path)
        self.info = open_dataset(self.path)
        if split not in self.info.chunks:
            raise DatasetError(f"unknown split {split!r}: choose train or test")
        self.split = split
        self.k = k
        self.has_actions = self.info.has_actions
        self.has_rewards = self.info.has_rewards
        chunks = self.info.chunks[split]
        lengths = np.array([c.frames for c in chunks], np.int64)
        self.frames = int(lengths.sum())
        if self.frames < k:
            raise DatasetError(
                f"{self.path} has {self.frames} frames in split {split!r}, a window needs {k}: "
                + more_data_hint(self.info.manifest, split)
            )
        # (C + 1,) first global frame of each chunk, and where its frames start in obs.npy.
        self._chunk_start = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        self._obs_offset = np.array([c.obs_offset for c in chunks], np.int64)
        self._obs_paths = [c.path / "obs.npy" for c in chunks]
        names = ["episode_ids", "dones", "level_seeds"]
        names += ["actions"] if self.has_actions else []
        names += ["rewards"] if self.has_rewards else []
        self.arrays: dict[str, np.ndarray] = {
            name: np.concatenate([load_small(c, name) for c in chunks]) for name in names
        }
        starts = []
        for c, (a, b) in enumerate(zip(self._chunk_start[:-1], self._chunk_start[1:], strict=True)):
            ids = self.arrays["episode_ids"][a:b]
            if len(ids) != lengths[c]:
                raise DatasetError(f"{chunks[c].path} changed while it was being read; retry")
            starts.append(a + valid_window_starts(ids, self.arrays["dones"][a:b], k))
        self.starts = np.concatenate(starts)  # (W,) int64 global window starts
        if len(self.starts) == 0:
            raise DatasetError(
                f"{self.path} split {split!r} has {self.frames} frames but no {k} consecutive "
                "frames inside one episode: " + more_data_hint(self.info.manifest, split)
            )
        self.max_open_files = max_open_files
        self._fds: dict[int, int] = {}
        # Reads from a cold page cache wait on the disk; a few threads keep several requests in
        # flight (preadv releases the GIL). From a warm cache one thread is fastest.
        self.read_threads = read_threads
        self._pool: Any = None

    def __len__(self) -> int:
        """Number of valid windows."""
        return len(self.starts)

    # Open file descriptors do not survive pickling (e.g. to a spawned DataLoader worker).
    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_fds"], state["_pool"] = {}, None
        return state

    def _fd(self, chunk: int) -> int:
        fd = self._fds.get(chunk)
        if fd is None:
            fd = os.open(self._obs_paths[chunk], os.O_RDONLY)
            self._fds[chunk] = fd
        return fd

    def _close_files(self) -> None:
        fds, self._fds = self._fds, {}
        for fd in fds.values():
            os.close(fd)

    def close(self) -> None:
        """Close the open obs files (they reopen on the next read) and the reader threads."""
        self._close_files()
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None

    def __del__(self) -> None:
        # At interpreter shutdown os may be gone already.
        with contextlib.suppress(Exception):
            self.close()

    def read(self, starts: np.ndarray, out: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """The windows beginning at global frames ``starts`` ``(B,)`` (see :meth:`sample`).

        ``out``, if given, is a uint8 ``(B, k, 64, 64, 3)`` C-contiguous array to fill.
        ``starts`` must be valid window starts (elements of ``self.starts``).
        """
        starts = np.asarray(starts, np.int64)
        B, k = len(starts), self.k
        if out is None:
            out = np.empty((B, k, *OBS_SHAPE), np.uint8)
        elif out.shape != (B, k, *OBS_SHAPE) or out.dtype != np.uint8 or not out.flags.c_contiguous:
            raise ValueError(f"out must be C-contiguous uint8 {(B, k, *OBS_SHAPE)}")
        chunk = np.searchsorted(self._chunk_start, starts, side="right") - 1  # (B,)
        offset = self._obs_offset[chunk] + (starts - self._chunk_start[chunk]) * FRAME_BYTES
        size = k * FRAME_BYTES
        flat = memoryview(out).cast("B")
        if len(self._fds) + B > self.max_open_files:
            self._close_files()  # bounded cache of open files; a batch needs at most B
        fds = [self._fd(int(c)) for c in chunk]  # opened here: _fd is not thread-safe

        def read_range(lo: int, hi: int) -> None:
            for b in range(lo, hi):
                got = os.preadv(fds[b], [flat[b * size : (b + 1) * size]], int(offset[b]))
                if got != size:
                    raise DatasetError(
                        f"{self._obs_paths[chunk[b]]} ended early (read {got} of {size} bytes "
                        f"at {offset[b]}): the file changed or is truncated; run "
                        f"'lapo data info {self.path}'"
                    )

        if self.read_threads > 1 and B > 1:
            from concurrent.futures import ThreadPoolExecutor

            if self._pool is None:
                self._pool = ThreadPoolExecutor(self.read_threads)
            bounds = np.linspace(0, B, self.read_threads + 1).astype(int)
            jobs = [
                self._pool.submit(read_range, lo, hi)
                for lo, hi in zip(bounds[:-1], bounds[1:], strict=True)
            ]
            for job in jobs:
                job.result()
        else:
            read_range(0, B)
        return {"obs": out, **self.labels_at(starts)}

    def labels_at(self, starts: np.ndarray) -> dict[str, np.ndarray]:
        """Everything :meth:`read` returns but the frames: the per-frame arrays ``(B, k)`` of
        the windows at ``starts`` and ``index`` (``starts``), from RAM."""
        starts = np.asarray(starts, np.int64)
        frames = starts[:, None] + np.arange(self.k)  # (B, k) global frame numbers
        return {"index": starts, **{name: arr[frames] for name, arr in self.arrays.items()}}

    def all_frames(self, out: torch.Tensor) -> torch.Tensor:
        """Fill ``out`` ``(frames, 64, 64, 3)`` uint8 (on any device) with every frame of the
        split, in global frame order, one chunk at a time; returns ``out``."""
        for c, path in enumerate(self._obs_paths):
            a, b = int(self._chunk_start[c]), int(self._chunk_start[c + 1])
            chunk = np.fromfile(
                path, np.uint8, (b - a) * FRAME_BYTES, offset=int(self._obs_offset[c])
            )
            if chunk.size != (b - a) * FRAME_BYTES:
                raise DatasetError(f"{path} ended early: the file changed or is truncated")
            out[a:b].copy_(torch.from_numpy(chunk.reshape(b - a, *OBS_SHAPE)))
        return out

    def chunks(self, starts: np.ndarray, size: int = 512) -> Iterator[dict[str, np.ndarray]]:
        """The windows at ``starts`` read ``size`` at a time (a split may not fit in memory):
        :meth:`read` batches, in order."""
        for i in range(0, len(starts), size):
            yield self.read(starts[i : i + size])

    def sample(self, batch_size: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
        """``batch_size`` windows drawn uniformly (with replacement) from all valid windows.

        Returns ``obs`` uint8 ``(B, k, 64, 64, 3)``; ``actions`` int64, ``rewards`` float32,
        ``dones`` bool, ``episode_ids`` and ``level_seeds`` int64, each ``(B, k)``; ``index``
        int64 ``(B,)`` global start frames.
        """
        return self.read(self.draw(batch_size, rng))

    def draw(self, batch_size: int, rng: np.random.Generator) -> np.ndarray:
        """``batch_size`` valid window starts ``(B,)`` drawn uniformly (with replacement)."""
        return self.starts[rng.integers(0, len(self.starts), batch_size)]

    def batches(self, batch_size: int, seed: int = 0) -> Iterator[dict[str, np.ndarray]]:
        """An endless stream of :meth:`sample` batches from ``np.random.default_rng(seed)``."""
        rng = np.random.default_rng(seed)
        while True:
            yield self.sample(batch_size, rng)


def to_torch(batch: dict[str, np.ndarray], device: Any = "cpu") -> dict[str, Any]:
    """Move a batch to ``device`` as tensors, keeping dtypes (obs stays uint8: 4x less to copy).

    The consumer converts on the device, e.g. ``obs.float() / 255 - 0.5``.
    """
    return {
        k: torch.from_numpy(np.ascontiguousarray(v)).to(device, non_blocking=True)
        for k, v in batch.items()
    }


def _free_bytes(device: torch.device) -> int:
    """Memory free for data on ``device``: the GPU's free memory less a quarter of it for the
    models and activations, or on the CPU half of the available RAM."""
    if device.type == "cuda":
        free, total = torch.cuda.mem_get_info(device)
        return int(free - total // 4)
    return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // 2)


class DeviceWindows:
    """Batches of ``ds``'s windows as tensors on ``device``.

    ``windows(starts)`` returns :meth:`WindowDataset.read`'s batch with ``obs`` a uint8 tensor
    ``(B, k, 64, 64, 3)`` on ``device`` (the small arrays stay numpy). With ``resident`` the
    split's frames are uploaded once (uint8, 12,288 bytes a frame; ``frames`` shares another
    reader's upload of the same split) and each batch is gathered on the device from the
    starts alone; if they do not fit, a one-line warning says so and batches are read from
    disk. Copies to the device never wait for the device (``non_blocking``).
    """

    def __init__(
        self,
        ds: WindowDataset,
        device: torch.device,
        resident: bool = False,
        frames: torch.Tensor | None = None,
    ) -> None:
        self.ds, self.device = ds, device
        self.frames = frames
        if resident and frames is None:
            need = ds.frames * FRAME_BYTES
            if need <= _free_bytes(device):
                empty = torch.empty((ds.frames, *OBS_SHAPE), dtype=torch.uint8, device=device)
                self.frames = ds.all_frames(empty)
            else:
                import sys

                print(
                    f"lapo: --data-on-device: the {ds.split} split's {need / 2**30:.1f} GiB of "
                    f"frames do not fit in {device}'s free memory; reading batches from disk",
                    file=sys.stderr,
                )
        self._steps = torch.arange(ds.k, device=device)

    @property
    def resident(self) -> bool:
        return self.frames is not None

    def __call__(self, starts: np.ndarray) -> dict[str, Any]:
        batch: dict[str, Any] = self.ds.labels_at(starts)
        if self.frames is None:
            obs = torch.from_numpy(self.ds.read(starts)["obs"])
            batch["obs"] = obs.to(self.device, non_blocking=True)
        else:
            index = torch.from_numpy(np.asarray(starts, np.int64)).to(
                self.device, non_blocking=True
            )
            batch["obs"] = self.frames[index[:, None] + self._steps]  # (B, k, 64, 64, 3)
        return batch
