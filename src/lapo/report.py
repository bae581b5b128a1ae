"""Charts and a single self-contained HTML report (every image embedded as a data URI)."""

from __future__ import annotations

import base64
import csv
import html
import io
import os
import platform
from pathlib import Path
from typing import Any

import numpy as np

from lapo.envs import ACTION_NAMES


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def data_uri(path: Path) -> str:
    """``data:`` URI of an image file (png or gif)."""
    mime = "image/gif" if str(path).endswith(".gif") else "image/png"
    return f"data:{mime};base64," + base64.b64encode(Path(path).read_bytes()).decode()


def fig_uri(fig: Any) -> str:
    """``data:`` URI of a matplotlib figure, closed afterwards."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    _plt().close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def _series(rows: list[dict[str, str]], x: str, y: str) -> tuple[np.ndarray, np.ndarray]:
    pts = [(float(r[x]), float(r[y])) for r in rows if r.get(y) not in (None, "")]
    return (np.array([p[0] for p in pts]), np.array([p[1] for p in pts]))


def stage1_curves(metrics: Path, game: str) -> Any:
    """Stage 1: test world-model MSE (own and shuffled latents) and probe accuracy vs step."""
    plt = _plt()
    rows = read_csv(metrics)
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.4))
    for col, label in (
        ("test_wm_loss", "test MSE, own latent"),
        ("test_wm_loss_shuffled", "test MSE, another window's latent"),
    ):
        x, y = _series(rows, "step", col)
        a.plot(x, y, marker="o", ms=3, label=label)
    a.set_yscale("log")
    a.set(title=f"{game}: stage-1 world model", xlabel="training step", ylabel="next-frame MSE")
    a.legend(fontsize=8)
    x, y = _series(rows, "step", "probe_acc")
    b.plot(x, y, marker="o", ms=3, color="tab:green", label="probe accuracy")
    b.axhline(1 / 15, color="grey", ls=":", label="chance (1/15)")
    b.set(title=f"{game}: latent -> true action probe", xlabel="training step", ylabel="accuracy")
    b.legend(fontsize=8)
    fig.tight_layout()
    return fig


def bc_curves(runs: dict[str, Path], game: str) -> Any:
    """Test loss vs step of each BC run (stage 2 in MSE; baselines in cross-entropy)."""
    plt = _plt()
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
    plt = _plt()
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
    plt = _plt()
    names = list(results)
    means = [results[n]["mean_return"] for n in names]
    errs = [results[n].get("stderr_return") or 0.0 for n in names]
    fig, ax = plt.subplots(figsize=(7, 3.4))
    colors = ["grey", "black", "tab:blue", "tab:orange", "tab:green", "tab:red"]
    ax.bar(names, means, yerr=errs, capsize=4, color=colors[: len(names)])
    ax.set(title=f"{game}: episode return", ylabel="mean return (± s.e.)")
    ax.tick_params(axis="x", labelsize=8)
    fig.tight_layout()
    return fig


def machine() -> str:
    """One line describing where this ran."""
    import torch

    cpu = platform.processor() or platform.machine()
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return (
        f"{platform.system()} {platform.machine()} ({cpu}), {os.cpu_count()} CPU cores, {gpu}; "
        f"Python {platform.python_version()}, torch {torch.__version__}"
    )


def table(rows: list[list[Any]], header: list[str]) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>" for r in rows
    )
    return f"<table><tr>{head}</tr>{body}</table>"


CSS = """
body { font-family: system-ui, sans-serif; max-width: 1100px; margin: 2em auto; color: #222; }
h1 { font-size: 1.6em; } h2 { border-bottom: 1px solid #ccc; padding-bottom: .2em; }
table { border-collapse: collapse; margin: .5em 0 1em; }
td, th { border: 1px solid #ccc; padding: .25em .6em; text-align: left; font-size: .92em; }
th { background: #f3f3f3; } img { max-width: 100%; } .note { color: #555; font-size: .92em; }
pre { background: #f7f7f7; padding: .6em; overflow-x: auto; font-size: .85em; }
"""


def write_html(path: Path, title: str, sections: list[tuple[str, str]]) -> None:
    """Write ``sections`` (heading, HTML body) as one page; atomically."""
    from lapo.checkpoint import atomic_write_bytes

    parts = [
        f"<h2 id='{h.lower().replace(' ', '-')}'>{html.escape(h)}</h2>\n{b}" for h, b in sections
    ]
    doc = (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"<style>{CSS}</style></head><body><h1>{html.escape(title)}</h1>\n"
        + "\n".join(parts)
        + "</body></html>\n"
    )
    atomic_write_bytes(Path(path), doc.encode())


def img(uri: str, alt: str) -> str:
    return f"<img src='{uri}' alt='{html.escape(alt)}'>"
