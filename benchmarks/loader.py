"""Window loader throughput (windows/s) and host memory while sampling, on this machine.

    python benchmarks/loader.py --data DIR [--frames 1000000] [--batch 128] [--k 3] [--seconds 20]
                                [--threads 1] [--cold]

If DIR holds no dataset, one is first collected there with the random policy (in a child
process, so the peak RSS reported below is the sampler's alone). Then ``WindowDataset.sample``
runs for ``--seconds`` and the figures are printed as JSON: windows/s, peak RSS
(``ru_maxrss``) and current RSS (``VmRSS``). ``--cold`` first asks the kernel to drop the
dataset's obs files from the page cache (``posix_fadvise DONTNEED``, these files only), so
the reads come from disk.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path


def rss_mb() -> dict[str, float]:
    """Peak and current resident memory of this process, in MiB."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB
    current = float("nan")
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                current = int(line.split()[1]) / 1024
    return {"peak_rss_mib": round(peak, 1), "current_rss_mib": round(current, 1)}


def drop_cache(paths: list[Path]) -> None:
    for p in paths:
        fd = os.open(p, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", required=True, help="dataset folder (collected if absent)")
    ap.add_argument("--frames", type=int, default=1_000_000, help="train frames to collect")
    ap.add_argument("--game", default="bigfish", help="game to collect, if collecting")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--k", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--threads", type=int, default=1, help="reader threads (read_threads)")
    ap.add_argument("--cold", action="store_true", help="evict obs files from the page cache")
    args = ap.parse_args()

    data = Path(args.data)
    result: dict = {"machine": f"{platform.machine()}, {os.cpu_count()} cpus"}
    if not (data / "manifest.json").is_file():
        cmd = [sys.executable, "-m", "lapo.cli", "collect", "--env", args.game]
        cmd += ["--policy", "random", "--frames", str(args.frames), "--test-frames", "0"]
        cmd += ["--out", str(data), "--quiet"]
        t0 = time.time()
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        s = json.loads(out)
        result["collect"] = {
            "frames": s["frames"]["train"],
            "wall_seconds": round(time.time() - t0, 1),
            "frames_per_second": s["frames_per_second"],
            "bytes_per_frame": s["bytes_per_frame"],
        }

    import numpy as np

    from lapo.data.dataset import WindowDataset

    before = rss_mb()
    t0 = time.time()
    ds = WindowDataset(data, "train", k=args.k, read_threads=args.threads)
    result["open_seconds"] = round(time.time() - t0, 2)
    result["frames"] = ds.frames
    result["windows"] = len(ds)
    result["chunks"] = len(ds._obs_paths)
    result["rss_before_open"] = before
    result["rss_after_open"] = rss_mb()
    if args.cold:
        drop_cache(ds._obs_paths)
    rng = np.random.default_rng(0)
    n, t0 = 0, time.time()
    while time.time() - t0 < args.seconds:
        batch = ds.sample(args.batch, rng)
        n += len(batch["obs"])
    wall = time.time() - t0
    result.update(
        batch=args.batch,
        k=args.k,
        threads=args.threads,
        cold=args.cold,
        seconds=round(wall, 2),
        windows_per_second=round(n / wall, 1),
        mb_per_second=round(n * args.k * 12288 / wall / 1e6, 1),
        rss_while_sampling=rss_mb(),
    )
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
