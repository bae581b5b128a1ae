"""Record a policy playing Procgen into a dataset folder (format: :mod:`lapo.data.format`).

Each of the ``num_envs`` environments fills its own chunk; a chunk is committed when it
reaches ``chunk_frames`` frames, and the remainders when the frame budget is spent, so the
dataset holds exactly the requested number of frames. Train and test come from disjoint
level ranges (``SPLIT_START_LEVEL``). A killed collection leaves a valid dataset of the
chunks committed so far; ``resume=True`` continues it to the target.

Two of Procgen's rendering options serve as diagnostics of stage 1, for measurement only
(../shared/LATENT_ACTION_RESEARCH.md): ``paint_velocity`` (Procgen's ``paint_vel_info``: the
agent's velocity painted as grey squares in a corner) and ``backgrounds=False``
(``use_backgrounds=False``: no background images). Either one is recorded in the manifest's
``env.procgen_options``, and a resume must ask for the same.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np

from lapo.data.format import (
    MANIFEST,
    SPLITS,
    DatasetError,
    DatasetWriter,
    check_chunk,
    check_chunk_content,
    disk_bytes,
    empty_split,
    load_small,
    new_manifest,
    read_manifest,
    record_chunk,
    refresh_policy_return,
    visible_chunks,
)
from lapo.envs.procgen import LEVELS_PER_SPLIT, SPLIT_START_LEVEL, ProcgenVecEnv, check_game


def _split_seed(seed: int, existing_chunks: int, split: str) -> int:
    # Resumed runs must not replay the levels and actions already recorded, so the seed moves
    # with the number of chunks on disk; procgen wants a non-negative int32.
    return (seed * 1_000_003 + 2 * existing_chunks + SPLITS.index(split)) % (2**31 - 1)


def _rescan(root: Path, manifest: dict) -> list[str]:
    """Bring ``manifest`` in line with the chunk folders on disk before a resume.

    Unfinished ``.tmp`` folders are removed. A visible chunk that the manifest does not list
    (renamed just before a kill) is adopted; a listed chunk that is gone (the user deleted a
    broken one, as told) is dropped. Statistics are then recounted from the data. Returns
    what changed, for the summary.
    """
    changes: list[str] = []
    for split in SPLITS:
        split_dir = root / split
        if split_dir.is_dir():
            for p in split_dir.iterdir():
                if p.is_dir() and p.name.startswith(".chunk_") and p.name.endswith(".tmp"):
                    shutil.rmtree(p)
                    changes.append(f"removed unfinished {split}/{p.name}")
        entry = manifest["splits"][split]
        committed = entry["chunk_lengths"]
        names = visible_chunks(split_dir)
        for name in names:
            problems, _ = check_chunk(split_dir / name, manifest, committed.get(name))
            if not problems:
                problems = check_chunk_content(split_dir / name, manifest)
            if problems:
                raise DatasetError(problems[0])
        if set(names) == set(committed):
            continue
        changes += [f"adopted {split}/{n}" for n in names if n not in committed]
        changes += [f"dropped missing {split}/{n}" for n in committed if n not in names]
        manifest["splits"][split] = fresh = empty_split()
        ids, rewards, dones = [], [], []
        for name in names:
            _, chunk = check_chunk(split_dir / name, manifest, None)
            ids.append(load_small(chunk, "episode_ids"))
            rewards.append(load_small(chunk, "rewards"))
            dones.append(load_small(chunk, "dones"))
            record_chunk(manifest, split, name, chunk.frames, [])
        if names:
            # An episode's return is the sum of its frames' rewards; it counts once it ended.
            ids_all, r_all, d_all = map(np.concatenate, (ids, rewards, dones))
            uniq, inv = np.unique(ids_all, return_inverse=True)
            sums = np.bincount(inv, weights=r_all.astype(np.float64), minlength=len(uniq))
            ended = np.zeros(len(uniq), bool)
            ended[inv[d_all]] = True
            if ended.any():
                fresh["episodes_completed"] = int(ended.sum())
                fresh["mean_return"] = float(sums[ended].mean())
            next_id = int(ids_all.max()) + 1
            manifest["next_episode_id"] = max(int(manifest["next_episode_id"]), next_id)
        refresh_policy_return(manifest)
    return changes


def _collect_split(
    writer: DatasetWriter,
    split: str,
    frames: int,
    env: ProcgenVecEnv,
    policy: Any,
    chunk_frames: int,
    bar: Any,
) -> None:
    """Step ``env`` with ``policy`` until ``frames`` frames of ``split`` are committed."""
    manifest = writer.manifest
    n_env = env.num_envs
    from lapo.evaluation.policies import attach

    obs, info = env.reset()  # (E, 64, 64, 3) uint8
    attach(policy, env)
    levels = info["level_seed"]
    first = int(manifest["next_episode_id"])
    episode = np.arange(first, first + n_env, dtype=np.int64)
    manifest["next_episode_id"] = first + n_env
    chunks: list[Any] = [None] * n_env
    returns: list[list[float]] = [[] for _ in range(n_env)]
    recorded = 0
    try:
        while recorded < frames:
            actions = np.asarray(policy.act(obs), dtype=np.int64)
            next_obs, reward, terminated, truncated, info = env.step(actions)
            done = terminated | truncated
            # Only the first `take` envs record on the last step, so the count comes out exact.
            take = min(n_env, frames - recorded)
            for i in range(take):
                if chunks[i] is None:
                    chunks[i] = writer.new_chunk(split)
                chunks[i].append_frame(
                    obs[i],
                    bool(done[i]),
                    int(episode[i]),
                    int(levels[i]),
                    int(actions[i]),
                    float(reward[i]),
                )
                if done[i]:
                    returns[i].append(float(info["episode_return"][i]))
                if len(chunks[i]) >= chunk_frames:
                    writer.commit(split, chunks[i], returns[i])
                    chunks[i], returns[i] = None, []
            recorded += take
            bar.update(take)
            for i in np.flatnonzero(done):
                # Ids are handed out when an episode starts, so the manifest's next_episode_id
                # (written with each chunk) is always above every id on disk.
                episode[i] = manifest["next_episode_id"]
                manifest["next_episode_id"] += 1
            obs, levels = next_obs, info["level_seed"]
        for i in range(n_env):
            if chunks[i] is not None:
                writer.commit(split, chunks[i], returns[i])
                chunks[i] = None
    finally:
        for c in chunks:
            if c is not None:
                c.abort()
        env.close()


def _check_sizes(frames: int, test_frames: int | None, num_envs: int, chunk_frames: int) -> int:
    """Refuse impossible sizes; return the test frames (default 10% of ``frames``)."""
    if frames <= 0:
        raise DatasetError(f"--frames must be a positive number of frames, got {frames}")
    test_frames = frames // 10 if test_frames is None else test_frames
    if test_frames < 0:
        raise DatasetError(f"--test-frames must be 0 or more, got {test_frames}")
    if num_envs < 1 or chunk_frames < 1:
        raise DatasetError("--num-envs and --chunk-frames must be at least 1")
    return test_frames


def procgen_options(paint_velocity: bool, backgrounds: bool) -> dict[str, bool]:
    """The Procgen options that differ from its defaults, by Procgen's names: what a dataset's
    manifest records as ``env.procgen_options`` (none for plain collection)."""
    options = {}
    if paint_velocity:
        options["paint_vel_info"] = True
    if not backgrounds:
        options["use_backgrounds"] = False
    return options


def _resumed_manifest(
    out: Path, game: str, policy: dict, options: dict[str, bool]
) -> tuple[dict, list[str]]:
    """The manifest of the dataset ``out`` to resume, brought in line with its chunks, and
    what that changed; refuses another game, policy (``policy``: its description) or Procgen
    options (``options``: :func:`procgen_options`)."""
    if not (out / MANIFEST).is_file():
        raise DatasetError(
            f"{out} has no {MANIFEST}, so it is not a dataset collect can resume; "
            "choose another --out"
        )
    manifest = read_manifest(out)
    if manifest["game"] != game:
        raise DatasetError(
            f"{out} holds {manifest['game']} data, not {game}: resume it with "
            f"--env {manifest['game']}, or choose another --out"
        )
    if manifest.get("policy") != policy:
        raise DatasetError(
            f"{out} was collected with policy {manifest.get('policy')}, not "
            f"{policy}: resume with the same --policy, or choose another --out"
        )
    recorded = manifest["env"].get("procgen_options", {})
    if recorded != options:
        raise DatasetError(
            f"{out} was collected with Procgen options {recorded or 'none'}, not "
            f"{options or 'none'}: resume with the same --paint-velocity / --no-background, or "
            "choose another --out"
        )
    return manifest, _rescan(out, manifest)


def _fresh_manifest(
    game: str,
    policy: dict,
    num_envs: int,
    chunk_frames: int,
    seed: int,
    mode: str,
    by: dict,
    options: dict[str, bool],
) -> dict:
    """A new dataset's manifest: the env settings of both splits (and any Procgen
    ``options``), no chunks yet."""
    env_desc: dict[str, Any] = {
        "distribution_mode": mode,
        "num_envs": num_envs,
        "splits": {
            s: {"start_level": SPLIT_START_LEVEL[s], "num_levels": LEVELS_PER_SPLIT} for s in SPLITS
        },
    }
    if options:
        env_desc["procgen_options"] = options
    return new_manifest(game, env_desc, policy, True, chunk_frames, seed, by)


def _record(
    writer: DatasetWriter,
    todo: dict[str, int],
    game: str,
    policy: str | Path,
    seed: int,
    num_envs: int,
    mode: str,
    chunk_frames: int,
    progress: bool,
    options: dict[str, bool],
) -> None:
    """Record ``todo[split]`` more frames of each split, each with its own seed (``options``:
    Procgen's own, :func:`procgen_options`)."""
    from tqdm import tqdm

    from lapo.evaluation.policies import load_policy

    manifest = writer.manifest
    existing = sum(manifest["splits"][s]["chunks"] for s in SPLITS)
    bar = tqdm(
        total=sum(todo.values()),
        unit="frame",
        unit_scale=True,
        disable=not progress,
        desc=f"collect {game}",
    )
    try:
        for split in SPLITS:
            if todo[split] == 0:
                continue
            split_seed = _split_seed(seed, existing, split)
            pol = load_policy(policy, game, split_seed)
            env = ProcgenVecEnv(
                game,
                num_envs=num_envs,
                distribution_mode=mode,
                num_levels=LEVELS_PER_SPLIT,
                start_level=SPLIT_START_LEVEL[split],
                seed=split_seed,
                **options,
            )
            _collect_split(writer, split, todo[split], env, pol, chunk_frames, bar)
    finally:
        bar.close()


def collect(
    game: str,
    policy: str | Path,
    frames: int,
    out: str | Path,
    test_frames: int | None = None,
    num_envs: int = 16,
    seed: int = 0,
    chunk_frames: int = 4096,
    resume: bool = False,
    progress: bool = True,
    distribution_mode: str = "easy",
    created_by: dict | None = None,
    paint_velocity: bool = False,
    backgrounds: bool = True,
) -> dict[str, Any]:
    """Record ``policy`` (``"random"`` or a demonstrator folder) playing ``game`` into ``out``.

    Collects ``frames`` train frames and ``test_frames`` test frames (default 10% of
    ``frames``). Refuses a non-empty ``out`` unless ``resume``, which continues a dataset to
    the targets. ``paint_velocity`` and ``backgrounds=False``: Procgen's diagnostics (see the
    module doc), for measurement only. Returns a JSON-able summary (frames, mean return, bytes
    per frame, seconds). Raises :class:`DatasetError` / ``EnvError`` / ``CheckpointError`` with
    what to do.
    """
    from lapo.evaluation.policies import load_policy

    check_game(game)
    test_frames = _check_sizes(frames, test_frames, num_envs, chunk_frames)
    options = procgen_options(paint_velocity, backgrounds)
    out = Path(out)
    t0 = time.time()
    created_by = created_by or {
        "function": "lapo.data.collect.collect",
        "args": {
            "game": game,
            "policy": str(policy),
            "frames": frames,
            "test_frames": test_frames,
            "num_envs": num_envs,
            "seed": seed,
            "chunk_frames": chunk_frames,
            "distribution_mode": distribution_mode,
            "paint_velocity": paint_velocity,
            "backgrounds": backgrounds,
        },
    }
    exists = out.exists() and (not out.is_dir() or any(out.iterdir()))
    if exists and not resume:
        raise DatasetError(
            f"{out} already exists and is not empty: pass --resume to continue the dataset in "
            "it, or choose another --out"
        )
    # Load the policy before touching the disk: a bad --policy must leave nothing behind.
    described = load_policy(policy, game, seed).describe()
    changes: list[str] = []
    if exists:
        manifest, changes = _resumed_manifest(out, game, described, options)
        manifest.setdefault("resumed_by", []).append(created_by)
    else:
        manifest = _fresh_manifest(
            game, described, num_envs, chunk_frames, seed, distribution_mode, created_by, options
        )
    target = {"train": frames, "test": test_frames}
    todo = {s: max(0, target[s] - manifest["splits"][s]["frames"]) for s in SPLITS}
    writer = DatasetWriter(out, manifest)
    if sum(todo.values()):
        out.mkdir(parents=True, exist_ok=True)
        writer.write_manifest()
        args = (game, policy, seed, num_envs, distribution_mode, chunk_frames, progress, options)
        _record(writer, todo, *args)
    elif changes:
        writer.write_manifest()
    return _summary(out, manifest, target, todo, changes, time.time() - t0)


def _summary(
    out: Path,
    manifest: dict,
    target: dict[str, int],
    todo: dict[str, int],
    changes: list[str],
    wall: float,
) -> dict[str, Any]:
    """What :func:`collect` did, JSON-able."""
    total = sum(manifest["splits"][s]["frames"] for s in SPLITS)
    nbytes = disk_bytes(out)
    return {
        "out": str(out),
        "game": manifest["game"],
        "policy": manifest["policy"],
        "complete": all(manifest["splits"][s]["frames"] >= target[s] for s in SPLITS),
        "already_complete": sum(todo.values()) == 0,
        "frames": {s: manifest["splits"][s]["frames"] for s in SPLITS},
        "new_frames": sum(todo.values()),
        "episodes_completed": {s: manifest["splits"][s]["episodes_completed"] for s in SPLITS},
        "mean_return": {s: manifest["splits"][s]["mean_return"] for s in SPLITS},
        "policy_mean_return": manifest["policy_mean_return"],
        "bytes_on_disk": nbytes,
        "bytes_per_frame": nbytes / total if total else None,
        "wall_seconds": round(wall, 2),
        "frames_per_second": round(sum(todo.values()) / wall, 1) if wall > 0 else None,
        "resume_changes": changes,
    }
