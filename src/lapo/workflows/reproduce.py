"""``lapo reproduce``: the paper's experiment grid, resumable per (game, seed, step).

For each game: data (the shipped demonstrator's, one trained with ``lapo expert train`` for
games without one, or imported data under ``--data-root``) and a random-policy evaluation.
For each (game, seed): stage 1, stage 2, offline decoding at each label count with baselines
(a) BC on the same labels and (b) supervised-IDM labels then BC, online decoding and (c) PPO
from scratch for the same frames, and an evaluation of every policy.

Every step is a ``lapo`` command (run in a worker forked from a server that has imported torch
once, :func:`run_tasks`), its options built from the step's config
dataclass (:func:`lapo.flags.to_flags` spells each flag as the CLI generated from the same
fields reads it). A step is skipped when its marker (``<step>.done.json`` beside its folder)
exists, so a killed grid resumes where it stopped. Independent steps run ``jobs`` at a time. The grid writes ``results.csv`` (every
evaluation), ``summary.md``, ``offline_vs_labels.png`` and ``online_curves.png``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from lapo.config import (
    BCConfig,
    EvalConfig,
    ExpertConfig,
    LAMConfig,
    OfflineConfig,
    OnlineConfig,
    ReproduceConfig,
    preset,
)
from lapo.flags import flag, option, to_flags
from lapo.progress import EstimatedProgress
from lapo.report.grid import summarise
from lapo.workflows import workers

# measured rates on the 2-core CPU of docs/results/speed.md (channels-last fp32): stage 1 paper
# 25.7 samples/s; IMPALA x4 forward ~110 obs/s, so stage 2 (fwd+bwd) ~35 samples/s; online
# decoding forward-only over frozen trunk ~110 frames/s; PPO from scratch x4 ~30 frames/s
CPU_HOURS_PAPER = {
    "lam": 50_000 * 128 / 25.7 / 3600,
    "bc": 60_000 * 128 / 35 / 3600,
    "online": 4_000_000 / 110 / 3600,
    "ppo": 4_000_000 / 30 / 3600,
}


# rough seconds per grid step of the `cpu` preset, one thread each on the 2-core CPU (the coinrun
# grid of docs/results/labels.md); they weight the progress bar until a step of the same kind has finished
CPU_STEP_SECONDS = {
    "data": 300,
    "lam": 1_100,
    "lam_labels": 1_200,
    "bc": 450,
    "bc_labels": 400,
    "idm_bc": 1_050,
    "lapo_offline": 60,
    "lapo_labels": 50,
    "lapo_labels_head": 50,
    "eval": 60,
}
PPO_FRAMES_PER_SECOND = 900  # Nature-CNN PPO on one core (docs/results/demonstrators.md)


@dataclass
class Task:
    name: str
    cmd: list[str]
    done: Path
    deps: tuple[str, ...] = ()


# how every step's command starts: the `lapo` CLI run by this Python; a forked worker runs
# what follows it in-process (run_step)
LAPO_CLI = (sys.executable, "-m", "lapo.cli")


def _lapo(
    *command: str,
    config: Any = None,
    base: Any = None,
    extra: list[str] | tuple[str, ...] = (),
    **options: Any,
) -> list[str]:
    """``python -m lapo.cli COMMAND``: ``options`` (``out=p`` gives ``--out p``, ``True`` a bare
    flag, ``None`` nothing), the fields of ``config`` that differ from ``base`` (spelled as the
    CLI generated from the same dataclass reads them), then the user's ``extra`` options."""
    given = [x for k, v in options.items() if v not in (None, False) for x in option(flag(k), v)]
    fields = to_flags(config, base) if config is not None else []
    return [*LAPO_CLI, *command, *given, *fields, *extra]


def build_tasks(cfg: ReproduceConfig, out: Path) -> list[Task]:
    """Every step of the grid, with the steps it needs."""
    tasks: list[Task] = []
    for game in cfg.games:
        g = out / game
        data, data_deps, data_tasks = _data_tasks(cfg, game, g)
        tasks += data_tasks
        random = EvalConfig(episodes=cfg.episodes, seed=1000)
        cmd = _lapo("eval", policy="random", env=game, config=random)
        tasks.append(Task(f"{game}/eval_random", cmd, g / "eval_random.json"))
        for seed in cfg.seed_range:
            tasks += _seed_tasks(cfg, game, seed, data, data_deps, g / f"seed{seed}")
    return tasks


def _data_tasks(
    cfg: ReproduceConfig, game: str, g: Path
) -> tuple[Path, tuple[str, ...], list[Task]]:
    """The game's dataset, the steps it needs, and the steps that make it: none under
    ``data_root``; else a collection by the shipped demonstrator, or by one trained first."""
    from lapo.evaluation.policies import shipped_demonstrators

    if cfg.data_root:
        return Path(cfg.data_root) / game, (), []
    tasks: list[Task] = []
    deps: tuple[str, ...] = ()
    policy = "demonstrator"
    if game not in shipped_demonstrators():
        policy, deps = str(g / "expert"), (f"{game}/expert",)
        expert = ExpertConfig(game=game, frames=cfg.expert_frames)
        cmd = _lapo("expert", "train", env=game, out=policy, quiet=True, config=expert,
                    base=ExpertConfig(game=game))  # fmt: skip
        tasks.append(Task(f"{game}/expert", cmd, g / "expert.done.json"))
    data = g / "data"
    cmd = _lapo("collect", env=game, policy=policy, frames=cfg.frames,
                test_frames=max(cfg.frames // 6, 1024), out=data, seed=0, quiet=True)  # fmt: skip
    tasks.append(Task(f"{game}/data", cmd, g / "data.done.json", deps))
    return data, (f"{game}/data",), tasks


def _stage1(cfg: ReproduceConfig, seed: int, data: Path, out: Path, **changes: Any) -> list[str]:
    base = preset(LAMConfig, cfg.preset)
    lam = dataclasses.replace(base, seed=seed, **changes)
    return _lapo("lam", "train", data=data, out=out, preset=cfg.preset, quiet=True, config=lam,
                 base=base, extra=cfg.extra.get("lam", []))  # fmt: skip


def _bc(cfg: ReproduceConfig, seed: int, *command: str, **options: Any) -> list[str]:
    """Stage 2 or a BC baseline: the preset's BC config with ``seed``."""
    base = preset(BCConfig, cfg.preset)
    extra = cfg.extra.get("bc", []) + (cfg.extra.get("idm", []) if "idm-bc" in command else [])
    return _lapo(*command, **options, preset=cfg.preset, quiet=True,
                 config=dataclasses.replace(base, seed=seed), base=base, extra=extra)  # fmt: skip


def _offline(
    cfg: ReproduceConfig,
    policy: Path,
    data: Path,
    k: int,
    seed: int,
    out: Path,
    decoder_init: str = "fresh",
) -> list[str]:
    decode = OfflineConfig(labels=k, seed=seed, decoder_init=decoder_init)
    return _lapo("decode", "offline", policy=policy, data=data, out=out, config=decode,
                 extra=cfg.extra.get("decode", []))  # fmt: skip


def _seed_tasks(
    cfg: ReproduceConfig, game: str, seed: int, data: Path, data_deps: tuple[str, ...], r: Path
) -> list[Task]:
    """The steps of one (game, seed): stages 1 and 2, decodings, baselines, evaluations."""
    name, steps = f"{game}/{seed}", cfg.steps
    tasks, methods = [], []
    if "lam" in steps:
        tasks.append(Task(f"{name}/lam", _stage1(cfg, seed, data, r / "lam"),
                          r / "lam.done.json", data_deps))  # fmt: skip
    if "bc" in steps:
        cmd = _bc(cfg, seed, "bc", "train", lam=r / "lam", data=data, out=r / "bc")
        lam_dep = (f"{name}/lam",) if "lam" in steps else data_deps
        tasks.append(Task(f"{name}/bc", cmd, r / "bc.done.json", lam_dep))
    bc_dep = (f"{name}/bc",) if "bc" in steps else data_deps
    for k in cfg.labels if "offline" in steps else []:
        tasks += offline_tasks(cfg, name, seed, k, data, r, bc_dep)
        methods += [f"{m}_k{k}" for m in ("lapo_offline", "bc", "idm_bc")]
    for k in cfg.labels if "labels" in steps else []:
        tasks += labelled_stage1_tasks(cfg, game, seed, k, data, r, data_deps)
        methods += [f"lapo_labels_k{k}", f"lapo_labels_head_k{k}"]
    if "online" in steps:
        online = OnlineConfig(frames=cfg.online_frames, seed=seed)
        cmd = _lapo("decode", "online", policy=r / "bc", env=game, out=r / "lapo_online",
                    quiet=True, config=online, extra=cfg.extra.get("online", []))  # fmt: skip
        tasks.append(Task(f"{name}/lapo_online", cmd, r / "lapo_online.done.json", bc_dep))
        methods.append("lapo_online")
    if "ppo" in steps:
        base = preset(ExpertConfig, "baseline")
        ppo = dataclasses.replace(base, width=4 if cfg.preset == "paper" else 1, seed=seed)
        # --frames always: the command requires it
        cmd = _lapo("baseline", "ppo", env=game, frames=cfg.online_frames, out=r / "ppo_scratch",
                    quiet=True, config=ppo, base=base, extra=cfg.extra.get("ppo", []))  # fmt: skip
        tasks.append(Task(f"{name}/ppo_scratch", cmd, r / "ppo_scratch.done.json"))
        methods.append("ppo_scratch")
    return tasks + eval_tasks(cfg, name, seed, methods, data, data_deps, r)


def offline_tasks(
    cfg: ReproduceConfig,
    name: str,
    seed: int,
    k: int,
    data: Path,
    r: Path,
    bc_dep: tuple[str, ...],
) -> list[Task]:
    """Offline decoding of stage 2 on K labels, and baselines (a) and (b) on the same K."""
    dec = r / f"lapo_offline_k{k}"
    tasks = [Task(f"{name}/lapo_offline_k{k}", _offline(cfg, r / "bc", data, k, seed, dec),
                  r / f"lapo_offline_k{k}.done.json", bc_dep)]  # fmt: skip
    for method, command in (("bc", "bc"), ("idm_bc", "idm-bc")):
        o = r / f"{method}_k{k}"
        cmd = _bc(cfg, seed, "baseline", command, data=data, labels_from=dec, out=o)
        deps = (f"{name}/lapo_offline_k{k}",)
        tasks.append(Task(f"{name}/{method}_k{k}", cmd, r / f"{method}_k{k}.done.json", deps))
    return tasks


def eval_tasks(
    cfg: ReproduceConfig,
    name: str,
    seed: int,
    methods: list[str],
    data: Path,
    data_deps: tuple[str, ...],
    r: Path,
) -> list[Task]:
    """An evaluation of each method's policy (trained by step ``name/method`` into
    ``r/method``)."""
    game = name.split("/")[0]
    # imported data records no demonstrator return: normalise by constants only
    demo = None if cfg.data_root else data
    play = EvalConfig(episodes=cfg.episodes, seed=1000 + seed)
    return [
        Task(
            f"{name}/eval_{method}",
            _lapo(
                "eval", policy=r / method, env=game, config=play, demonstrator_return_from=demo
            ),  # fmt: skip
            r / f"eval_{method}.json",
            (f"{name}/{method}", *data_deps),
        )
        for method in methods
    ]


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
    decoding on the same K windows (drawn by the same seed as every K-label row), once from a
    fresh decoder and once from stage 1's action head (``--decoder-init stage1-head``)."""
    lam, bc, dec = r / f"lam_labels_k{k}", r / f"bc_labels_k{k}", r / f"lapo_labels_k{k}"
    head = r / f"lapo_labels_head_k{k}"
    name = f"{game}/{seed}"
    return [
        Task(
            f"{name}/lam_labels_k{k}",
            _stage1(cfg, seed, data, lam, labels=k, labels_seed=seed),
            r / f"lam_labels_k{k}.done.json",
            data_deps,
        ),
        Task(
            f"{name}/bc_labels_k{k}",
            _bc(cfg, seed, "bc", "train", lam=lam, data=data, out=bc),
            r / f"bc_labels_k{k}.done.json",
            (f"{name}/lam_labels_k{k}",),
        ),
        Task(
            f"{name}/lapo_labels_k{k}",
            _offline(cfg, bc, data, k, seed, dec),
            r / f"lapo_labels_k{k}.done.json",
            (f"{name}/bc_labels_k{k}",),
        ),
        Task(
            f"{name}/lapo_labels_head_k{k}",
            _offline(cfg, bc, data, k, seed, head, decoder_init="stage1-head"),
            r / f"lapo_labels_head_k{k}.done.json",
            (f"{name}/bc_labels_k{k}",),
        ),
    ]


def step_kind(name: str) -> str:
    """What a grid step does, whatever its game, seed and label count:
    ``coinrun/1/idm_bc_k256`` -> ``idm_bc``, ``coinrun/0/eval_bc_k256`` -> ``eval``."""
    step = re.sub(r"_k\d+$", "", name.rsplit("/", 1)[-1])
    return "eval" if step.startswith("eval_") else step


def estimated_seconds(tasks: list[Task], cfg: ReproduceConfig) -> dict[str, float]:
    """Each step's expected wall seconds: the mean of the finished steps of its kind (their
    markers record it), else a rough prior for the preset."""
    measured: dict[str, list[float]] = {}
    for t in tasks:
        if t.done.name.endswith(".done.json") and t.done.exists():
            try:
                seconds = float(json.loads(t.done.read_text())["wall_seconds"])
            except (ValueError, KeyError, TypeError):
                continue
            measured.setdefault(step_kind(t.name), []).append(seconds)
    prior = dict(CPU_STEP_SECONDS)
    prior["expert"] = cfg.expert_frames / PPO_FRAMES_PER_SECOND
    prior["ppo_scratch"] = prior["lapo_online"] = cfg.online_frames / PPO_FRAMES_PER_SECOND
    if cfg.preset == "paper":
        prior.update({k: h * 3600 for k, h in CPU_HOURS_PAPER.items() if k in ("lam", "bc")})
        prior["lam_labels"], prior["bc_labels"] = prior["lam"], prior["bc"]
        prior["ppo_scratch"] = CPU_HOURS_PAPER["ppo"] * 3600
        prior["lapo_online"] = CPU_HOURS_PAPER["online"] * 3600
    out = {}
    for t in tasks:
        kind = step_kind(t.name)
        seen = measured.get(kind)
        out[t.name] = sum(seen) / len(seen) if seen else prior.get(kind, 60.0)
    return out


def run_step(argv: list[str], stdout: str, log: str, threads: int, parent: int) -> None:
    """One grid step, in a worker forked from the fork server (:mod:`lapo.workflows.workers`,
    which has imported torch once): ``python -m lapo.cli ARGV`` (run as that module runs,
    :mod:`runpy`) with ``threads`` torch threads, its standard output in the file ``stdout``
    and its messages appended to ``log``; the worker exits with the command's status (1 and a
    traceback in ``log`` for an exception), or as soon as the grid's process ``parent`` is
    gone (:func:`~lapo.workflows.workers.exit_with`)."""
    import runpy

    import torch

    workers.exit_with(parent)

    os.environ.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    torch.set_num_threads(threads)
    with open(stdout, "w") as out, open(log, "a") as err:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(out.fileno(), 1)
        os.dup2(err.fileno(), 2)
        sys.argv = ["lapo", *argv]
        try:
            runpy.run_module("lapo.cli", run_name="__main__", alter_sys=True)
        finally:  # the module ends in sys.exit(status), which the worker exits with
            sys.stdout.flush()
            sys.stderr.flush()


def run_tasks(
    tasks: list[Task],
    jobs: int,
    threads: int,
    log: Path,
    progress: bool = True,
    weights: dict[str, float] | None = None,
) -> None:
    """Run ``tasks`` in dependency order, ``jobs`` at a time; stop at the first failure. The bar
    counts the ``weights`` (estimated seconds per step; one each if not given). Each step is
    its ``lapo`` command, run by :func:`run_step` in a worker of the fork server, where
    there is one (a step then starts in a fraction of a second instead of importing torch
    anew), else as a subprocess."""
    by_name = {t.name: t for t in tasks}
    missing = {d for t in tasks for d in t.deps} - set(by_name)
    if missing:
        raise ValueError(f"steps depend on unknown steps {sorted(missing)}")
    finished = {t.name for t in tasks if t.done.exists()}
    running: dict[str, tuple[Any, float]] = {}
    log.parent.mkdir(parents=True, exist_ok=True)
    weights = weights or {t.name: 1.0 for t in tasks}
    bar = EstimatedProgress(weights, finished, progress)
    ctx = workers.context()
    forked = ctx.get_start_method() == "forkserver"
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}

    def launch(cmd: list[str], stdout: Path) -> Any:
        if forked and tuple(cmd[: len(LAPO_CLI)]) == LAPO_CLI:  # a lapo command: in a worker
            argv = cmd[len(LAPO_CLI) :]
            args = (argv, str(stdout), str(log), threads, os.getpid())
            proc = ctx.Process(target=run_step, args=args)
            proc.start()
            return proc
        with open(stdout, "w") as out, open(log, "a") as err:
            return subprocess.Popen(cmd, stdout=out, stderr=err, env=env)

    def exit_code(proc: Any) -> int | None:
        return proc.poll() if isinstance(proc, subprocess.Popen) else proc.exitcode

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
                    with open(log, "a") as logf:
                        logf.write(f"[{time.strftime('%H:%M:%S')}] start {t.name}\n")
                    running[t.name] = (launch(cmd, t.done.with_suffix(".out")), time.time())
                    bar.start(t.name)
            bar.describe(f"grid: {len(finished)}/{len(tasks)} steps done, {len(running)} running")
            time.sleep(0.2)
            for name, (proc, t0) in list(running.items()):
                code = exit_code(proc)
                if code is None:
                    continue
                del running[name]
                t = by_name[name]
                if code != 0:
                    raise RuntimeError(f"{name} failed (exit {code}); see {log}")
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
                bar.finish(name)
    finally:
        for proc, _ in running.values():
            proc.terminate()
        bar.close()


def cpu_hours(cfg: ReproduceConfig) -> float:
    """Rough hours the paper preset takes on the 2-core CPU of docs/results/speed.md."""
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
    weights = estimated_seconds(tasks, cfg)
    run_tasks(tasks, cfg.jobs, cfg.threads, out / "stderr.log", progress, weights)
    return {"out": str(out), "steps": len(tasks), "wall_seconds": round(time.time() - t0, 1),
            **summarise(cfg, out)}  # fmt: skip
