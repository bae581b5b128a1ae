"""``lapo reproduce``: the paper's experiment grid, resumable per (game, seed, step).

For each game: data (the shipped demonstrator's, one trained with ``lapo expert train`` for
games without one, or imported data under ``--data-root``) and a random-policy evaluation.
For each (game, seed): stage 1, stage 2, offline decoding at each label count with baselines
(a) BC on the same labels and (b) supervised-IDM labels then BC, online decoding and (c) PPO
from scratch for the same frames, and an evaluation of every policy.

Every step is a ``lapo`` command run as a subprocess and is skipped when its marker
(``<step>.done.json`` beside its folder) exists, so a killed grid resumes where it stopped.
Independent steps run ``jobs`` at a time. The grid writes ``results.csv`` (every
evaluation), ``summary.md``, ``offline_vs_labels.png`` and ``online_curves.png``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from lapo.config import ReproduceConfig
from lapo.report.grid import summarise

# measured rates on the 2-core CPU of README's figures (channels-last fp32): stage 1 paper
# 25.7 samples/s; IMPALA x4 forward ~110 obs/s, so stage 2 (fwd+bwd) ~35 samples/s; online
# decoding forward-only over frozen trunk ~110 frames/s; PPO from scratch x4 ~30 frames/s
CPU_HOURS_PAPER = {
    "lam": 50_000 * 128 / 25.7 / 3600,
    "bc": 60_000 * 128 / 35 / 3600,
    "online": 4_000_000 / 110 / 3600,
    "ppo": 4_000_000 / 30 / 3600,
}


@dataclass
class Task:
    name: str
    cmd: list[str]
    done: Path
    deps: tuple[str, ...] = ()


def _lapo(*args: str) -> list[str]:
    return [sys.executable, "-m", "lapo.cli", *args]


def build_tasks(cfg: ReproduceConfig, out: Path) -> list[Task]:
    """Every step of the grid, with the steps it needs."""
    from lapo.policies import shipped_demonstrators

    tasks: list[Task] = []
    shipped = shipped_demonstrators()
    q = ("--quiet",)
    for game in cfg.games:
        g = out / game
        data_deps: tuple[str, ...] = ()
        if cfg.data_root:
            data = Path(cfg.data_root) / game
        else:
            data = g / "data"
            policy = "demonstrator"
            if game not in shipped:
                policy = str(g / "expert")
                tasks.append(
                    Task(
                        f"{game}/expert",
                        _lapo(
                            "expert",
                            "train",
                            "--env",
                            game,
                            "--frames",
                            str(cfg.expert_frames),
                            "--out",
                            policy,
                            *q,
                        ),
                        g / "expert.done.json",
                    )
                )
                data_deps = (f"{game}/expert",)
            tasks.append(
                Task(
                    f"{game}/data",
                    _lapo(
                        "collect",
                        "--env",
                        game,
                        "--policy",
                        policy,
                        "--frames",
                        str(cfg.frames),
                        "--test-frames",
                        str(max(cfg.frames // 6, 1024)),
                        "--out",
                        str(data),
                        "--seed",
                        "0",
                        *q,
                    ),
                    g / "data.done.json",
                    data_deps,
                )
            )
            data_deps = (f"{game}/data",)
        tasks.append(
            Task(
                f"{game}/eval_random",
                _lapo(
                    "eval",
                    "--policy",
                    "random",
                    "--env",
                    game,
                    "--episodes",
                    str(cfg.episodes),
                    "--seed",
                    "1000",
                ),
                g / "eval_random.json",
            )
        )
        for seed in range(cfg.seeds):
            r, s = g / f"seed{seed}", ("--seed", str(seed))
            pre = ("--preset", cfg.preset)
            policies: dict[str, tuple[Path, str]] = {}
            if "lam" in cfg.steps:
                tasks.append(
                    Task(
                        f"{game}/{seed}/lam",
                        _lapo(
                            "lam",
                            "train",
                            "--data",
                            str(data),
                            "--out",
                            str(r / "lam"),
                            *pre,
                            *s,
                            *q,
                            *cfg.extra.get("lam", []),
                        ),
                        r / "lam.done.json",
                        data_deps,
                    )
                )
            if "bc" in cfg.steps:
                tasks.append(
                    Task(
                        f"{game}/{seed}/bc",
                        _lapo(
                            "bc",
                            "train",
                            "--lam",
                            str(r / "lam"),
                            "--data",
                            str(data),
                            "--out",
                            str(r / "bc"),
                            *pre,
                            *s,
                            *q,
                            *cfg.extra.get("bc", []),
                        ),
                        r / "bc.done.json",
                        (f"{game}/{seed}/lam",) if "lam" in cfg.steps else data_deps,
                    )
                )
            bc_dep = (f"{game}/{seed}/bc",) if "bc" in cfg.steps else data_deps
            for k in cfg.labels if "offline" in cfg.steps else []:
                dec = r / f"lapo_offline_k{k}"
                tasks.append(
                    Task(
                        f"{game}/{seed}/lapo_offline_k{k}",
                        _lapo(
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
                        ),
                        r / f"lapo_offline_k{k}.done.json",
                        bc_dep,
                    )
                )
                policies[f"lapo_offline_k{k}"] = (dec, f"lapo_offline_k{k}")
                for name, sub in (("bc", "bc"), ("idm_bc", "idm-bc")):
                    more = cfg.extra.get("idm", []) if name == "idm_bc" else []
                    o = r / f"{name}_k{k}"
                    tasks.append(
                        Task(
                            f"{game}/{seed}/{name}_k{k}",
                            _lapo(
                                "baseline",
                                sub,
                                "--data",
                                str(data),
                                "--labels-from",
                                str(dec),
                                "--out",
                                str(o),
                                *pre,
                                *s,
                                *q,
                                *cfg.extra.get("bc", []),
                                *more,
                            ),
                            r / f"{name}_k{k}.done.json",
                            (f"{game}/{seed}/lapo_offline_k{k}",),
                        )
                    )
                    policies[f"{name}_k{k}"] = (o, f"{name}_k{k}")
            for k in cfg.labels if "labels" in cfg.steps else []:
                tasks += labelled_stage1_tasks(cfg, game, seed, k, data, r, data_deps)
                policies[f"lapo_labels_k{k}"] = (r / f"lapo_labels_k{k}", f"lapo_labels_k{k}")
            if "online" in cfg.steps:
                o = r / "lapo_online"
                tasks.append(
                    Task(
                        f"{game}/{seed}/lapo_online",
                        _lapo(
                            "decode",
                            "online",
                            "--policy",
                            str(r / "bc"),
                            "--env",
                            game,
                            "--frames",
                            str(cfg.online_frames),
                            "--out",
                            str(o),
                            *s,
                            *q,
                            *cfg.extra.get("online", []),
                        ),
                        r / "lapo_online.done.json",
                        bc_dep,
                    )
                )
                policies["lapo_online"] = (o, "lapo_online")
            if "ppo" in cfg.steps:
                o = r / "ppo_scratch"
                width = "4" if cfg.preset == "paper" else "1"
                tasks.append(
                    Task(
                        f"{game}/{seed}/ppo_scratch",
                        _lapo(
                            "baseline",
                            "ppo",
                            "--env",
                            game,
                            "--frames",
                            str(cfg.online_frames),
                            "--out",
                            str(o),
                            "--width",
                            width,
                            *s,
                            *q,
                            *cfg.extra.get("ppo", []),
                        ),
                        r / "ppo_scratch.done.json",
                    )
                )
                policies["ppo_scratch"] = (o, "ppo_scratch")
            for name, (folder, task) in policies.items():
                # imported data records no demonstrator return: normalise by constants only
                demo = () if cfg.data_root else ("--demonstrator-return-from", str(data))
                tasks.append(
                    Task(
                        f"{game}/{seed}/eval_{name}",
                        _lapo(
                            "eval",
                            "--policy",
                            str(folder),
                            "--env",
                            game,
                            "--episodes",
                            str(cfg.episodes),
                            "--seed",
                            str(1000 + seed),
                            *demo,
                        ),
                        r / f"eval_{name}.json",
                        (f"{game}/{seed}/{task}", *data_deps),
                    )
                )
    return tasks  # fmt: skip


def labelled_stage1_tasks(
    cfg: ReproduceConfig,
    game: str,
    seed: int,
    k: int,
    data: Path,
    r: Path,
    data_deps: tuple[str, ...],
) -> list[Task]:
    """LAPO with K labels in stage 1: stage 1 with ``--labels K``, stage 2 on it, and offline
    decoding on the same K windows (drawn by the same seed as every K-label row)."""
    lam, bc, dec = r / f"lam_labels_k{k}", r / f"bc_labels_k{k}", r / f"lapo_labels_k{k}"
    pre, s, q = ("--preset", cfg.preset), ("--seed", str(seed)), ("--quiet",)
    name = f"{game}/{seed}"
    return [
        Task(
            f"{name}/lam_labels_k{k}",
            _lapo("lam", "train", "--data", str(data), "--out", str(lam), *pre, *s, *q,
                  "--labels", str(k), "--labels-seed", str(seed), *cfg.extra.get("lam", [])),
            r / f"lam_labels_k{k}.done.json",
            data_deps,
        ),
        Task(
            f"{name}/bc_labels_k{k}",
            _lapo("bc", "train", "--lam", str(lam), "--data", str(data), "--out", str(bc),
                  *pre, *s, *q, *cfg.extra.get("bc", [])),
            r / f"bc_labels_k{k}.done.json",
            (f"{name}/lam_labels_k{k}",),
        ),
        Task(
            f"{name}/lapo_labels_k{k}",
            _lapo("decode", "offline", "--policy", str(bc), "--data", str(data),
                  "--labels", str(k), "--out", str(dec), *s),
            r / f"lapo_labels_k{k}.done.json",
            (f"{name}/bc_labels_k{k}",),
        ),
    ]  # fmt: skip


def run_tasks(tasks: list[Task], jobs: int, threads: int, log: Path, progress: bool = True) -> None:
    """Run ``tasks`` in dependency order, ``jobs`` at a time; stop at the first failure."""
    from tqdm import tqdm

    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    by_name = {t.name: t for t in tasks}
    missing = {d for t in tasks for d in t.deps} - set(by_name)
    if missing:
        raise ValueError(f"steps depend on unknown steps {sorted(missing)}")
    finished = {t.name for t in tasks if t.done.exists()}
    running: dict[str, tuple[subprocess.Popen, float]] = {}
    log.parent.mkdir(parents=True, exist_ok=True)
    bar = tqdm(total=len(tasks), initial=len(finished), unit="step", disable=not progress)
    with open(log, "a") as logf:
        try:
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
                        logf.write(f"[{time.strftime('%H:%M:%S')}] start {t.name}\n")
                        logf.flush()
                        running[t.name] = (
                            subprocess.Popen(cmd, stdout=stdout, stderr=logf, env=env),
                            time.time(),
                        )
                bar.set_description(f"{len(running)} running")
                time.sleep(0.5)
                for name, (proc, t0) in list(running.items()):
                    if proc.poll() is None:
                        continue
                    del running[name]
                    t = by_name[name]
                    if proc.returncode != 0:
                        raise RuntimeError(f"{name} failed (exit {proc.returncode}); see {log}")
                    out_file = t.done.with_suffix(".out")
                    text = out_file.read_text()
                    tmp = t.done.with_suffix(".tmp")
                    tmp.write_text(
                        json.dumps({"wall_seconds": time.time() - t0, "stdout": text[-4000:]})
                        if t.done.name.endswith(".done.json")
                        else text
                    )
                    tmp.replace(t.done)
                    out_file.unlink()
                    finished.add(name)
                    bar.update(1)
        finally:
            for proc, _ in running.values():
                proc.terminate()
            bar.close()


def cpu_hours(cfg: ReproduceConfig) -> float:
    """Rough hours the paper preset takes on the 2-core CPU README measured on."""
    per = sum(h for step, h in CPU_HOURS_PAPER.items() if step in cfg.steps)
    if "labels" in cfg.steps:  # a stage 1 and a stage 2 per label count
        per += (CPU_HOURS_PAPER["lam"] + CPU_HOURS_PAPER["bc"]) * len(cfg.labels)
    return per * len(cfg.games) * cfg.seeds


def reproduce(cfg: ReproduceConfig, out: Path, progress: bool = True) -> dict:
    """Run (or resume) the grid into ``out`` and summarise it."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "reproduce_config.json").write_text(json.dumps(asdict(cfg), indent=1))
    t0 = time.time()
    tasks = build_tasks(cfg, out)
    run_tasks(tasks, cfg.jobs, cfg.threads, out / "stderr.log", progress)
    return {"out": str(out), "steps": len(tasks), "wall_seconds": round(time.time() - t0, 1),
            **summarise(cfg, out)}  # fmt: skip
