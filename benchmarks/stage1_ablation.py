"""Stage-1 ablation: variants of `lapo lam train` beside the supervised ceiling, at equal wall time.

    python benchmarks/stage1_ablation.py --data runs/data/coinrun,runs/data/bigfish \\
        --variants vq_restarts,laom --minutes 15 --jobs 2 --threads 1 --out runs/ablation

Each (game, variant) trains the `cpu` preset with the variant's options on one dataset for
``--minutes`` of training steps (`--max-minutes`; probes and test losses are not counted),
probing the latent every ``--probe-every`` steps; ``ceiling`` runs
``benchmarks/supervised_idm.py`` (the same IDM encoder trained on the true actions) for the
same time. ``--jobs`` runs share the machine, one ``--threads`` each: give each the same
share, so that wall time is comparable. With ``--paper-probe`` each variant is then also
probed with the paper's protocol (`lapo lam probe --protocol paper`).

Resumable: a finished run leaves ``done.json`` and is skipped; an interrupted stage-1 run
resumes from its checkpoint (its clock too). Writes ``results.csv`` (every probe point),
``summary.md`` (one table per dataset, named by its folder) and ``probe_vs_minutes.png``.
A combination not wanted can be skipped by writing its ``done.json`` before the run.
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

# every variant starts from the `cpu` preset as it was before changed pixels were weighted (plain
# MSE) and in float32, so that the table's rows stay what they measured; a variant may set the
# weight and the precision again
BASE = ["--changed-pixel-weight", "0", "--precision", "fp32"]
LAOM = ["--idm-difference-scale", "1", "--idm-lookahead", "4", "--aug-shift", "4"]
LAOM += ["--quantizer.kind", "none", "--quantizer.continuous-dim", "1024"]


def changed(weight: float, threshold: float = 0.0, scale: float = 10) -> list[str]:
    """Options of a variant whose changed pixels weigh ``1 + weight`` (above ``threshold``),
    with the IDM's frame differences times ``scale``."""
    opts = ["--idm-difference-scale", f"{scale:g}", "--changed-pixel-weight", f"{weight:g}"]
    return opts + (["--changed-pixel-threshold", f"{threshold:g}"] if threshold else [])


# name -> options added to `lapo lam train --preset cpu` and BASE
VARIANTS: dict[str, list[str]] = {
    # the `cpu` preset before the quantiser fix: restarts on the EMA count, which never fire
    # within a 3,000-step run at decay 0.999
    "vq_old": ["--quantizer.restart-unused-steps", "0", "--quantizer.dead-code-threshold", "0.01"],
    # EMA VQ whose restarts fire for a code unused for 100 steps
    "vq_restarts": ["--idm-difference-scale", "1"],
    # the IDM's frame differences amplified x10 (with vq_restarts)
    "diff10": ["--idm-difference-scale", "10"],
    # a Genie-sized bottleneck: one code of 8 per latent action (3 bits), frame differences x10
    "small_vq": [
        "--idm-difference-scale",
        "10",
        "--quantizer.num-codebooks",
        "1",
        "--quantizer.latents-per-codebook",
        "1",
        "--quantizer.num-entries",
        "8",
    ],
    # the world model also sees the amplified o[t] - o[t-1] (with diff10)
    "wm_diff": ["--idm-difference-scale", "10", "--wm-differences"],
    # a wide continuous latent instead of the quantiser
    "continuous": ["--quantizer.kind", "none", "--quantizer.continuous-dim", "1024"],
    # the IDM sees o[t+k], k in 1..4, the world model still predicts o[t+1]
    "lookahead": ["--idm-lookahead", "4"],
    # each IDM input frame shifted by up to 4 pixels
    "shift": ["--aug-shift", "4"],
    # next-frame prediction in an EMA target encoder's embedding space
    "embedding": ["--wm-target", "embedding"],
    # the world model cannot extrapolate from o[t-1], and the latent keeps its variance
    "no_ignore": ["--wm-mask-past", "1.0", "--latent-var-floor", "0.01"],
    # pixels that change between o[t] and o[t+1] weigh 1 + W in the world model's MSE (diff10)
    "changed10": changed(10),
    "changed30": changed(30),
    "changed100": changed(100),
    # only pixels that moved by more than 0.2 count as changed: sprites, not scrolling or
    # shimmering backgrounds (coinrun's camera, starpilot's stars)
    "sprites10": changed(10, threshold=0.2),
    # a world model built to extrapolate what its context predicts, so the latent is left
    # with what it does not: it sees the amplified o[t] - o[t-1], predicts the change from
    # o[t], and changed pixels weigh 11x (diff10)
    "extrapolate": [*changed(10), "--wm-differences", "--wm-residual"],
    # the same with the IDM's differences x1 (on starpilot the supervised IDM stayed at the
    # majority class with x3 and x10; ceiling_d10_lr3e-4 later showed the cause was lr 1e-3)
    "sprites10_x1": changed(10, threshold=0.2, scale=1),
    # changed10 at the paper's lr: lr 1e-3 holds even the supervised IDM at the majority class
    # on starpilot
    "changed10_lr3e-4": [*changed(10), "--learning-rate", "3e-4"],
    # changed10 under bfloat16 autocast: about 1.4x the steps per minute on one CPU thread
    "changed10_bf16": [*changed(10), "--precision", "bf16"],
    # the same at twice the lr
    "changed10_bf16_lr2e-3": [*changed(10), "--precision", "bf16", "--learning-rate", "2e-3"],
    # changed pixels weigh 31x, under bfloat16 autocast
    "changed30_bf16": [*changed(30), "--precision", "bf16"],
    # 101x
    "changed100_bf16": [*changed(100), "--precision", "bf16"],
    # the cpu preset with the latent at every up-block and the head of the world model: on
    # starpilot the world model's error barely grows with another window's latent (1.03x)
    "changed30_bf16_everywhere": [*changed(30), "--precision", "bf16", "--wm-action-everywhere"],
    # the cpu preset with a twice-as-wide world model (U-Net base 16), which may explain more of
    # what moves without the agent from its context and leave the latent the action
    "changed30_bf16_wm16": [*changed(30), "--precision", "bf16", "--wm-base", "16"],
    # the cpu preset whose IDM sees o[t+k], k drawn from 1..2, while the world model predicts
    # o[t+1] (LAOM's first remedy, on its own without LAOM's other changes)
    "changed30_bf16_lookahead2": [*changed(30), "--precision", "bf16", "--idm-lookahead", "2"],
    # issue 30's remedies, each on the cpu preset (changed30, float32 by BASE):
    # the world model also gets z[t-1] (no gradient), so z[t] need only carry what changed
    "prev_latent": [*changed(30), "--wm-prev-latent"],
    # changed pixels measured against the global shift between o[t] and o[t+1]
    "motion": [*changed(30), "--motion-compensation"],
    # and the IDM's frame differences against each pair's shift too
    "motion_idm": [*changed(30), "--motion-compensation", "--motion-compensate-idm"],
    # the world model also sees o[t] rolled by the camera's shift to o[t+1]
    "camera_shift": [*changed(30), "--wm-camera-shift"],
    # a penalty on z[t]'s cross-correlation with z[t-1] across the batch
    "decorrelation": [*changed(30), "--latent-decorrelation", "1"],
    # the cpu preset (float32) with a hinge on each latent dimension's batch variance: on heist
    # the preset's latent died (its encoder's last ReLU off for every input) within 1,000 steps
    "changed30_varfloor": [*changed(30), "--latent-var-floor", "0.01"],
    # a floor 50x lower, near a healthy latent's own variance per dimension (maze: median
    # 2e-4), so that it acts only where the latent is about to die
    "changed30_varfloor1e-4": [*changed(30), "--latent-var-floor", "0.0001"],
    # the cpu preset (float32) whose world model works at 32x32 on frames folded 2x2 into
    # channels: about a third of the world model's cost per step on a CPU
    "space_to_depth": [*changed(30), "--latent-var-floor", "0.0001", "--wm-space-to-depth"],
    # the same remedy in the architecture: the IDM encoder's last linear layer without its ReLU
    "changed30_linear": [*changed(30), "--idm-linear-features"],
    # the previous latent and the penalty together
    "prev_latent_decorrelation": [*changed(30), "--wm-prev-latent", "--latent-decorrelation", "1"],
    # LAOM's recipe on our IDM: lookahead + wide continuous latent + shifts
    "laom": LAOM,
    # the same with prediction in embedding space
    "laom_embedding": [*LAOM, "--wm-target", "embedding"],
}
# name -> options of benchmarks/supervised_idm.py (beside --lr 1e-3 --batch 32 --differences);
# supervised_kK: ceiling_d10 on only the K labelled windows; NAME+kK: ceiling NAME on them
CEILINGS: dict[str, list[str]] = {
    # the supervised IDM on every true action, frame differences x1
    "ceiling": ["--difference-scale", "1"],
    # the same with the cpu preset's differences x10 (the reference of the ratios)
    "ceiling_d10": ["--difference-scale", "10"],
    # ceiling_d10 at the paper's lr: on starpilot lr 1e-3 holds it at the majority class
    "ceiling_d10_lr3e-4": ["--difference-scale", "10", "--lr", "3e-4"],
    # ceiling_d10 in bfloat16 autocast, beside the variants that train in it
    "ceiling_d10_bf16": ["--difference-scale", "10", "--precision", "bf16"],
    "ceiling_d10_lr3e-4_bf16": ["--difference-scale", "10", "--lr", "3e-4", "--precision", "bf16"],
}
HERE = Path(__file__).resolve().parent


def ceiling_of(variant: str) -> tuple[str, str] | None:
    """``(ceiling, K)`` of a supervised run: one of ``CEILINGS`` (K = 0: every label),
    ``supervised_kK`` (ceiling_d10 on K labels) or ``NAME+kK`` (ceiling NAME on K labels);
    None for a stage-1 variant."""
    if variant in CEILINGS:
        return variant, "0"
    if variant.startswith("supervised_k"):
        return "ceiling_d10", variant[len("supervised_k") :]
    name, _, k = variant.partition("+k")
    return (name, k) if name in CEILINGS and k.isdigit() else None


def is_ceiling(variant: str) -> bool:
    return ceiling_of(variant) is not None


def variant_options(variant: str) -> list[str] | None:
    """``lam train`` options of a named variant; ``labels_kK``: diff10 with K labels;
    ``NAME+labels_kK``: variant NAME with K labels; None if unknown."""
    if variant.startswith("labels_k"):
        return ["--idm-difference-scale", "10", "--labels", variant[len("labels_k") :]]
    name, _, k = variant.partition("+labels_k")
    if name in VARIANTS and k.isdigit():
        return [*VARIANTS[name], "--labels", k]
    return VARIANTS.get(variant)


def name_of(data: Path) -> str:
    """A dataset's name in the outputs: its folder's name (two datasets may share a game)."""
    return data.resolve().name


def run_variant(data: Path, out: Path, options: list[str], args: argparse.Namespace) -> None:
    """Train one stage-1 variant for the time budget, then probe it the paper's way."""
    cmd = [
        sys.executable,
        "-m",
        "lapo",
        "lam",
        "train",
        "--data",
        str(data),
        "--out",
        str(out),
        "--preset",
        "cpu",
        "--threads",
        str(args.threads),
        "--max-minutes",
        str(args.minutes),
        "--steps",
        "1000000",
        "--eval-every",
        str(args.probe_every),
        "--probe-every",
        str(args.probe_every),
        "--seed",
        str(args.seed),
        "--quiet",
        *BASE,
        *options,
    ]
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out.parent / f"{out.name}.log", "a") as log:
        subprocess.run(cmd, check=True, stdout=log, stderr=subprocess.STDOUT)
    if args.paper_probe:
        probe = subprocess.run(
            [sys.executable, "-m", "lapo", "lam", "probe", "--run", str(out), "--data", str(data)]
            + ["--protocol", "paper", "--threads", str(args.threads)],
            check=True,
            capture_output=True,
            text=True,
        )
        (out / "probe_paper.json").write_text(probe.stdout)


def run_ceiling(data: Path, out: Path, args: argparse.Namespace, variant: str) -> None:
    """The supervised IDM on the true actions for the same time; its curve as JSON lines."""
    out.mkdir(parents=True, exist_ok=True)
    ceiling, labels = ceiling_of(variant)
    cmd = [sys.executable, str(HERE / "supervised_idm.py"), "--data", str(data)]
    cmd += ["--minutes", str(args.minutes), "--threads", str(args.threads), "--differences"]
    cmd += ["--lr", "1e-3", "--batch", "32", "--eval-every", str(args.ceiling_eval_every)]
    cmd += ["--seed", str(args.seed), "--labels", labels]
    cmd += CEILINGS[ceiling]  # later options win
    res = subprocess.run(cmd, check=True, capture_output=True, text=True)
    lines = [ln for ln in res.stdout.splitlines() if ln.startswith('{"seconds"')]
    final = json.loads(res.stdout[res.stdout.index("{\n") :])["final"]
    (out / "curve.jsonl").write_text("\n".join(lines + [json.dumps(final)]) + "\n")


def task(data: Path, variant: str, args: argparse.Namespace) -> str:
    out = args.out / name_of(data) / variant
    if (out / "done.json").exists():
        return f"{out}: done before"
    t0 = time.time()
    if is_ceiling(variant):
        run_ceiling(data, out, args, variant)
    else:
        run_variant(data, out, variant_options(variant), args)
    (out / "done.json").write_text(json.dumps({"wall_seconds": round(time.time() - t0, 1)}))
    return f"{out}: {time.time() - t0:.0f} s"


def curves(args: argparse.Namespace, games: list[str], variants: list[str]) -> list[dict]:
    """Every probe point of every finished or running run: game, variant, minutes, step, probe."""
    rows = []
    for game in games:
        for variant in variants:
            d = args.out / game / variant
            if is_ceiling(variant) and (d / "curve.jsonl").exists():
                for ln in (d / "curve.jsonl").read_text().splitlines():
                    r = json.loads(ln)
                    rows.append(
                        dict(game=game, variant=variant, minutes=r["seconds"] / 60, step=r["step"])
                        | dict(probe=r["accuracy"], balanced=r["balanced_accuracy"])
                    )
            elif (d / "metrics.csv").exists():
                for r in csv.DictReader((d / "metrics.csv").read_text().splitlines()):
                    if r.get("probe_acc") and r.get("train_seconds") not in ("", None):
                        rows.append(
                            dict(game=game, variant=variant, step=int(r["step"]))
                            | dict(minutes=float(r["train_seconds"]) / 60)
                            | dict(probe=float(r["probe_acc"]))
                            | dict(balanced=float(r["probe_balanced_acc"] or "nan"))
                        )
    return rows


def at_time(rows: list[dict], minutes: float) -> dict | None:
    """The last point at or before ``minutes`` (within 3%)."""
    before = [r for r in rows if r["minutes"] <= minutes * 1.03]
    return before[-1] if before else None


def on_disk(out: Path) -> tuple[list[str], list[str]]:
    """Every game folder under ``out`` and every variant run in any of them: the named variants
    in their table order, then stage 1 with labels, then the supervised runs."""
    games = sorted(d.name for d in out.iterdir() if d.is_dir())
    found = {v.name for g in games for v in (out / g).iterdir() if v.is_dir()}
    named = [v for v in VARIANTS if v in found]
    labels = sorted(v for v in found if v.startswith("labels_k") or "+labels_k" in v)
    return games, named + labels + sorted(v for v in found if is_ceiling(v))


def summarise(args: argparse.Namespace) -> None:
    """``results.csv``, ``summary.md`` and the figure over every run under ``--out``, whichever
    invocation trained it."""
    games, variants = on_disk(args.out)
    rows = curves(args, games, variants)
    with open(args.out / "results.csv", "w", newline="") as f:
        w = csv.DictWriter(f, ["game", "variant", "minutes", "step", "probe", "balanced"])
        w.writeheader()
        w.writerows(rows)
    lines = [
        # the runs under --out may come from several invocations: say only what each run had
        f"# Stage-1 ablation: probe at {args.minutes:g} minutes of training "
        f"({args.threads} thread{'s' if args.threads > 1 else ''} per run)",
        "",
        "Probe: MLP on the IDM latents of 4,096 train windows, 2,048 test windows (ratio: to the "
        "supervised ceiling at the same time); paper: the reference's protocol (up to 65,536 "
        "labelled windows, 3 epochs).",
    ]
    for game in games:
        # the ratio is to the strongest ceiling on this game: the one whose last probe is highest
        ceilings = {
            v: [r for r in rows if r["game"] == game and r["variant"] == v]
            for v in variants
            if v in CEILINGS
        }
        ceilings = {v: pts for v, pts in ceilings.items() if pts}
        ref = max(ceilings, key=lambda v: ceilings[v][-1]["probe"], default="")
        ceil = ceilings.get(ref, [])
        lines += [
            "",
            f"## {game}",
            "",
            f"Ratio to the strongest ceiling here: {ref or 'none'}.",
            "",
        ]
        lines += [
            "| variant | untrained | probe / balanced | minutes | steps | ceiling then "
            "| ratio | paper probe |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for variant in variants:
            pts = [r for r in rows if r["game"] == game and r["variant"] == variant]
            if not pts or is_ceiling(variant):
                continue
            last = pts[-1]
            c = at_time(ceil, last["minutes"])
            paper = args.out / game / variant / "probe_paper.json"
            pp = json.loads(paper.read_text())["accuracy"] if paper.exists() else float("nan")
            ratio = last["probe"] / c["probe"] if c else float("nan")
            lines.append(
                f"| {variant} | {pts[0]['probe']:.3f} | {last['probe']:.3f} / "
                f"{last['balanced']:.3f} | {last['minutes']:.1f} | {last['step']} | "
                f"{c['probe'] if c else float('nan'):.3f} | {ratio:.2f} | {pp:.3f} |"
            )
        for variant in [v for v in variants if is_ceiling(v)]:
            pts = [r for r in rows if r["game"] == game and r["variant"] == variant]
            if pts:
                name = "ceiling (supervised, all labels)" if variant == "ceiling" else variant
                lines.append(
                    f"| {name} | | {pts[-1]['probe']:.3f} / {pts[-1]['balanced']:.3f}"
                    f" | {pts[-1]['minutes']:.1f} | {pts[-1]['step']} | | | |"
                )
    (args.out / "summary.md").write_text("\n".join(lines) + "\n")
    plot(rows, games, variants, args.out / "probe_vs_minutes.png")


def plot(rows: list[dict], games: list[str], variants: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(games), figsize=(5 * len(games), 4), squeeze=False)
    for ax, game in zip(axes[0], games, strict=True):
        for variant in variants:
            pts = [r for r in rows if r["game"] == game and r["variant"] == variant]
            if pts:
                style = dict(color="black", lw=2) if variant == "ceiling" else {}
                style = dict(color="grey", lw=2) if is_ceiling(variant) and not style else style
                ax.plot([r["minutes"] for r in pts], [r["probe"] for r in pts], ".-", **style)
                ax.lines[-1].set_label(variant)
        ax.axhline(1 / 15, color="grey", ls=":", label="chance")
        ax.set(title=game, xlabel="training minutes (one thread)", ylabel="probe accuracy")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", required=True, help="comma-separated dataset folders (with actions)")
    ap.add_argument(
        "--variants",
        default="vq_restarts,laom,ceiling",
        help=f"comma-separated, from: {', '.join(VARIANTS)}, labels_kK (diff10 with K labels), "
        "NAME+labels_kK (variant NAME with K labels); the supervised IDM: "
        f"{', '.join(CEILINGS)}, supervised_kK (ceiling_d10 on K labels), NAME+kK",
    )
    ap.add_argument("--minutes", type=float, default=15.0, help="training minutes per run")
    ap.add_argument("--jobs", type=int, default=2, help="runs at once")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per run")
    ap.add_argument("--probe-every", type=int, default=500, help="steps between probes")
    ap.add_argument(
        "--paper-probe", action="store_true", help="also probe each variant the paper's way"
    )
    ap.add_argument("--ceiling-eval-every", type=float, default=60.0, help="seconds")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=Path("runs/ablation"))
    ap.add_argument("--summary-only", action="store_true", help="only rewrite the summary")
    args = ap.parse_args()
    datas = [Path(d) for d in args.data.split(",")]
    variants = args.variants.split(",")
    unknown = [v for v in variants if not is_ceiling(v) and variant_options(v) is None]
    if unknown:
        sys.exit(f"unknown variant(s) {', '.join(unknown)}: choose from {', '.join(VARIANTS)}")
    for d in datas:
        if not (d / "manifest.json").exists():
            sys.exit(f"{d} is not a lapo dataset (no manifest.json): run lapo collect first")
    args.out.mkdir(parents=True, exist_ok=True)
    if not args.summary_only:
        # variant-major order: every game gets the first variants before any gets the last
        todo = [(d, v) for v in variants for d in datas]
        with ThreadPoolExecutor(args.jobs) as pool:
            for msg in pool.map(lambda t: task(t[0], t[1], args), todo):
                print(msg, flush=True)
                summarise(args)
    summarise(args)
    print((args.out / "summary.md").read_text())


if __name__ == "__main__":
    main()
