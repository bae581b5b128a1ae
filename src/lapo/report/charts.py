"""Charts: learning curves, confusion matrix and returns, as matplotlib figures or data URIs."""

from __future__ import annotations

import base64
import csv
import io
import textwrap
from pathlib import Path
from typing import Any

import numpy as np

from lapo.envs import ACTION_NAMES


def pyplot():  # noqa: ANN201 - matplotlib.pyplot, imported lazily
    """matplotlib.pyplot on the Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def fig_uri(fig: Any) -> str:
    """``data:`` URI of a matplotlib figure, closed afterwards."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    pyplot().close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def _series(rows: list[dict[str, str]], x: str, y: str) -> tuple[np.ndarray, np.ndarray]:
    pts = [(float(r[x]), float(r[y])) for r in rows if r.get(y) not in (None, "")]
    return (np.array([p[0] for p in pts]), np.array([p[1] for p in pts]))


def stage1_curves(metrics: Path, game: str) -> Any:
    """Stage 1: test world-model MSE (own and shuffled latents) and probe accuracy vs step."""
    plt = pyplot()
    rows = read_csv(metrics)
    probed = len(_series(rows, "step", "probe_acc")[0]) > 0
    fig, axes = plt.subplots(1, 1 + probed, figsize=(5 + 5 * probed, 3.4), squeeze=False)
    a = axes[0, 0]
    for col, label in (
        ("test_wm_loss", "test MSE, own latent"),
        ("test_wm_loss_shuffled", "test MSE, another window's latent"),
    ):
        x, y = _series(rows, "step", col)
        a.plot(x, y, marker="o", ms=3, label=label)
    a.set_yscale("log")
    a.set(title=f"{game}: stage-1 world model", xlabel="training step", ylabel="next-frame MSE")
    a.legend(fontsize=8)
    if not probed:  # a run without probes during training (the demo's: see its probe)
        fig.tight_layout()
        return fig
    b = axes[0, 1]
    x, y = _series(rows, "step", "probe_acc")
    b.plot(x, y, marker="o", ms=3, color="tab:green", label="probe accuracy")
    b.axhline(1 / 15, color="grey", ls=":", label="chance (1/15)")
    b.set(title=f"{game}: latent -> true action probe", xlabel="training step", ylabel="accuracy")
    b.legend(fontsize=8)
    fig.tight_layout()
    return fig


def bc_curves(runs: dict[str, Path], game: str) -> Any:
    """Test loss vs step of each BC run (stage 2 in MSE; baselines in cross-entropy)."""
    plt = pyplot()
    fig, axes = plt.subplots(1, len(runs), figsize=(5 * len(runs), 3.4), squeeze=False)
    for ax, (label, metrics) in zip(axes[0], runs.items(), strict=True):
        x, y = _series(read_csv(metrics), "step", "test_loss")
        ax.plot(x, y, marker="o", ms=3)
        unit = "MSE to the IDM latent" if "stage 2" in label else "cross-entropy (nats)"
        ax.set(title=f"{game}: {label}", xlabel="training step", ylabel=f"test loss, {unit}")
    fig.tight_layout()
    return fig


def confusion_chart(confusion: list[list[int]], game: str, title: str) -> Any:
    """Row-normalised confusion matrix with the actions named."""
    plt = pyplot()
    conf = np.asarray(confusion, np.float64)
    frac = conf / np.maximum(conf.sum(1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(6.4, 5.6))
    im = ax.imshow(frac, cmap="viridis", vmin=0, vmax=1)
    ax.set_xticks(range(len(ACTION_NAMES)), ACTION_NAMES, rotation=90, fontsize=7)
    ax.set_yticks(range(len(ACTION_NAMES)), ACTION_NAMES, fontsize=7)
    ax.set(xlabel="predicted action", ylabel="true action", title=f"{game}: {title}")
    fig.colorbar(im, ax=ax, label="fraction of the true action's windows")
    fig.tight_layout()
    return fig


def returns_chart(results: dict[str, dict], game: str) -> Any:
    """Mean episode return ± standard error of each evaluated policy."""
    plt = pyplot()
    names = list(results)
    means = [results[n]["mean_return"] for n in names]
    errs = [results[n].get("stderr_return") or 0.0 for n in names]
    fig, ax = plt.subplots(figsize=(max(7.0, 1.4 * len(names)), 3.6))
    colors = ["grey", "black", "tab:blue", "tab:orange", "tab:green", "tab:red"]
    labels = [textwrap.fill(n, 16) for n in names]  # long policy names on two lines
    ax.bar(labels, means, yerr=errs, capsize=4, color=colors[: len(names)])
    ax.set(title=f"{game}: episode return", ylabel="mean return (± s.e.)")
    ax.tick_params(axis="x", labelsize=8)
    fig.tight_layout()
    return fig
