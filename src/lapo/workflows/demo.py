"""``lapo demo``: the whole method on a laptop CPU in minutes, ending in one HTML report.

Stages, in order, each recorded in ``stages.json`` when it finishes so that a rerun skips it:

1. ``collect``: the shipped demonstrator plays the game; its frames (and, for the few labels
   and the probe only, its actions) become a dataset (``--policy random``: a random policy
   plays any game, and the demo stops after stage 1's probe, ceiling and pictures);
2. ``stage1``: the latent action model, trained on frames and, unless ``--video-only``, the
   K labelled windows through an action head beside the video loss;
3. ``probe``: how well latent actions predict the true actions (accuracy, confusion matrix),
   beside the same probe of the untrained IDM;
   ``ceiling``: the same IDM encoder trained on the true actions of every train window (the
   supervised ceiling a latent IDM is judged against);
4. ``plots``: latents by true action (UMAP, or PCA without ``umap-learn``) and in k-means
   clusters, world-model predictions and the open-loop rollout GIF;
5. ``stage2``: the latent policy, behaviour-cloned on every frame's latent (and, where stage 1
   saw the K labels, on the action its head reads from that latent: ``--head-weight``);
6. ``decode``: the decoder fit on K labelled transitions (started from stage 1's action head
   when stage 1 saw them), giving a policy that plays;
7. ``baseline``: BC from scratch on the same K labels (baseline (a)); ``idm_bc``: baseline
   (b), a supervised IDM on the same K labels labels every frame, then BC;
   with ``--compare-labels``, LAPO from frames alone too: ``stage1_video``, ``stage2_video``
   and ``decode_video`` (stage 2 and decoding as above, the decoder fresh);
8. ``eval_*``: random, the demonstrator, the decoded policy and the baselines, each played in
   the game on the same levels; ``evaluate`` gathers their returns and normalises them;
9. ``report``: ``report.html`` (images embedded) and a summary table on the terminal.

On 2 or more cores the stages run two at a time, each in its own process with half the
threads, as soon as what they read has been written (:data:`NEEDS`): the networks are small,
so one thread per stage does more work per second than two threads on one stage (stage 1 on
an AVX2 EPYC: 60 samples/s per process with two side by side, 83 for one process on both
cores).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from datetime import datetime
from pathlib import Path

import torch

from lapo.checkpoint import CheckpointError, read_json, write_json
from lapo.config import (
    BCConfig,
    DemoConfig,
    LAMConfig,
    OfflineConfig,
    SupervisedIDMConfig,
    config_from_dict,
    preset,
)
from lapo.data.collect import collect
from lapo.data.dataset import WindowDataset
from lapo.envs import check_game, normalized_return
from lapo.errors import ConfigError
from lapo.evaluation.episodes import evaluate
from lapo.evaluation.policies import load_policy
from lapo.progress import EstimatedProgress
from lapo.report.demo import DEMO_POLICIES, write_demo_report
from lapo.report.latents import plot_lam
from lapo.stages.baselines import (
    bc_on_labels,
    idm_labels_bc,
    score_supervised_idm,
    train_supervised_idm,
)
from lapo.stages.bc import train_latent_bc
from lapo.stages.decode.offline import decode_offline
from lapo.stages.lam import train_lam
from lapo.stages.lam_probe import probe_lam
from lapo.workflows import workers
from lapo.workflows.workers import lanes

# seconds per stage at the default sizes, one thread each with two stages side by side
# (float32 on a 2-core AMD EPYC with AVX2 only, 2026-12-07; an AVX512 CPU takes about half;
# stage 1 scaled by the 32x32 world model's 0.66 measured on a Xeon);
# they weight the progress bar. A policy's evaluation takes longer the longer its episodes
STAGES = {
    "collect": 20,
    "stage1": 160,
    "probe": 25,
    "ceiling": 70,
    "plots": 10,
    "stage2": 105,
    "decode": 15,
    "baseline": 65,
    "idm_bc": 190,
    "stage1_video": 150,
    "stage2_video": 105,
    "decode_video": 15,
    "eval_demonstrator": 5,
    "eval_random": 5,
    "eval_decoded": 30,
    "eval_baseline": 30,
    "eval_idm_bc": 30,
    "eval_decoded_video": 30,
    "evaluate": 1,
    "report": 2,
}


def saved_settings(path: Path) -> dict | None:
    """A demo's recorded settings, with the default of any setting added since it was written
    (a demo recorded before ``--policy`` existed played the demonstrator; one recorded before
    ``--video-only`` trained stage 1 on frames alone, before ``--bc-arch`` its policies on the
    IMPALA-CNN, before ``--head-weight`` its stage 2 on the latent alone, before
    ``--wm-space-to-depth`` its world model at 64x64); None for settings
    this version cannot
    take (a removed setting, a value now out of range, a comparison laid out otherwise): not
    the same demo."""
    saved = read_json(path)
    saved.setdefault("bc_arch", "impala")
    saved.setdefault("head_weight", 0.0)
    saved.setdefault("wm_space_to_depth", False)
    if "video_only" not in saved:
        if saved.get("compare_labels"):
            return None
        saved["video_only"] = saved.get("policy", "demonstrator") != "random"
    try:
        return dataclasses.asdict(config_from_dict(DemoConfig, saved, str(path)))
    except ConfigError:
        return None


def find_resumable(root: Path, cfg: DemoConfig) -> Path | None:
    """The newest unfinished ``root/demo-*`` run with the same config, if any."""
    for run in sorted(root.glob("demo-*"), reverse=True):
        cfg_file = run / "demo_config.json"
        if (run / "report.html").exists() or not cfg_file.exists():
            continue
        if saved_settings(cfg_file) == dataclasses.asdict(cfg):
            return run
    return None


class Demo:
    """One demo run's settings and folders; each stage below reads what earlier ones wrote."""

    def __init__(self, cfg: DemoConfig, out: Path) -> None:
        self.cfg, self.out = cfg, out
        self.data, self.lam_run, self.bc_run = out / "data", out / "stage1", out / "stage2"
        self.decoded, self.baseline = out / "decoded", out / "bc_on_labels"
        # baseline (b); with --compare-labels, LAPO from frames alone
        self.idm_bc, self.lam_video = out / "idm_labels_bc", out / "stage1_video"
        self.bc_video, self.decoded_video = out / "stage2_video", out / "decoded_video"
        # stage 2 and the BC baseline train with the same settings
        bc_cpu = preset(BCConfig, "cpu")
        self.bc_cfg = dataclasses.replace(
            bc_cpu,
            steps=cfg.bc_steps,
            batch_size=cfg.bc_batch,
            arch=cfg.bc_arch,
            warmup_steps=min(100, cfg.bc_steps // 5),
            # the test loss halfway and at the end, on 512 windows (fewer at toy sizes): a
            # curve to read, not a figure the report compares
            eval_every=max(cfg.bc_steps // 2, 1),
            test_windows=min(512, 2 * cfg.bc_steps),
            seed=cfg.seed,
            threads=cfg.threads,
        )

    def train_windows(self) -> int:
        return len(WindowDataset(self.data, "train", k=3))


def stage_collect(d: Demo) -> dict:
    c = d.cfg
    return collect(c.game, c.policy, c.frames, d.data, test_frames=c.frames // 5,
                   num_envs=8, seed=c.seed, resume=d.data.exists(), progress=False)  # fmt: skip


def stage1_config(d: Demo, **labels: object) -> LAMConfig:
    """The demo's stage 1: the ``cpu`` preset at the demo's sizes (``labels``: the options
    that add the K labels)."""
    c = d.cfg
    return dataclasses.replace(
        preset(LAMConfig, "cpu"),
        steps=c.lam_steps,
        max_minutes=0.0,  # the demo's steps, whatever the CPU (the preset's time bound is off)
        batch_size=c.lam_batch,
        eval_every=max(c.lam_steps // 2, 1),
        # the test loss on 256 windows (a curve to read; the probe stage measures the latent),
        # fewer at toy sizes (--fast), where its three evaluations would otherwise cost as much
        # as the training steps
        test_windows=min(256, 2 * c.lam_steps),
        # no probe during training: the probe stage measures the latent (and the untrained
        # IDM's) on more windows, and with the labels stage 1's action head too
        probe_every=0,
        seed=c.seed,
        threads=c.threads,
        precision=c.precision,
        wm_space_to_depth=c.wm_space_to_depth,
        **labels,
    )


def stage_stage1(d: Demo) -> dict:
    # the K windows decoding and the baselines draw by the same seed, unless --video-only
    c = d.cfg
    labels = dict(labels=demo_labels(d), labels_seed=c.seed) if c.labels_in_stage1 else {}
    return train_lam(stage1_config(d, **labels), d.data, d.lam_run, progress=False)


def stage_probe(d: Demo) -> dict:
    n = min(d.cfg.probe_labels, d.train_windows())
    rep = probe_lam(d.lam_run, d.data, labels=n, test_windows=4_096, seed=d.cfg.seed)
    write_json(d.out / "probe.json", rep)
    base = probe_lam(d.lam_run, d.data, n, 4_096, d.cfg.seed, untrained=True)
    write_json(d.out / "probe_untrained.json", base)
    return {
        "accuracy": rep["accuracy"],
        "balanced_accuracy": rep["balanced_accuracy"],
        "untrained_accuracy": base["accuracy"],
        "untrained_balanced_accuracy": base["balanced_accuracy"],
    }


def stage_ceiling(d: Demo) -> dict:
    rep = supervised_ceiling(d.cfg, d.data, stage1_config(d))
    write_json(d.out / "ceiling.json", rep)
    return {k: v for k, v in rep.items() if k != "confusion"}


def stage_plots(d: Demo) -> dict:
    # the latents by true action, and in 8 k-means clusters with the actions inside each
    return plot_lam(d.lam_run, d.data, d.out / "plots", windows=1_500, seed=d.cfg.seed, clusters=8)


def stage_stage2(d: Demo) -> dict:
    # where stage 1 saw the K labels, its action head weighs in stage 2's loss
    cfg = d.bc_cfg
    if d.cfg.labels_in_stage1:
        cfg = dataclasses.replace(cfg, head_weight=d.cfg.head_weight)
    return train_latent_bc(cfg, d.lam_run, d.data, d.bc_run, progress=False)


def decode_k(d: Demo, policy_run: Path, out: Path, decoder_init: str = "fresh") -> dict:
    """Offline decoding of stage-2 run ``policy_run`` on the demo's K labels (drawn by seed:
    the same K windows for every stage 2), the decoder started as ``decoder_init`` says."""
    # its held-out scores on 1,024 test windows: a figure to read, not one the report compares
    cfg = OfflineConfig(
        labels=demo_labels(d), seed=d.cfg.seed, test_windows=1_024, decoder_init=decoder_init
    )
    return decode_offline(policy_run, d.data, out, cfg)


def stage_decode(d: Demo) -> dict:
    # from stage 1's action head where stage 1 saw the K labels: on coinrun's 3 seeds (AVX2
    # EPYC) 1.25 ahead of BC against 0.62 from a fresh decoder (docs/results/demo.md)
    init = "stage1-head" if d.cfg.labels_in_stage1 else "fresh"
    return decode_k(d, d.bc_run, d.decoded, decoder_init=init)


def demo_labels(d: Demo) -> int:
    """K, at most the train windows: decoding and the baselines draw the same K windows by
    the demo's seed, so each may run before the others (``labelled_windows.json`` records
    them in each run)."""
    return min(d.cfg.labels, d.train_windows())


def stage_baseline(d: Demo) -> dict:
    return bc_on_labels(d.bc_cfg, d.data, d.baseline, demo_labels(d), progress=False)


def stage_stage1_video(d: Demo) -> dict:
    return train_lam(stage1_config(d), d.data, d.lam_video, progress=False)


def stage_stage2_video(d: Demo) -> dict:
    return train_latent_bc(d.bc_cfg, d.lam_video, d.data, d.bc_video, progress=False)


def stage_decode_video(d: Demo) -> dict:
    return decode_k(d, d.bc_video, d.decoded_video)


def stage_idm_bc(d: Demo) -> dict:
    # the ceiling's IDM (stage 1's encoder and inputs, as many steps) on the K labels, with
    # baseline (b)'s own optimiser settings (weight decay against K small)
    base = SupervisedIDMConfig()
    idm_cfg = dataclasses.replace(
        supervised_idm_config(d.cfg, stage1_config(d)),
        learning_rate=base.learning_rate,
        weight_decay=base.weight_decay,
    )
    return idm_labels_bc(d.bc_cfg, idm_cfg, d.data, d.idm_bc, demo_labels(d), progress=False)


def evaluate_policy(d: Demo, who: str) -> dict:
    """Play ``who`` (the demonstrator, random or a policy folder's attribute of :class:`Demo`)
    for the demo's episodes on the same levels as every other policy; the result is written
    to ``returns/WHO.json`` for ``evaluate`` to gather."""
    c = d.cfg
    spec = {"demonstrator": c.policy, "random": "random"}.get(who) or str(getattr(d, who))
    r = evaluate(load_policy(spec, c.game, seed=c.seed), c.game, episodes=c.episodes,
                 seed=1_000 + c.seed)  # fmt: skip
    write_json(d.out / "returns" / f"{who}.json", {k: r[k] for k in r if k != "policy"})
    return {"mean_return": r["mean_return"], "episodes": r["episodes"]}


# the played policies: the demonstrator, random, then the report's (DEMO_POLICIES) by folder
PLAYED = ("random", "demonstrator", *(attr for attr, _ in DEMO_POLICIES.values()))


def stage_evaluate(d: Demo) -> dict:
    # the demonstrator's return on the same levels as the others is the 1 of the
    # random->demonstrator normalisation
    c = d.cfg
    names = {"demonstrator": "demonstrator", "random": "random"}
    names |= {attr: name for name, (attr, _) in DEMO_POLICIES.items()}
    results: dict[str, dict] = {}
    for who in PLAYED:
        path = d.out / "returns" / f"{who}.json"
        if f"eval_{who}" in demo_stages(c) and path.exists():
            results[names[who]] = read_json(path)
    demo_return = results["demonstrator"]["mean_return"]
    for r in results.values():
        r["demonstrator_return"] = demo_return
        r["demonstrator_normalized_return"] = float(
            normalized_return(c.game, r["mean_return"], expert=demo_return)
        )
    write_json(d.out / "returns.json", results)
    return {n: round(r["mean_return"], 2) for n, r in results.items()}


def stage_report(d: Demo) -> dict:
    return write_demo_report(d.cfg, d.out, read_json(d.out / "stages.json"))


# the demo's stages in order; each returns what stages.json records for it
DEMO_STAGES: dict[str, Callable[[Demo], dict]] = {
    "collect": stage_collect,
    "stage1": stage_stage1,
    "probe": stage_probe,
    "ceiling": stage_ceiling,
    "plots": stage_plots,
    "stage2": stage_stage2,
    "decode": stage_decode,
    "baseline": stage_baseline,
    "idm_bc": stage_idm_bc,
    "stage1_video": stage_stage1_video,
    "stage2_video": stage_stage2_video,
    "decode_video": stage_decode_video,
    **{f"eval_{who}": functools.partial(evaluate_policy, who=who) for who in PLAYED},
    "evaluate": stage_evaluate,
    "report": stage_report,
}

# what each stage reads that others write: a stage starts once these (those the demo runs)
# have finished; the report reads everything
NEEDS: dict[str, tuple[str, ...]] = {
    "stage1": ("collect",),
    "probe": ("stage1",),
    "ceiling": ("collect",),
    "plots": ("stage1",),
    "stage2": ("stage1",),
    "decode": ("stage2",),
    "baseline": ("collect",),
    "idm_bc": ("collect",),
    "stage1_video": ("collect",),
    "stage2_video": ("stage1_video",),
    "decode_video": ("stage2_video",),
    "eval_decoded": ("decode",),
    "eval_baseline": ("baseline",),
    "eval_idm_bc": ("idm_bc",),
    "eval_decoded_video": ("decode_video",),
    "evaluate": tuple(f"eval_{who}" for who in PLAYED),
    "report": tuple(DEMO_STAGES)[:-1],
}
# which ready stage goes first: LAPO's own chain (the longest) first, the pictures last
PRIORITY = (
    "collect", "stage1", "stage2", "decode", "stage1_video", "stage2_video", "decode_video",
    "eval_decoded", "eval_decoded_video", "idm_bc", "baseline", "ceiling", "eval_idm_bc",
    "eval_baseline", "eval_demonstrator", "eval_random", "probe", "plots", "evaluate", "report",
)  # fmt: skip

VIDEO_STAGES = ("stage1_video", "stage2_video", "decode_video", "eval_decoded_video")
# what a random-play demo runs: a random policy is nothing to imitate
STAGE1_STAGES = ("collect", "stage1", "probe", "ceiling", "plots", "report")


def demo_stages(cfg: DemoConfig) -> dict[str, Callable[[Demo], dict]]:
    """The stages this demo runs, in order (LAPO from frames alone too with
    ``--compare-labels``; stage 1 alone with ``--policy random``)."""
    if cfg.policy == "random":
        return {k: DEMO_STAGES[k] for k in STAGE1_STAGES}
    return {k: f for k, f in DEMO_STAGES.items() if cfg.compare_labels or k not in VIDEO_STAGES}


def prepare_folder(cfg: DemoConfig, out: Path) -> None:
    """Create ``out``, refusing one that holds a demo with other settings; record ``cfg``."""
    out.mkdir(parents=True, exist_ok=True)
    saved = out / "demo_config.json"
    if saved.exists() and saved_settings(saved) != dataclasses.asdict(cfg):
        raise CheckpointError(
            f"{out} holds a demo with other settings; resume it with the same options or "
            "use another --out"
        )
    write_json(saved, dataclasses.asdict(cfg))


def run_stage(name: str, cfg: DemoConfig, out: Path) -> dict:
    """Stage ``name`` of the demo ``cfg`` in ``out`` on ``cfg.threads`` threads: what
    ``stages.json`` records for it (``started``, ``wall_seconds``, ``finished``, ``result``)."""
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    started, t0 = datetime.now().isoformat(timespec="seconds"), time.time()
    result = DEMO_STAGES[name](Demo(cfg, out))
    return {
        "started": started,
        "wall_seconds": round(time.time() - t0, 1),
        "finished": datetime.now().isoformat(timespec="seconds"),
        "result": json.loads(json.dumps(result, default=str)),
    }


def run_demo(cfg: DemoConfig, out: Path, progress: bool = True) -> dict:
    """Run (or resume) the demo in ``out``; returns the summary. Stages run two at a time on
    2 or more cores (:func:`lanes`), each once what it reads is written (:data:`NEEDS`)."""
    out = Path(out)
    check_game(cfg.game)
    prepare_folder(cfg, out)
    stages_file = out / "stages.json"
    stages: dict = read_json(stages_file) if stages_file.exists() else {}
    todo = demo_stages(cfg)
    scale = 1.0 if cfg.lam_steps >= 200 else 0.3  # --fast sizes take a fraction
    bar = EstimatedProgress({k: STAGES[k] * scale for k in todo}, set(stages), progress)
    t0, (n_lanes, threads) = time.time(), lanes(cfg.threads)
    lane_cfg = dataclasses.replace(cfg, threads=threads)
    pending = [k for k in PRIORITY if k in todo and k not in stages]
    running: dict[Future, str] = {}
    error: BaseException | None = None

    def ready(name: str) -> bool:
        return all(k in stages for k in NEEDS.get(name, ()) if k in todo)

    pool = None
    if n_lanes > 1:  # each worker ends itself if this process is killed
        pool = ProcessPoolExecutor(n_lanes, mp_context=workers.context(),
                                   initializer=workers.exit_with, initargs=(os.getpid(),))  # fmt: skip
    try:
        while pending or running:
            free = n_lanes - len(running)
            for name in [k for k in pending if ready(k)][:free] if error is None else []:
                pending.remove(name)
                bar.start(name, "demo: " + " + ".join([*running.values(), name]))
                if pool is None:  # one lane: in this process
                    done: Future = Future()
                    done.set_result(run_stage(name, lane_cfg, out))
                else:
                    done = pool.submit(run_stage, name, lane_cfg, out)
                running[done] = name
            if not running:
                break  # nothing ready after an error
            finished, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in finished:
                name = running.pop(future)
                try:
                    stages[name] = future.result()
                except BaseException as e:  # the others running finish and are kept
                    error = error or e
                    continue
                # in the demo's order, whatever order they finished in
                stages = {k: stages[k] for k in DEMO_STAGES if k in stages}
                write_json(stages_file, stages)
                bar.finish(name)
                bar.describe("demo: " + " + ".join(running.values()))
    except BaseException:
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)
        raise
    finally:
        bar.close()
    if pool is not None:
        pool.shutdown()
    if error is not None:
        raise error
    return {
        "out": str(out),
        "stages": {k: v["wall_seconds"] for k, v in stages.items()},
        "wall_seconds": round(time.time() - t0, 1),  # this call's, resumed stages not counted
    }


def supervised_ceiling(cfg: DemoConfig, data: Path, lam: LAMConfig) -> dict:
    """Stage 1's IDM encoder and inputs (``lam``) trained on the true action of every train
    window for ``cfg.ceiling_steps`` steps: what the probe would read if the latent were the
    action. Scored on the probe's number of test windows."""
    idm_cfg = supervised_idm_config(cfg, lam)
    train, test = WindowDataset(data, "train", k=3), WindowDataset(data, "test", k=3)
    t0 = time.time()
    device = torch.device("cpu")
    model = train_supervised_idm(idm_cfg, train, train.starts, device, cfg.seed)
    seconds = time.time() - t0
    rep = score_supervised_idm(model, idm_cfg, test, cfg.seed, device)
    return {"steps": cfg.ceiling_steps, "train_seconds": round(seconds, 1), **rep}


def supervised_idm_config(cfg: DemoConfig, lam: LAMConfig) -> SupervisedIDMConfig:
    """The supervised IDM of the ceiling: stage 1's IDM encoder and inputs (``lam``), the
    demo's steps."""
    return SupervisedIDMConfig(
        width=lam.idm_width,
        differences=lam.idm_differences,
        difference_scale=lam.idm_difference_scale,
        steps=cfg.ceiling_steps,
        batch_size=cfg.lam_batch,
        learning_rate=1e-3,
        weight_decay=0.0,
    )


def default_out(root: Path) -> Path:
    return root / f"demo-{datetime.now().strftime('%Y%m%d-%H%M%S')}"
