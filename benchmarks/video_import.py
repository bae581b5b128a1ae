"""``lapo data import-video`` speed (frames/s) and peak memory on a long video and on one a
quarter as long: memory must not grow with the video's length.

    python benchmarks/video_import.py [--minutes 60] [--fps 30] [--size 256] [--game coinrun]
                                      [--unique 1800] [--work DIR] [--keep]

Makes an H.264 mp4 (libx264, yuv420p, crf 23: a typical camera or screen-capture file) of
Procgen play at SIZE x SIZE: ``--unique`` frames are rendered by Procgen's high-resolution
renderer (512x512, area-scaled to SIZE) and looped to the length asked for; where that
renderer is not available, the 64x64 observations are upscaled (nearest) instead, and the
output says which. Each import runs in its own child process (``lapo data import-video
VIDEO --out DIR --quiet``: the video's own rate, centre crop, 64x64) and its peak resident
memory is read from ``wait4``'s ``ru_maxrss``, next to that of a child that only loads the
same modules (``baseline_peak_rss_mib``). ``frames_per_second`` is the import's own (frames
over the seconds inside the import), ``process_seconds`` adds the interpreter's start-up.
Prints JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def render_frames(game: str, n: int, size: int) -> tuple[np.ndarray, str]:
    """``n`` frames ``(n, size, size, 3)`` uint8 of random play, and how they were made."""
    from PIL import Image

    from lapo.envs import ProcgenVecEnv

    rng = np.random.default_rng(0)
    try:
        env = ProcgenVecEnv(game, 1, seed=0, render_mode="rgb_array")
        env.reset()
        grab = lambda obs: env._env.get_info()[0]["rgb"]  # noqa: E731 - procgen's 512x512 render
        how = f"Procgen's 512x512 render, area-scaled to {size}x{size}"
        grab(None)
    except Exception:  # noqa: BLE001 - any failure: fall back to the observations
        env = ProcgenVecEnv(game, 1, seed=0)
        env.reset()
        grab = lambda obs: obs[0]  # noqa: E731
        how = f"64x64 observations upscaled (nearest) to {size}x{size}"
    out = np.empty((n, size, size, 3), np.uint8)
    for i in range(n):
        obs, *_ = env.step(rng.integers(0, 15, 1))
        img = Image.fromarray(grab(obs))
        resample = Image.Resampling.BOX if img.width > size else Image.Resampling.NEAREST
        out[i] = np.asarray(img.resize((size, size), resample))
    env.close()
    return out, how


def make_video(path: Path, frames: np.ndarray, total: int, fps: int) -> float:
    """Encode ``total`` frames (``frames`` looped) as H.264; returns the seconds it took."""
    import av

    t0 = time.time()
    with av.open(str(path), "w") as c:
        s = c.add_stream("libx264", rate=fps)
        s.height, s.width = frames.shape[1:3]
        s.pix_fmt = "yuv420p"
        s.options = {"crf": "23", "preset": "veryfast"}
        for i in range(total):
            img = av.VideoFrame.from_ndarray(frames[i % len(frames)], format="rgb24")
            for p in s.encode(img):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    return time.time() - t0


def child(cmd: list[str]) -> tuple[bytes, float, float]:
    """Run ``cmd``; its stdout, wall seconds and peak RSS in MiB (``wait4``'s ``ru_maxrss``)."""
    t0 = time.time()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE)
    stdout = proc.stdout.read()  # type: ignore[union-attr]
    _, status, usage = os.wait4(proc.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{' '.join(cmd)} failed")
    return stdout, time.time() - t0, usage.ru_maxrss / 1024  # Linux: KiB


def timed_import(video: Path, out: Path) -> dict:
    """Run the import in a child process; its figures and peak RSS."""
    cmd = [sys.executable, "-m", "lapo", "data", "import-video", str(video), "--out", str(out)]
    stdout, wall, peak = child([*cmd, "--quiet", "--test-fraction", "0"])
    summary = json.loads(stdout)
    frames = summary["frames"]["train"] + summary["frames"]["test"]
    return {
        "video": video.name,
        "video_mib": round(video.stat().st_size / 2**20, 1),
        "frames": frames,
        "import_seconds": summary["wall_seconds"],
        "frames_per_second": round(frames / summary["wall_seconds"], 1),
        "process_seconds": round(wall, 1),
        "peak_rss_mib": round(peak, 1),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--minutes", type=float, default=60.0, help="length of the long video")
    ap.add_argument("--fps", type=int, default=30)
    ap.add_argument("--size", type=int, default=256, help="the video's frame size")
    ap.add_argument("--game", default="coinrun")
    ap.add_argument("--unique", type=int, default=1800, help="distinct frames rendered")
    ap.add_argument("--work", help="folder for the videos and datasets (default: a temp one)")
    ap.add_argument("--keep", action="store_true", help="keep the work folder")
    args = ap.parse_args()

    work = Path(args.work or tempfile.mkdtemp(prefix="lapo-video-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    total = round(args.minutes * 60 * args.fps)
    frames, how = render_frames(args.game, min(args.unique, total), args.size)
    result: dict = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cpus",
        "frames_made_from": how,
        "runs": [],
    }
    # the same interpreter with the same modules loaded, importing nothing: the memory floor
    load = "import lapo.cli.parser, lapo.data.video, av"
    result["baseline_peak_rss_mib"] = round(child([sys.executable, "-c", load])[2], 1)
    try:
        for name, n in (("long.mp4", total), ("quarter.mp4", total // 4)):
            encode = make_video(work / name, frames, n, args.fps)
            run = timed_import(work / name, work / f"{Path(name).stem}_data")
            run["minutes"] = round(n / args.fps / 60, 2)
            run["encode_seconds"] = round(encode, 1)
            result["runs"].append(run)
            shutil.rmtree(work / f"{Path(name).stem}_data")
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
