"""``lapo demo``: the whole method on a laptop CPU in minutes, ending in one HTML report.

Stages, in order, each recorded in ``stages.json`` when it finishes so that a rerun skips it:

1. ``collect``: the shipped demonstrator plays the game; its frames (and, for the few labels
   and the probe only, its actions) become a dataset;
2. ``stage1``: the latent action model, trained on frames alone;
3. ``probe``: how well latent actions predict the true actions (accuracy, confusion matrix),
   beside the same probe of the untrained IDM;
   ``ceiling``: the same IDM encoder trained on the true actions of every train window (the
   supervised ceiling a latent IDM is judged against);
4. ``plots``: latents by true action (UMAP, or PCA without ``umap-learn``), world-model
   predictions and the open-loop rollout GIF;
5. ``stage2``: the latent policy, behaviour-cloned on frames alone;
6. ``decode``: the decoder fit on K labelled transitions, giving a policy that plays;
7. ``baseline``: BC from scratch on the same K labels;
8. ``evaluate``: random, the demonstrator, the decoded policy and the baseline in the game;
9. ``report``: ``report.html`` (images embedded) and a summary table on the terminal.
"""

from __future__ import annotations

import dataclasses
import json
import threading
import time
from datetime import datetime
from pathlib import Path

from lapo.checkpoint import read_json, write_json
from lapo.config import DemoConfig

# rough seconds per stage on 2 CPU cores at the default sizes; they weight the progress bar
STAGES = {
    "collect": 25,
    "stage1": 330,
    "probe": 30,
    "ceiling": 60,
    "plots": 20,
    "stage2": 90,
    "decode": 20,
    "baseline": 80,
    "evaluate": 90,
    "report": 5,
}


def find_resumable(root: Path, cfg: DemoConfig) -> Path | None:
    """The newest unfinished ``root/demo-*`` run with the same config, if any."""
    for run in sorted(root.glob("demo-*"), reverse=True):
        cfg_file = run / "demo_config.json"
        if (run / "report.html").exists() or not cfg_file.exists():
            continue
        if read_json(cfg_file) == dataclasses.asdict(cfg):
            return run
    return None


class StageProgress:
    """One progress bar across all stages, in estimated seconds: it advances with the clock
    inside a stage (up to that stage's estimate) and jumps to the stage's end when it ends, so
    the ETA improves as stages finish."""

    def __init__(self, weights: dict[str, float], done: set[str], enabled: bool) -> None:
        from tqdm import tqdm

        self.weights = weights
        self.bar = tqdm(
            total=sum(weights.values()),
            initial=sum(w for s, w in weights.items() if s in done),
            unit="s",
            bar_format="{desc} {percentage:3.0f}%|{bar}| [{elapsed}<{remaining}]",
            disable=not enabled,
            dynamic_ncols=True,
        )
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def run(self, index: int, name: str) -> None:
        self.bar.set_description(f"demo [{index}/{len(self.weights)}] {name}")
        self._stop.clear()
        start, budget = self.bar.n, self.weights[name]

        def tick() -> None:
            t0 = time.time()
            while not self._stop.wait(0.5):
                target = start + min(time.time() - t0, 0.95 * budget)
                if target > self.bar.n:
                    self.bar.update(target - self.bar.n)

        self._thread = threading.Thread(target=tick, daemon=True)
        self._thread.start()

    def finish(self, name: str, end: float) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.bar.update(max(end - self.bar.n, 0))

    def close(self) -> None:
        self._stop.set()
        self.bar.close()


def run_demo(
    cfg: DemoConfig, out: Path, progress: bool = True, stop_after: str | None = None
) -> dict:
    """Run (or resume) the demo in ``out``; returns the summary. ``stop_after`` ends the run
    after that stage (as an interruption would)."""
    import torch

    from lapo.baselines import bc_on_labels
    from lapo.bc import train_latent_bc
    from lapo.config import OfflineConfig, bc_preset, lam_preset
    from lapo.data.collect import collect
    from lapo.decode.offline import decode_offline
    from lapo.envs import normalized_return
    from lapo.eval import evaluate
    from lapo.lam import probe_lam, train_lam
    from lapo.plots import plot_lam
    from lapo.policies import load_policy

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if (out / "demo_config.json").exists() and read_json(out / "demo_config.json") != (
        dataclasses.asdict(cfg)
    ):
        from lapo.checkpoint import CheckpointError

        raise CheckpointError(
            f"{out} holds a demo with other settings; resume it with the same options or "
            "use another --out"
        )
    write_json(out / "demo_config.json", dataclasses.asdict(cfg))
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    stages_file = out / "stages.json"
    stages: dict = read_json(stages_file) if stages_file.exists() else {}
    data, lam_run, bc_run = out / "data", out / "stage1", out / "stage2"
    decoded, baseline = out / "decoded", out / "bc_on_labels"

    # stage 2 and the BC baseline train with the same settings
    bc_cfg = dataclasses.replace(
        bc_preset("cpu"),
        steps=cfg.bc_steps,
        batch_size=cfg.bc_batch,
        warmup_steps=min(100, cfg.bc_steps // 5),
        eval_every=max(cfg.bc_steps // 5, 1),
        seed=cfg.seed,
        threads=cfg.threads,
    )

    def s_collect() -> dict:
        return collect(
            cfg.game,
            "demonstrator",
            cfg.frames,
            data,
            test_frames=cfg.frames // 5,
            num_envs=8,
            seed=cfg.seed,
            resume=data.exists(),
            progress=False,
        )

    def s_stage1() -> dict:
        lam_cfg = dataclasses.replace(
            lam_preset("cpu"),
            steps=cfg.lam_steps,
            batch_size=cfg.lam_batch,
            eval_every=max(cfg.lam_steps // 6, 1),
            probe_every=max(cfg.lam_steps // 3, 1) if cfg.lam_steps >= 300 else cfg.lam_steps,
            probe_train=min(2_048, cfg.probe_labels),
            probe_test=1_024,
            seed=cfg.seed,
            threads=cfg.threads,
        )
        return train_lam(lam_cfg, data, lam_run, progress=False)

    def s_probe() -> dict:
        from lapo.data.dataset import WindowDataset

        n = min(cfg.probe_labels, len(WindowDataset(data, "train", k=3)))
        rep = probe_lam(lam_run, data, labels=n, test_windows=4_096, seed=cfg.seed)
        write_json(out / "probe.json", rep)
        base = probe_lam(lam_run, data, n, 4_096, cfg.seed, untrained=True)
        write_json(out / "probe_untrained.json", base)
        return {
            "accuracy": rep["accuracy"],
            "balanced_accuracy": rep["balanced_accuracy"],
            "untrained_accuracy": base["accuracy"],
            "untrained_balanced_accuracy": base["balanced_accuracy"],
        }

    def s_ceiling() -> dict:
        rep = supervised_ceiling(cfg, data, lam_run)
        write_json(out / "ceiling.json", rep)
        return {k: v for k, v in rep.items() if k != "confusion"}

    def s_plots() -> dict:
        return plot_lam(lam_run, data, out / "plots", windows=1_500, seed=cfg.seed)

    def s_stage2() -> dict:
        return train_latent_bc(bc_cfg, lam_run, data, bc_run, progress=False)

    def s_decode() -> dict:
        from lapo.data.dataset import WindowDataset

        k = min(cfg.labels, len(WindowDataset(data, "train", k=3)))
        return decode_offline(bc_run, data, decoded, OfflineConfig(labels=k, seed=cfg.seed))

    def s_baseline() -> dict:
        return bc_on_labels(bc_cfg, data, baseline, cfg.labels, labels_from=decoded, progress=False)

    def s_evaluate() -> dict:
        # the demonstrator is evaluated first, on the same levels as the others: its return
        # there is the 1 of the random->demonstrator normalisation
        results: dict[str, dict] = {}
        demo_return = None
        for name, spec in (
            ("demonstrator", "demonstrator"),
            ("random", "random"),
            ("LAPO (decoded)", str(decoded)),
            ("BC on the same labels", str(baseline)),
        ):
            policy = load_policy(spec, cfg.game, seed=cfg.seed)
            r = evaluate(
                policy,
                cfg.game,
                episodes=cfg.episodes,
                seed=1_000 + cfg.seed,
                demonstrator_return=demo_return,
            )
            demo_return = demo_return if demo_return is not None else r["mean_return"]
            r["demonstrator_return"] = demo_return
            r["demonstrator_normalized_return"] = float(
                normalized_return(cfg.game, r["mean_return"], expert=demo_return)
            )
            results[name] = {k: r[k] for k in r if k != "policy"}
        results = {n: results[n] for n in ("random", "demonstrator", *list(results)[2:])}
        write_json(out / "returns.json", results)
        return {n: round(r["mean_return"], 2) for n, r in results.items()}

    def s_report() -> dict:
        return write_demo_report(cfg, out, read_json(stages_file))

    steps = {
        "collect": s_collect,
        "stage1": s_stage1,
        "probe": s_probe,
        "ceiling": s_ceiling,
        "plots": s_plots,
        "stage2": s_stage2,
        "decode": s_decode,
        "baseline": s_baseline,
        "evaluate": s_evaluate,
        "report": s_report,
    }
    scale = 1.0 if cfg.lam_steps >= 1_000 else 0.15  # --fast sizes take a fraction
    weights = {k: v * scale for k, v in STAGES.items()}
    bar = StageProgress(weights, set(stages), progress)
    done_at = 0.0
    try:
        for i, (name, fn) in enumerate(steps.items(), 1):
            done_at += weights[name]
            if name in stages:
                continue
            bar.run(i, name)
            t0 = time.time()
            result = fn()
            stages[name] = {
                "wall_seconds": round(time.time() - t0, 1),
                "finished": datetime.now().isoformat(timespec="seconds"),
                "result": json.loads(json.dumps(result, default=str)),
            }
            write_json(stages_file, stages)
            bar.finish(name, done_at)
            if name == stop_after:
                break
    finally:
        bar.close()
    return {"out": str(out), "stages": {k: v["wall_seconds"] for k, v in stages.items()}}


def supervised_ceiling(cfg: DemoConfig, data: Path, lam_run: Path) -> dict:
    """The stage-1 IDM's encoder and inputs trained on the true action of every train window
    for ``cfg.ceiling_steps`` steps: what the probe would read if the latent were the action.
    Scored on the probe's number of test windows."""
    import torch

    from lapo.baselines import score_supervised_idm, train_supervised_idm
    from lapo.config import SupervisedIDMConfig
    from lapo.data.dataset import WindowDataset
    from lapo.lam import lam_config_from_dict

    lam = lam_config_from_dict(read_json(lam_run / "config.json")["lam"])
    idm_cfg = SupervisedIDMConfig(
        width=lam.idm_width,
        differences=lam.idm_differences,
        difference_scale=lam.idm_difference_scale,
        steps=cfg.ceiling_steps,
        batch_size=cfg.lam_batch,
        learning_rate=1e-3,
        weight_decay=0.0,
    )
    train, test = WindowDataset(data, "train", k=3), WindowDataset(data, "test", k=3)
    t0 = time.time()
    device = torch.device("cpu")
    model = train_supervised_idm(idm_cfg, train, train.starts, device, cfg.seed)
    seconds = time.time() - t0
    rep = score_supervised_idm(model, idm_cfg, test, cfg.seed, device)
    return {"steps": cfg.ceiling_steps, "train_seconds": round(seconds, 1), **rep}


def write_demo_report(cfg: DemoConfig, out: Path, stages: dict) -> dict:
    """``report.html`` from a finished demo's files; returns the summary table's rows."""
    from lapo.envs import normalized_return
    from lapo.report import (
        bc_curves,
        confusion_chart,
        data_uri,
        fig_uri,
        img,
        machine,
        returns_chart,
        stage1_curves,
        table,
        write_html,
    )

    game = cfg.game
    probe = read_json(out / "probe.json")
    returns = read_json(out / "returns.json")
    decode = read_json(out / "decoded" / "decode.json")
    plots = stages["plots"]["result"]["files"]
    latent_file = Path(plots["latents"])
    latent_kind = "UMAP" if "umap" in latent_file.name else "PCA (install lapo[umap] for UMAP)"
    demo_ret = returns["LAPO (decoded)"].get("demonstrator_return")

    base = read_json(out / "probe_untrained.json")
    ceiling = read_json(out / "ceiling.json")
    stage1_s = stages["stage1"]["result"].get("train_seconds")

    def pair(r: dict) -> str:
        return f"{r['accuracy']:.3f} / {r['balanced_accuracy']:.3f}"

    share = (probe["accuracy"] - base["accuracy"]) / max(
        ceiling["accuracy"] - base["accuracy"], 1e-9
    )
    learned = [
        ["untrained IDM (random features of the same inputs)", pair(base)],
        [f"stage 1: latent IDM, frames only ({stage1_s or '?'} s of training)", pair(probe)],
        [
            f"ceiling: the same encoder trained on the true actions "
            f"({ceiling['steps']} steps, {ceiling['train_seconds']:.0f} s)",
            pair(ceiling),
        ],
        [
            "majority class / chance",
            f"{probe['majority_class_accuracy']:.3f} / {probe['chance']:.3f}",
        ],
    ]
    summary = [
        ["probe accuracy (latent -> true action)", f"{probe['accuracy']:.3f}"],
        ["probe balanced accuracy", f"{probe['balanced_accuracy']:.3f}"],
        [
            "untrained IDM's probe / supervised ceiling",
            f"{base['accuracy']:.3f} / {ceiling['accuracy']:.3f}",
        ],
        [
            "chance / majority class",
            f"{probe['chance']:.3f} / {probe['majority_class_accuracy']:.3f}",
        ],
    ]
    for name, r in returns.items():
        summary.append(
            [
                f"return: {name}",
                f"{r['mean_return']:.2f} ± {r['stderr_return'] or 0:.2f} "
                f"(normalised {normalized_return(game, r['mean_return']):.2f}; "
                f"random->demonstrator {r.get('demonstrator_normalized_return', float('nan')):.2f})",
            ]
        )
    total = sum(s["wall_seconds"] for s in stages.values())
    run_rows = [[k, f"{v['wall_seconds']:.0f} s", v["finished"]] for k, v in stages.items()]
    run_rows.append(["all stages", f"{total:.0f} s", ""])
    sections = [
        (
            "Summary",
            "<p class='note'>Stage 1 and stage 2 saw frames only. Actions were used for the "
            f"probe, for the decoder's {decode['labels']} labelled transitions and for the "
            "baseline, which is trained on exactly those labels.</p>"
            + table(summary, ["measure", "value"]),
        ),
        (
            "Did the latent actions learn the true actions?",
            "<p class='note'>The probe (an MLP from latent to true action, fit on "
            f"{probe['labels']} labelled train windows, scored on {probe['n_test']} test windows; "
            "accuracy / balanced accuracy) of the trained IDM beside the same probe of the "
            "untrained IDM and beside the IDM encoder trained directly on the true actions. "
            f"Stage 1 covers <b>{share:.0%}</b> of the way from the untrained IDM to the "
            "ceiling.</p>" + table(learned, ["model", "probe accuracy / balanced"]),
        ),
        (
            "What was run",
            f"<p>Game <b>{game}</b>, the shipped demonstrator's data ({cfg.frames} train frames). "
            f"Returns are normalised by the published random/expert constants and between the "
            f"random constant and the demonstrator's return here ({demo_ret:.2f}). "
            f"Machine: {machine()}.</p>"
            + table(run_rows, ["stage", "wall time", "finished"])
            + f"<pre>{json.dumps(dataclasses.asdict(cfg), indent=1)}</pre>",
        ),
        (
            "Learning curves",
            img(fig_uri(stage1_curves(out / "stage1" / "metrics.csv", game)), "stage 1")
            + img(
                fig_uri(
                    bc_curves(
                        {
                            "stage 2 (latent BC)": out / "stage2" / "metrics.csv",
                            "baseline: BC on the labels": out / "bc_on_labels" / "metrics.csv",
                        },
                        game,
                    )
                ),
                "stage 2 and baseline",
            ),
        ),
        (
            "Latent actions by true action",
            f"<p class='note'>{latent_kind} of IDM latents of test windows, coloured by the "
            "action the demonstrator took.</p>" + img(data_uri(latent_file), "latents"),
        ),
        (
            "World-model predictions",
            img(data_uri(Path(plots["predictions"])), "predictions")
            + "<p class='note'>Open-loop rollout: the world model driven only by the IDM's "
            "latents of a real test episode (left real, right predicted).</p>"
            + img(data_uri(Path(plots["rollout"])), "rollout"),
        ),
        (
            "Probe confusion matrix",
            img(
                fig_uri(confusion_chart(probe["confusion"], game, "probe on IDM latents")),
                "confusion",
            ),
        ),
        (
            "Returns",
            img(fig_uri(returns_chart(returns, game)), "returns")
            + f"<p class='note'>{cfg.episodes} episodes per policy, sampled actions.</p>",
        ),
    ]
    write_html(out / "report.html", f"lapo demo: {game}", sections)
    return {"report": str(out / "report.html"), "summary": summary}


def default_out(root: Path) -> Path:
    return root / f"demo-{datetime.now().strftime('%Y%m%d-%H%M%S')}"
