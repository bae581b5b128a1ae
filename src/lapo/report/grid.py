"""``lapo reproduce``'s summaries: results.csv, summary.md and the two figures of the grid."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np

from lapo.config import ReproduceConfig
from lapo.report.charts import pyplot


def collect_results(cfg: ReproduceConfig, out: Path) -> list[dict]:
    """One row per finished evaluation."""
    rows = []
    for game in cfg.games:
        rand = out / game / "eval_random.json"
        random_ret = json.loads(rand.read_text())["mean_return"] if rand.exists() else math.nan
        for seed in cfg.seed_range:
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
                        "demonstrator_normalized_return": e.get(
                            "demonstrator_normalized_return", math.nan
                        ),
                        "demonstrator_return": e.get("demonstrator_return", math.nan),
                        "measured_random_return": random_ret,
                        "episodes": e["episodes"],
                    }
                )
    return rows


def summarise(cfg: ReproduceConfig, out: Path) -> dict:
    """results.csv, summary.md and the two figures from whatever has finished."""
    rows = collect_results(cfg, out)
    if not rows:
        return {"evaluations": 0}
    with open(out / "results.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    methods = sorted({r["method"] for r in rows})
    lines = [
        "Mean ± std over seeds. First number: normalised by the published random/expert "
        "constants; in brackets: between random and the data's demonstrator.",
        "",
        "| method | " + " | ".join(cfg.games) + " | mean over games |",
        "|---|" + "---|" * (len(cfg.games) + 1),
    ]
    for m in methods:
        cells, means = [], []
        for g in cfg.games:
            v = [r for r in rows if r["method"] == m and r["game"] == g]
            if not v:
                cells.append("")
                continue
            a = np.array([r["normalized_return"] for r in v])
            d = np.array([r["demonstrator_normalized_return"] for r in v])
            cells.append(f"{a.mean():.2f} ± {a.std():.2f} ({d.mean():.2f}; n={len(v)})")
            means.append(a.mean())
        lines.append(f"| {m} | " + " | ".join(cells) + f" | {np.mean(means):.2f} |")
    lines += labels_margins(cfg, rows) + stage1_probes(cfg, out)
    (out / "summary.md").write_text("\n".join(lines) + "\n")
    figures = {}
    if any(r["method"].startswith("lapo_offline_k") for r in rows):
        figures["offline"] = str(plot_offline(cfg, rows, out / "offline_vs_labels.png"))
    curves = online_curves(cfg, out)
    if curves:
        figures["online"] = str(plot_online(curves, out / "online_curves.png"))
    return {"evaluations": len(rows), "summary": str(out / "summary.md"), **figures}


def labels_margins(cfg: ReproduceConfig, rows: list[dict]) -> list[str]:
    """Markdown lines: LAPO with the K labels in stage 1 (each decoder start) against baselines
    (a) and (b) on the same K windows, per game: the mean over seeds of the paired difference
    in return, and that in standard errors (see :func:`_margin`)."""
    ret = {(r["game"], r["seed"], r["method"]): r for r in rows}
    table: dict[str, list[str]] = {}
    for k in sorted(cfg.labels):
        for ours in (f"lapo_labels_k{k}", f"lapo_labels_head_k{k}"):
            for base in (f"bc_k{k}", f"idm_bc_k{k}"):
                cells = []
                for g in cfg.games:
                    pairs = [(ret[g, s, ours], ret[g, s, base]) for s in cfg.seed_range
                             if (g, s, ours) in ret and (g, s, base) in ret]  # fmt: skip
                    cells.append(_margin(pairs))
                table[f"{ours} - {base}"] = cells
    caption = (
        "Labels in stage 1 against the baselines on the same K windows: mean over seeds of "
        "the paired difference in raw return, and the difference in standard errors: over "
        "seeds (training noise counts; rough with few seeds) and of the evaluations' episodes "
        "alone."
    )
    return _table(caption, "difference", cfg.games, table)


def _table(caption: str, first: str, games: list[str], rows: dict[str, list[str]]) -> list[str]:
    """Markdown lines: ``caption``, then a table with a column per game and a row per entry
    of ``rows`` (name -> cells) that has any cell; nothing if none has."""
    lines = [f"| {name} | " + " | ".join(c) + " |" for name, c in rows.items() if any(c)]
    if not lines:
        return []
    header = [f"| {first} | " + " | ".join(games) + " |", "|---|" + "---|" * len(games)]
    return ["", caption, "", *header, *lines]


def _margin(pairs: list[tuple[dict, dict]]) -> str:
    """The mean paired difference in return and it in standard errors: over seeds (training
    noise counts, but with 2 or 3 seeds that estimate is itself rough) and of the episodes
    (the evaluations' noise alone: the mean's s.e. if the seeds' policies were alike)."""
    if not pairs:
        return ""
    d = np.array([a["mean_return"] - b["mean_return"] for a, b in pairs])
    episodes = math.sqrt(sum(a["stderr_return"] ** 2 + b["stderr_return"] ** 2 for a, b in pairs))
    parts = []
    if len(d) >= 2 and d.std(ddof=1) > 0:
        parts.append(f"{d.mean() / (d.std(ddof=1) / math.sqrt(len(d))):+.1f} s.e. over seeds")
    if episodes > 0:
        parts.append(f"{d.mean() / (episodes / len(d)):+.1f} of episodes")
    return f"{d.mean():+.2f} ({', '.join(parts)}; n={len(d)})" if parts else ""


def stage1_probes(cfg: ReproduceConfig, out: Path) -> list[str]:
    """Markdown lines: the latent probe (accuracy / balanced accuracy on held-out windows) of
    stage 1 without and with the K labels, beside the test accuracy of baseline (b)'s
    supervised IDM trained on the same K labels; mean over seeds."""
    runs = [("lam", "stage 1, video only", _probe_of_lam)]
    for k in sorted(cfg.labels):
        runs.append((f"lam_labels_k{k}", f"stage 1 with K = {k} labels", _probe_of_lam))
        runs.append((f"lam_labels_k{k}", f"stage 1's action head on its K = {k}", _head_of_lam))
        runs.append((f"idm_bc_k{k}", f"(b)'s supervised IDM on K = {k}", _probe_of_idm))
    table: dict[str, list[str]] = {}
    for folder, label, read in runs:
        cells = []
        for g in cfg.games:
            v = [read(out / g / f"seed{s}" / folder) for s in cfg.seed_range]
            v = np.array([x for x in v if x is not None])
            cells.append(
                f"{v[:, 0].mean():.3f} / {v[:, 1].mean():.3f} (n={len(v)})" if len(v) else ""
            )
        table[label] = cells
    caption = (
        "Action probe on held-out windows, accuracy / balanced accuracy, mean over seeds "
        "(stage 1: the probe of its last evaluation, fit on the run's probe windows, more "
        "than K; its action head: trained on the K labels only, like (b)'s IDM, whose test "
        "accuracy is given)."
    )
    return _table(caption, "latent", cfg.games, table)


def _probe_of_lam(run: Path, column: str = "probe") -> tuple[float, float] | None:
    """The last ``{column}_acc, {column}_balanced_acc`` of a finished stage-1 run's metrics."""
    if not run.with_name(run.name + ".done.json").exists():  # finished runs only
        return None
    with open(run / "metrics.csv") as fh:
        probed = [r for r in csv.DictReader(fh) if r.get(f"{column}_acc")]
    if not probed:
        return None
    return float(probed[-1][f"{column}_acc"]), float(probed[-1][f"{column}_balanced_acc"])


def _head_of_lam(run: Path) -> tuple[float, float] | None:
    return _probe_of_lam(run, "head")  # written by stage 1 with labels since the head's metric


def _probe_of_idm(run: Path) -> tuple[float, float] | None:
    if not run.with_name(run.name + ".done.json").exists():
        return None
    r = json.loads((run / "supervised_idm.json").read_text())
    return r["idm_test_accuracy"], r["idm_test_balanced_accuracy"]


def plot_offline(cfg: ReproduceConfig, rows: list[dict], path: Path) -> Path:
    """Normalised return vs label count, mean over games and seeds, LAPO and baselines."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for prefix, label, col in (
        ("lapo_offline_k", "LAPO, offline decoding", "tab:blue"),
        ("lapo_labels_k", "LAPO, the K labels also in stage 1", "tab:purple"),
        ("lapo_labels_head_k", "the same, decoder from stage 1's head", "tab:pink"),
        ("idm_bc_k", "(b) supervised IDM labels, then BC", "tab:green"),
        ("bc_k", "(a) BC on the labels", "tab:orange"),
    ):
        ks, ms = [], []
        for k in sorted(cfg.labels):
            v = [
                np.mean([r["normalized_return"] for r in rows
                         if r["method"] == f"{prefix}{k}" and r["game"] == g])
                for g in cfg.games
                if any(r["method"] == f"{prefix}{k}" and r["game"] == g for r in rows)
            ]  # fmt: skip
            if v:
                ks.append(k)
                ms.append(np.mean(v))
        if ks:
            ax.plot(ks, ms, marker="o", color=col, label=label)
    paper = {16: 0.05, 32: 0.16, 64: 0.23, 128: 0.33, 256: 0.50, 512: 0.55, 1024: 0.57}
    ax.plot(list(paper), list(paper.values()), "k--", lw=1, label="paper (mean of 16 games)")
    ax.set_xscale("log", base=2)
    ax.set(
        xlabel="labelled transitions K",
        ylabel="normalised return (0 random, 1 expert)",
        title=f"Offline decoding, mean over {', '.join(cfg.games)}",
    )
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def online_curves(cfg: ReproduceConfig, out: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """method -> (frames, normalised return averaged over seeds, then games); NaN where no
    episode had ended yet."""
    import warnings

    from lapo.envs import normalized_return

    result = {}
    for name in ("lapo_online", "ppo_scratch"):
        per_game = []
        for game in cfg.games:
            curves = []
            for seed in cfg.seed_range:
                p = out / game / f"seed{seed}" / name / "metrics.csv"
                if not p.exists():
                    continue
                with open(p) as fh:
                    rs = list(csv.DictReader(fh))
                x = np.array([float(r["frames"]) for r in rs])
                y = np.array([normalized_return(game, float(r["mean_return"])) for r in rs])
                curves.append((x, y))
            if curves:
                n = min(len(c[0]) for c in curves)
                with warnings.catch_warnings():  # all-NaN columns stay NaN
                    warnings.simplefilter("ignore", RuntimeWarning)
                    y = np.nanmean([c[1][:n] for c in curves], 0)
                per_game.append((curves[0][0][:n], y))
        if per_game:
            n = min(len(c[0]) for c in per_game)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                y = np.nanmean([c[1][:n] for c in per_game], 0)
            result[name] = (per_game[0][0][:n], y)
    return result


def plot_online(curves: dict, path: Path) -> Path:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4))
    labels = {"lapo_online": "LAPO online decoding", "ppo_scratch": "PPO from scratch"}
    for name, (x, y) in curves.items():
        ax.plot(x / 1e6, y, label=labels[name])
    ax.axhline(0, color="grey", ls=":", lw=0.8)
    ax.axhline(1, color="grey", ls="--", lw=0.8, label="expert (published)")
    ax.set(
        xlabel="environment frames (millions)",
        ylabel="normalised return (0 random, 1 expert)",
        title="Online decoding vs PPO, mean over games",
    )
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
