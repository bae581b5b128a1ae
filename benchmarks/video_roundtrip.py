"""What a round trip through H.264 files costs: PSNR of the frames and, optionally, stage 1's
latent actions learnt from them.

    python benchmarks/video_roundtrip.py --data DATASET --out DIR [--fps 15] [--crf 15]
                                         [--lam-minutes 0 | --lam-steps 0] [--probe-args "..."]

1. Every episode of DATASET (a Procgen dataset with actions; both splits) is exported to its
   own mp4 (``export_episodes``: libx264, yuv420p, ``--crf``), then the folder is imported back
   with import-video at the same frame rate, no crop, 64x64, each file keeping its split.
2. PSNR (dB) between each original frame and its round-tripped copy: mean and worst over
   frames.
3. For measurement only, the true actions are joined back onto the imported copy by episode
   and frame index (``DIR/roundtrip_actions``: a copy with ``actions.npy`` in each chunk).
4. With ``--lam-minutes M`` > 0: ``lapo lam train --preset cpu --max-minutes M --threads 1``
   on the original and then on the round-tripped copy (the same wall time each, one after
   the other, steps high enough that time binds), then ``lapo lam probe`` on both; prints
   both probes' figures (in full: ``DIR/lam_*/probe.json``). ``--lam-steps N`` instead trains
   N steps on each (the same work whatever else the machine is doing).

Prints JSON.
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from lapo.checkpoint import write_json
from lapo.data.format import SPLITS, load_small, open_dataset
from lapo.data.video import VideoImport, import_videos
from lapo.data.video_export import episode_spans, export_episodes, read_span


def episode_readers(root: Path, split: str) -> dict[int, Callable[[], np.ndarray]]:
    """A reader per episode of a split, by id: calling it reads that episode's frames
    ``(n, 64, 64, 3)`` uint8, so one episode at a time is in memory."""
    chunks = open_dataset(root).chunks[split]

    def reader(spans: list) -> Callable[[], np.ndarray]:
        return lambda: np.concatenate([b for c, a, z in spans for b in read_span(chunks[c], a, z)])

    return {e: reader(spans) for e, spans in episode_spans(chunks).items()}


def round_trip(data: Path, out: Path, fps: float, crf: int) -> tuple[Path, list[dict]]:
    """Export every episode, import the files back; returns the copy and, per episode, its
    split, original id, file and id in the copy."""
    episodes, split_of = [], {}
    for split in SPLITS:
        for e in export_episodes(data, out / "videos" / split, split, fps, crf):
            episodes.append({**e, "split": split})
            split_of[Path(e["path"]).resolve()] = split
    copy = out / "roundtrip"
    game = open_dataset(data).manifest["game"]
    opts = VideoImport(fps=fps, crop="none", test_fraction=0, game=game)
    import_videos([out / "videos"], copy, opts, progress=False, split_of=split_of)
    ids = {Path(s["path"]): s["episode_id"] for s in open_dataset(copy).manifest["sources"]}
    for e in episodes:
        e["copy_id"] = ids[Path(e["path"]).resolve()]
    return copy, episodes


def psnr(data: Path, copy: Path, episodes: list[dict]) -> dict:
    """PSNR in dB of every frame against its round-tripped copy: mean and worst."""
    per_frame = []
    for split in SPLITS:
        orig, back = episode_readers(data, split), episode_readers(copy, split)
        for e in (x for x in episodes if x["split"] == split):
            a, b = orig[e["episode_id"]](), back[e["copy_id"]]()
            if a.shape != b.shape:
                raise SystemExit(f"episode {e['episode_id']}: {len(a)} frames, {len(b)} back")
            mse = ((a.astype(np.float64) - b) ** 2).reshape(len(a), -1).mean(1)
            per_frame.append(10 * np.log10(255**2 / np.maximum(mse, 1e-10)))
    db = np.concatenate(per_frame)
    return {
        "frames": len(db),
        "mean_db": round(float(db.mean()), 2),
        "worst_db": round(float(db.min()), 2),
    }


def join_actions(data: Path, copy: Path, episodes: list[dict], dest: Path) -> Path:
    """``dest``: a copy of ``copy`` with the true actions of ``data`` added to each chunk,
    matched by episode and frame index within the episode."""
    shutil.rmtree(dest, ignore_errors=True)
    shutil.copytree(copy, dest)
    info = open_dataset(dest)
    for split in SPLITS:
        orig = open_dataset(data).chunks[split]
        actions = {  # original id -> its actions, in order
            e: np.concatenate([load_small(orig[c], "actions")[a:z] for c, a, z in sp])
            for e, sp in episode_spans(orig).items()
        }
        source = {x["copy_id"]: x["episode_id"] for x in episodes if x["split"] == split}
        seen: dict[int, int] = {}  # frames of each copy episode already given actions
        for chunk in info.chunks[split]:
            ids = load_small(chunk, "episode_ids")
            out = np.empty(len(ids), np.int64)
            for e in np.unique(ids):
                where = np.flatnonzero(ids == e)
                start = seen.get(int(e), 0)
                out[where] = actions[source[int(e)]][start : start + len(where)]
                seen[int(e)] = start + len(where)
            np.save(chunk.path / "actions.npy", out, allow_pickle=False)
    manifest = info.manifest
    manifest["has_actions"], manifest["has_rewards"] = True, False
    manifest["actions_joined_from"] = str(data)
    write_json(dest / "manifest.json", manifest)
    return dest


def lam(data: Path, out: Path, minutes: float, steps: int, probe_args: list[str]) -> dict:
    """Stage 1 for ``minutes`` of training (or ``steps`` steps) on one thread, then its probe."""
    lapo = [sys.executable, "-m", "lapo"]
    shutil.rmtree(out, ignore_errors=True)
    train = ["lam", "train", "--data", str(data), "--out", str(out), "--preset", "cpu"]
    budget = ["--steps", str(steps)] if steps else ["--max-minutes", str(minutes)]
    budget += [] if steps else ["--steps", "1000000"]
    train += [*budget, "--threads", "1", "--quiet"]
    t0 = time.time()
    summary = json.loads(subprocess.run([*lapo, *train], check=True, capture_output=True).stdout)
    probe = ["lam", "probe", "--run", str(out), "--data", str(data), "--threads", "1"]
    report = subprocess.run([*lapo, *probe, *probe_args], check=True, capture_output=True)
    (out / "probe.json").write_bytes(report.stdout)  # in full, confusion matrix included
    scalars = {k: v for k, v in json.loads(report.stdout).items() if not isinstance(v, list | dict)}
    return {
        "data": str(data),
        "steps": summary.get("steps"),
        "wall_seconds": round(time.time() - t0, 1),
        "probe": scalars,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", required=True, help="Procgen dataset with actions")
    ap.add_argument("--out", required=True, help="work folder (videos, the copies, runs)")
    ap.add_argument("--fps", type=float, default=15.0, help="frame rate of the files")
    ap.add_argument("--crf", type=int, default=15, help="H.264 quality of the files")
    ap.add_argument("--lam-minutes", type=float, default=0.0, help="stage 1 on both; 0 = skip")
    ap.add_argument("--lam-steps", type=int, default=0, help="stage 1 on both for N steps")
    ap.add_argument("--probe-args", default="", help="extra options for lapo lam probe")
    args = ap.parse_args()

    data, out = Path(args.data), Path(args.out)
    if not open_dataset(data).has_actions:
        raise SystemExit(f"{data} has no actions: the benchmark needs a dataset with actions")
    shutil.rmtree(out / "videos", ignore_errors=True)
    shutil.rmtree(out / "roundtrip", ignore_errors=True)
    t0 = time.time()
    copy, episodes = round_trip(data, out, args.fps, args.crf)
    result: dict = {
        "data": str(data),
        "episodes": len(episodes),
        "codec": f"libx264 yuv420p crf {args.crf}, {args.fps:g} fps",
        "video_bytes_per_frame": round(
            sum(Path(e["path"]).stat().st_size for e in episodes)
            / sum(e["frames"] for e in episodes),
            1,
        ),
        "round_trip_seconds": round(time.time() - t0, 1),
        "psnr": psnr(data, copy, episodes),
    }
    joined = join_actions(data, copy, episodes, out / "roundtrip_actions")
    result["copy_with_actions"] = str(joined)
    if args.lam_minutes > 0 or args.lam_steps > 0:
        extra = shlex.split(args.probe_args)
        budget = (args.lam_minutes, args.lam_steps)
        result["lam_original"] = lam(data, out / "lam_original", *budget, extra)
        result["lam_roundtrip"] = lam(joined, out / "lam_roundtrip", *budget, extra)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
