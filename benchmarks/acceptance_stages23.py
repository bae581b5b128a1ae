"""Stages 2-3 acceptance grid: LAPO against its baselines on demonstrator games, several seeds.

    python benchmarks/acceptance_stages23.py --out runs/acc23 [--games coinrun,jumper]
        [--seeds 3] [--labels 256,1000] [--online-frames 300000] [--jobs 4]

For each game: demonstrator data (``lapo collect``) and a random-policy evaluation. For each
(game, seed): stage 1 and stage 2 at the ``cpu`` presets; offline decoding with each K and
baselines (a) BC on the same K labels and (b) supervised-IDM labels then BC; online decoding
and (c) PPO from scratch for the same frames; ``lapo eval`` of every policy. Every step is a
``lapo`` command run as a subprocess, skipped when its output exists, so a killed run resumes.
Independent steps run ``--jobs`` at a time.

Writes ``results.json`` (every evaluation), ``results.csv``, ``summary.md`` (mean and std over
seeds, normalised between random and the demonstrator) and ``online_curves.png``.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

LAPO = [sys.executable, "-m", "lapo.cli"]


class Task:
    def __init__(self, name: str, cmd: list[str], done: Path, deps: tuple[str, ...] = ()):
        self.name, self.cmd, self.done, self.deps = name, cmd, done, deps


def build_tasks(args: argparse.Namespace, out: Path) -> list[Task]:
    tasks: list[Task] = []
    q = ["--quiet"]
    for game in args.games:
        data = out / game / "data"
        tasks.append(
            Task(
                f"{game}/data",
                [
                    *LAPO,
                    "collect",
                    "--env",
                    game,
                    "--policy",
                    "demonstrator",
                    "--frames",
                    str(args.frames),
                    "--test-frames",
                    str(args.frames // 6),
                    "--out",
                    str(data),
                    "--seed",
                    "0",
                    *q,
                ],
                out / game / "data.done.json",
            )
        )
        tasks.append(
            Task(
                f"{game}/eval_random",
                [
                    *LAPO,
                    "eval",
                    "--policy",
                    "random",
                    "--env",
                    game,
                    "--episodes",
                    str(args.episodes),
                    "--seed",
                    "1000",
                ],
                out / game / "eval_random.json",
            )
        )
        for seed in args.seed_list:
            r = out / game / f"seed{seed}"
            s = ["--seed", str(seed)]
            tasks.append(
                Task(
                    f"{game}/{seed}/lam",
                    [
                        *LAPO,
                        "lam",
                        "train",
                        "--data",
                        str(data),
                        "--out",
                        str(r / "lam"),
                        "--preset",
                        "cpu",
                        *s,
                        *q,
                        *args.lam_args,
                    ],
                    r / "lam.done.json",
                    (f"{game}/data",),
                )
            )
            tasks.append(
                Task(
                    f"{game}/{seed}/bc",
                    [
                        *LAPO,
                        "bc",
                        "train",
                        "--lam",
                        str(r / "lam"),
                        "--data",
                        str(data),
                        "--out",
                        str(r / "bc"),
                        "--preset",
                        "cpu",
                        *s,
                        *q,
                        *args.bc_args,
                    ],
                    r / "bc.done.json",
                    (f"{game}/{seed}/lam",),
                )
            )
            policies = {}
            for k in args.labels:
                dec = r / f"decoded_k{k}"
                tasks.append(
                    Task(
                        f"{game}/{seed}/decoded_k{k}",
                        [
                            *LAPO,
                            "decode",
                            "offline",
                            "--policy",
                            str(r / "bc"),
                            "--data",
                            str(data),
                            "--labels",
                            str(k),
                            "--out",
                            str(dec),
                            *s,
                        ],
                        r / f"decoded_k{k}.done.json",
                        (f"{game}/{seed}/bc",),
                    )
                )
                for name, sub in (("bc", "bc"), ("idm_bc", "idm-bc")):
                    o = r / f"{name}_k{k}"
                    tasks.append(
                        Task(
                            f"{game}/{seed}/{name}_k{k}",
                            [
                                *LAPO,
                                "baseline",
                                sub,
                                "--data",
                                str(data),
                                "--labels-from",
                                str(dec),
                                "--out",
                                str(o),
                                "--preset",
                                "cpu",
                                *s,
                                *q,
                                *args.bc_args,
                            ],
                            r / f"{name}_k{k}.done.json",
                            (f"{game}/{seed}/decoded_k{k}",),
                        )
                    )
                    policies[f"{name}_k{k}"] = (o, f"{name}_k{k}")
                policies[f"lapo_offline_k{k}"] = (dec, f"decoded_k{k}")
            if args.online_frames > 0 and "lapo_online" not in args.skip:
                o = r / "lapo_online"
                tasks.append(
                    Task(
                        f"{game}/{seed}/lapo_online",
                        [
                            *LAPO,
                            "decode",
                            "online",
                            "--policy",
                            str(r / "bc"),
                            "--env",
                            game,
                            "--frames",
                            str(args.online_frames),
                            "--out",
                            str(o),
                            *s,
                            *q,
                            *args.online_args,
                        ],
                        r / "lapo_online.done.json",
                        (f"{game}/{seed}/bc",),
                    )
                )
                policies["lapo_online"] = (o, "lapo_online")
            if args.online_frames > 0 and "ppo_scratch" not in args.skip:
                o = r / "ppo_scratch"
                tasks.append(
                    Task(
                        f"{game}/{seed}/ppo_scratch",
                        [
                            *LAPO,
                            "baseline",
                            "ppo",
                            "--env",
                            game,
                            "--frames",
                            str(args.online_frames),
                            "--out",
                            str(o),
                            "--width",
                            "1",
                            *s,
                            *q,
                        ],
                        r / "ppo_scratch.done.json",
                    )
                )
                policies["ppo_scratch"] = (o, "ppo_scratch")
            for name, (folder, task) in policies.items():
                tasks.append(
                    Task(
                        f"{game}/{seed}/eval_{name}",
                        [
                            *LAPO,
                            "eval",
                            "--policy",
                            str(folder),
                            "--env",
                            game,
                            "--episodes",
                            str(args.episodes),
                            "--seed",
                            str(1000 + seed),
                            "--demonstrator-return-from",
                            str(data),
                        ],
                        r / f"eval_{name}.json",
                        (f"{game}/{seed}/{task}",),
                    )
                )
    return tasks


def run_tasks(tasks: list[Task], jobs: int, threads: int, log: Path) -> None:
    """Run ``tasks`` respecting dependencies, ``jobs`` at a time; stop at the first failure."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    by_name = {t.name: t for t in tasks}
    finished = {t.name for t in tasks if t.done.exists()}
    running: dict[str, tuple[subprocess.Popen, float]] = {}
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "a") as logf:
        while len(finished) < len(tasks):
            for t in tasks:
                if len(running) >= jobs:
                    break
                if t.name in finished or t.name in running:
                    continue
                if all(d in finished for d in t.deps):
                    t.done.parent.mkdir(parents=True, exist_ok=True)
                    cmd = t.cmd
                    if "collect" in cmd and Path(cmd[cmd.index("--out") + 1]).exists():
                        cmd = [*cmd, "--resume"]  # a killed collection continues
                    stdout = open(t.done.with_suffix(".out"), "w")  # noqa: SIM115
                    proc = subprocess.Popen(cmd, stdout=stdout, stderr=logf, env=env)
                    running[t.name] = (proc, time.time())
                    print(f"[{time.strftime('%H:%M:%S')}] start {t.name}", flush=True)
            if not running:
                missing = {d for t in tasks for d in t.deps} - set(by_name)
                raise SystemExit(f"no step can start: unknown dependencies {missing}")
            time.sleep(0.5)
            for name, (proc, t0) in list(running.items()):
                if proc.poll() is None:
                    continue
                del running[name]
                t = by_name[name]
                if proc.returncode != 0:
                    for p, _ in running.values():
                        p.terminate()
                    raise SystemExit(f"{name} failed (exit {proc.returncode}); see {log}")
                out_file = t.done.with_suffix(".out")
                text = out_file.read_text()
                out_file.unlink()
                tmp = t.done.with_suffix(".tmp")
                tmp.write_text(
                    json.dumps({"wall_seconds": time.time() - t0, "stdout": text[-4000:]})
                    if t.done.name.endswith(".done.json")
                    else text
                )
                tmp.replace(t.done)
                finished.add(name)
                print(f"[{time.strftime('%H:%M:%S')}] done  {name} ({time.time() - t0:.0f}s)")


def demonstrator_return(out: Path, game: str) -> float:
    """The demonstrator's mean return on the data: from the manifest, else from an evaluation."""
    manifest = out / game / "data" / "manifest.json"
    if manifest.exists():
        return json.loads(manifest.read_text())["policy_mean_return"]
    for f in sorted((out / game).glob("seed*/eval_*.json")):
        return json.loads(f.read_text())["demonstrator_return"]
    raise FileNotFoundError(f"no manifest or evaluation for {game} under {out}")


def summarise(args: argparse.Namespace, out: Path) -> None:
    """Collect every evaluation into results.json/csv, summary.md and online_curves.png."""
    rows = []
    for game in args.games:
        rand_file, manifest_file = out / game / "eval_random.json", out / game / "data.done.json"
        if not rand_file.exists() or not manifest_file.exists():
            continue  # this game's data or random evaluation did not finish
        random_ret = json.loads(rand_file.read_text())["mean_return"]
        demo = demonstrator_return(out, game)
        for seed in args.seed_list:
            for f in sorted((out / game / f"seed{seed}").glob("eval_*.json")):
                e = json.loads(f.read_text())
                rows.append(
                    {
                        "game": game,
                        "seed": seed,
                        "method": f.stem[5:],
                        "mean_return": e["mean_return"],
                        "stderr_return": e["stderr_return"],
                        "normalized_return": e["normalized_return"],
                        "demonstrator_normalized_return": e["demonstrator_normalized_return"],
                        "measured_random_return": random_ret,
                        "demonstrator_return": demo,
                        "episodes": e["episodes"],
                    }
                )
    if not rows:
        print("no evaluation has finished yet")
        return
    (out / "results.json").write_text(json.dumps(rows, indent=1))
    with open(out / "results.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    methods = sorted({r["method"] for r in rows})
    lines = [
        "| method | " + " | ".join(args.games) + " | mean |",
        "|---|" + "---|" * (len(args.games) + 1),
    ]
    for m in methods:
        cells, means = [], []
        for g in args.games:
            v = [
                r["demonstrator_normalized_return"]
                for r in rows
                if r["method"] == m and r["game"] == g
            ]
            if v:
                cells.append(f"{np.mean(v):.2f} ± {np.std(v):.2f} (n={len(v)})")
                means.append(np.mean(v))
            else:
                cells.append("")
        lines.append(f"| {m} | " + " | ".join(cells) + f" | {np.mean(means):.2f} |")
    raw = ["", "Raw mean returns (mean over seeds):", ""]
    raw.append("| method | " + " | ".join(args.games) + " |")
    raw.append("|---|" + "---|" * len(args.games))
    for m in methods:
        cells = []
        for g in args.games:
            v = [r["mean_return"] for r in rows if r["method"] == m and r["game"] == g]
            cells.append(f"{np.mean(v):.2f}" if v else "")
        raw.append(f"| {m} | " + " | ".join(cells) + " |")
    for g in args.games:
        r0 = next(r for r in rows if r["game"] == g)
        raw.append(
            f"\n{g}: demonstrator {r0['demonstrator_return']:.2f}, measured random "
            f"{r0['measured_random_return']:.2f}"
        )
    (out / "summary.md").write_text(
        "Normalised between random (published constant) and the demonstrator; mean ± std over "
        "seeds.\n\n" + "\n".join(lines) + "\n" + "\n".join(raw) + "\n"
    )
    print((out / "summary.md").read_text())
    if args.online_frames > 0:
        plot_curves(args, out)


def plot_curves(args: argparse.Namespace, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from lapo.envs import normalized_return

    fig, axes = plt.subplots(1, len(args.games), figsize=(5 * len(args.games), 3.6), squeeze=False)
    for ax, game in zip(axes[0], args.games, strict=True):
        demo = demonstrator_return(out, game)
        for name, label, col in (
            ("lapo_online", "LAPO online decoding", "tab:blue"),
            ("ppo_scratch", "PPO from scratch", "tab:orange"),
        ):
            curves = []
            for seed in args.seed_list:
                p = out / game / f"seed{seed}" / name / "progress.csv"
                if not p.exists():
                    continue
                with open(p) as fh:
                    rs = list(csv.DictReader(fh))
                x = np.array([float(r["frames"]) for r in rs])
                y = np.array(
                    [normalized_return(game, float(r["mean_return"]), expert=demo) for r in rs]
                )
                curves.append((x, y))
            if not curves:
                continue
            n = min(len(c[0]) for c in curves)
            x = curves[0][0][:n]
            ys = np.stack([c[1][:n] for c in curves])
            m, s = np.nanmean(ys, 0), np.nanstd(ys, 0)
            ax.plot(x / 1e3, m, color=col, label=f"{label} ({len(curves)} seeds)")
            ax.fill_between(x / 1e3, m - s, m + s, color=col, alpha=0.2)
        ax.axhline(1.0, color="grey", ls="--", lw=0.8, label="demonstrator")
        ax.axhline(0.0, color="grey", ls=":", lw=0.8, label="random")
        ax.set_title(f"{game}: online decoding vs PPO")
        ax.set_xlabel("environment frames (thousands)")
        ax.set_ylabel("return normalised random→demonstrator")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "online_curves.png", dpi=120)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--games", default="coinrun,jumper")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--labels", default="256,1000", help="K values for offline decoding")
    ap.add_argument("--frames", type=int, default=51_200, help="train frames of demo data")
    ap.add_argument("--online-frames", type=int, default=300_000, help="0 = no online runs")
    ap.add_argument("--episodes", type=int, default=100, help="evaluation episodes")
    ap.add_argument("--jobs", type=int, default=2, help="steps run at once")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per step")
    ap.add_argument("--lam-args", default="", help="extra options for 'lapo lam train'")
    ap.add_argument("--bc-args", default="", help="extra options for stage 2 and the BC baselines")
    ap.add_argument("--online-args", default="", help="extra options for 'lapo decode online'")
    ap.add_argument(
        "--skip", default="", help="comma-separated steps to leave out, e.g. ppo_scratch"
    )
    ap.add_argument("--only-seeds", default="", help="comma-separated seeds (default: all)")
    ap.add_argument("--summary-only", action="store_true")
    args = ap.parse_args()
    args.games = args.games.split(",")
    args.skip = args.skip.split(",")
    args.seed_list = (
        [int(x) for x in args.only_seeds.split(",")] if args.only_seeds else list(range(args.seeds))
    )
    args.labels = [int(k) for k in args.labels.split(",")]
    args.lam_args = shlex.split(args.lam_args)
    args.bc_args = shlex.split(args.bc_args)
    args.online_args = shlex.split(args.online_args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "acceptance_args.json").write_text(json.dumps(vars(args), indent=1))
    t0 = time.time()
    if not args.summary_only:
        run_tasks(build_tasks(args, out), args.jobs, args.threads, out / "stderr.log")
    print(f"all steps done in {time.time() - t0:.0f}s")
    summarise(args, out)


if __name__ == "__main__":
    main()
