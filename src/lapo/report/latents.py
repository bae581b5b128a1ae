"""Pictures of what a stage-1 model learned: latent actions by true action or by cluster,
what each cluster of latents does, world-model predictions, and an open-loop rollout.

``plot_lam(run, data, out)`` writes:

- ``latent_umap.png`` (or ``latent_pca.png`` without the optional ``umap-learn``): a 2-D
  embedding of IDM latents of test windows, coloured by the true action (the paper's figure),
  or, on data without actions, by k-means cluster of the quantised latents;
- ``clusters.png``: one row per k-means cluster of the latents (:mod:`lapo.evaluation.clusters`):
  the mean frame difference ``o[t+1] - o[t]`` over its windows and a few example transitions
  ``o[t], o[t+1]``; with actions, also the true action its windows took most often;
- ``predictions.png``: rows of ``o[t]``, ``o[t+1]``, the world model's prediction of
  ``o[t+1]`` and the absolute error;
- ``rollout.gif``: the world model rolled out open-loop from two real frames, driven only by
  the IDM's latents of a real test episode, beside the real frames.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from lapo.data.dataset import WindowDataset
from lapo.data.format import DatasetError, more_data_hint, open_dataset
from lapo.envs import ACTION_NAMES
from lapo.errors import UserError
from lapo.evaluation.clusters import KMeans, exact_codes, kmeans
from lapo.models.idm import idm_latents


def _to_uint8(x: torch.Tensor) -> np.ndarray:
    """float ``(..., 3, H, W)`` in [-0.5, 0.5] -> uint8 ``(..., H, W, 3)``."""
    img = ((x.clamp(-0.5, 0.5) + 0.5) * 255).round().byte()
    return img.movedim(-3, -1).numpy()


EXACT_NEIGHBOURS = 4_096
"""Up to this many points the UMAP's neighbours are found exactly (N x N distances and their
order: about 270 MB at 4,096); above it UMAP's own approximate search."""


def exact_neighbours(z: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, None]:
    """``(N, A)`` -> each point's ``k`` nearest points (itself first) ``(N, k)`` and their
    Euclidean distances ``(N, k)``, as UMAP's ``precomputed_knn`` takes them."""
    z = z.astype(np.float64)
    sq = (z * z).sum(1)
    d2 = np.maximum(sq[:, None] + sq[None] - 2 * z @ z.T, 0.0)  # (N, N)
    np.fill_diagonal(d2, -1.0)  # itself first, whatever the rounding
    idx = np.argsort(d2, axis=1, kind="stable")[:, :k]  # (N, k)
    dist = np.sqrt(np.maximum(np.take_along_axis(d2, idx, 1), 0.0))
    return idx, dist.astype(np.float32), None


def embed_2d(z: np.ndarray, seed: int = 0) -> tuple[np.ndarray, str]:
    """``(N, A)`` -> ``((N, 2), method)``: UMAP when installed, else PCA."""
    try:
        import umap  # optional: pip install "lapo[umap]"
    except ImportError:
        zc = z - z.mean(0)
        _, _, vt = np.linalg.svd(zc, full_matrices=False)
        return zc @ vt[:2].T, "pca"
    import warnings

    # 200 optimisation epochs, UMAP's own choice above 10,000 points (500 below): on the demo's
    # 1,500 points 7 s instead of 12 on a CPU core, beside about 30 s of compiling its kernels.
    # The exact neighbours, given, spare it compiling its approximate search (pynndescent):
    # 4.7 s instead of 9.8 s for 1,500 points on a Xeon core
    k = min(30, len(z) - 1)
    reducer = umap.UMAP(
        n_components=2,
        random_state=seed,
        n_neighbors=k,
        min_dist=0.1,
        n_epochs=200,
        precomputed_knn=exact_neighbours(z, k) if len(z) <= EXACT_NEIGHBOURS else (None,) * 3,
    )
    with warnings.catch_warnings():  # "n_jobs overridden by random_state": seeded on purpose
        warnings.simplefilter("ignore", UserWarning)
        return reducer.fit_transform(z), "umap"


def test_or_train(data: Path, k: int = 3) -> WindowDataset:
    """``data``'s test windows of ``k`` frames, or its train windows where the test split has
    none."""
    try:
        return WindowDataset(data, "test", k=k)
    except DatasetError:
        return WindowDataset(data, "train", k=k)


def latent_sample(
    model, data: Path, windows: int, seed: int = 0
) -> tuple[dict, torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """``windows`` windows of ``data`` (test split if it has any) drawn with ``seed``, and the
    stage-1 ``model``'s latents of them: ``(batch, z (N, A), z_q (N, A), codes)``, ``z_q`` and
    ``codes`` (``(N, slots)`` or None) from :func:`exact_codes`. ``batch`` is the loader's
    (``obs`` uint8 ``(N, 3, 64, 64, 3)``, ``actions`` ``(N, 3)`` if the data has them)."""
    ds = test_or_train(data)
    rng = np.random.default_rng(seed)
    batch = ds.read(np.sort(rng.choice(ds.starts, min(windows, len(ds)), replace=False)))
    obs = batch["obs"]
    chunks = (obs[i : i + 256] for i in range(0, len(obs), 256))
    z, z_q = idm_latents(model.idm, chunks, torch.device("cpu"))
    return batch, z, *exact_codes(model.idm.quantizer, z_q)


def plot_latents(
    z: np.ndarray,
    labels: np.ndarray,
    path: Path,
    title: str,
    seed: int = 0,
    names: list[str] | tuple[str, ...] = ACTION_NAMES,
    legend: str = "true action",
) -> str:
    """Scatter the 2-D embedding of latents ``z`` ``(N, A)`` coloured by ``labels`` ``(N,)``
    (true actions by default; ``names[label]`` in the legend titled ``legend``)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    xy, method = embed_2d(z, seed)
    fig, ax = plt.subplots(figsize=(8, 7), dpi=110)
    cmap = plt.get_cmap("tab20")
    for a in np.unique(labels):
        m = labels == a
        ax.scatter(xy[m, 0], xy[m, 1], s=4, color=cmap(int(a) % 20), label=names[a])
    ax.set_title(f"{title}: IDM latent actions ({method.upper()}), coloured by {legend}")
    ax.set_xlabel(f"{method.upper()} 1")
    ax.set_ylabel(f"{method.upper()} 2")
    ax.legend(markerscale=4, fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5), title=legend)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return method


def plot_predictions(
    obs_t: np.ndarray, obs_next: np.ndarray, pred: np.ndarray, path: Path, title: str
) -> None:
    """Rows of ``o[t]``, ``o[t+1]``, prediction, |error|; each uint8 ``(N, 64, 64, 3)``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(obs_t)
    fig, axes = plt.subplots(n, 4, figsize=(8, 2 * n), dpi=100, squeeze=False)
    # per-pixel error magnitude, mean over RGB, on a fixed 0-255 scale
    err = np.abs(obs_next.astype(np.float32) - pred.astype(np.float32)).mean(-1)
    for i in range(n):
        for j, (img, name) in enumerate(
            [
                (obs_t[i], "o[t]"),
                (obs_next[i], "o[t+1]"),
                (pred[i], "predicted o[t+1]"),
                (err[i], "|error| (mean over RGB)"),
            ]
        ):
            if j == 3:
                axes[i, j].imshow(img, cmap="magma", vmin=0, vmax=255)
            else:
                axes[i, j].imshow(img)
            axes[i, j].set_xticks([])
            axes[i, j].set_yticks([])
            if i == 0:
                axes[i, j].set_title(name, fontsize=9)
    fig.suptitle(f"{title}: world-model predictions on test windows")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


@torch.no_grad()
def open_loop_rollout(model, frames: torch.Tensor) -> torch.Tensor:
    """Roll the world model out from ``frames[:2]`` using the IDM's latents of the real frames.

    ``frames``: float ``(T, 3, 64, 64)`` of one episode. Returns predictions ``(T, 3, 64, 64)``
    whose first two frames are the real ones and the rest are the model's own. A world model
    trained with ``wm_prev_latent`` also gets the previous window's latent (zeros at the first).
    """
    T = len(frames)
    windows = torch.stack([frames[t : t + 3] for t in range(T - 2)])  # (T-2, 3, 3, 64, 64)
    _, q = model.idm(windows)
    previous = torch.cat([torch.zeros_like(q.z_q[:1]), q.z_q[:-1]])  # (T-2, A): z[t-1]
    out = [frames[0], frames[1]]
    for t in range(T - 2):
        context = torch.stack([out[-2], out[-1]])[None]  # (1, 2, 3, 64, 64)
        out.append(model.predict(context, q.z_q[t : t + 1], previous[t : t + 1])[0])
    return torch.stack(out)


def save_gif(real: np.ndarray, pred: np.ndarray, path: Path, fps: int = 10) -> None:
    """Side-by-side GIF of uint8 ``(T, 64, 64, 3)`` real (left) and predicted (right) frames."""
    from PIL import Image, ImageDraw

    frames = []
    for r, p in zip(real, pred, strict=True):
        canvas = Image.new("RGB", (2 * 64 * 3 + 8, 64 * 3 + 14), "white")
        canvas.paste(Image.fromarray(r).resize((192, 192), Image.NEAREST), (0, 14))
        canvas.paste(Image.fromarray(p).resize((192, 192), Image.NEAREST), (200, 14))
        draw = ImageDraw.Draw(canvas)
        draw.text((4, 1), "real", fill="black")
        draw.text((204, 1), "world model, open loop", fill="black")
        frames.append(canvas)
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=1000 // fps, loop=0)


def cluster_row_title(i: int, members: np.ndarray, actions: np.ndarray | None) -> str:
    """``cluster i: n windows (p%)`` and, with true ``actions`` ``(N,)``, the one its windows
    ``members`` (bool ``(N,)``) took most often."""
    n = int(members.sum())
    text = f"cluster {i + 1}: {n} windows ({100 * n / len(members):.0f}%)"
    if actions is not None:
        counts = np.bincount(actions[members], minlength=len(ACTION_NAMES))
        top = int(counts.argmax())
        text += f"\nmost often {ACTION_NAMES[top]} ({100 * counts[top] / n:.0f}%)"
    return text


def plot_clusters(
    obs: np.ndarray,
    labels: np.ndarray,
    path: Path,
    title: str,
    actions: np.ndarray | None = None,
    examples: int = 3,
    seed: int = 0,
) -> None:
    """What each cluster of latents does, one row per cluster: the mean frame difference
    ``o[t+1] - o[t]`` over its windows (mean over RGB; red brighter, blue darker, scaled per
    row) and ``examples`` transitions ``o[t], o[t+1]``.

    ``obs``: uint8 windows ``(N, 3, 64, 64, 3)``; ``labels``: cluster ``(N,)``; ``actions``:
    the true action of each window's middle frame ``(N,)``, if known."""
    from lapo.report.charts import pyplot

    plt = pyplot()
    k = int(labels.max()) + 1
    rng = np.random.default_rng(seed)
    fig, axes = plt.subplots(
        k, 1 + 2 * examples, figsize=(1.5 * (1 + 2 * examples) + 1, 1.7 * k), dpi=100,
        squeeze=False,
    )  # fmt: skip
    for i in range(k):
        members = labels == i
        win = obs[members]  # (n, 3, 64, 64, 3)
        diff = win[:, 2].astype(np.float32).mean(0) - win[:, 1].astype(np.float32).mean(0)
        diff = diff.mean(-1) / 255  # (64, 64) in [-1, 1]
        scale = max(float(np.abs(diff).max()), 1e-3)
        axes[i, 0].imshow(diff, cmap="RdBu_r", vmin=-scale, vmax=scale)
        axes[i, 0].set_title(f"mean o[t+1]-o[t]\n(+-{scale:.2f})", fontsize=7)
        axes[i, 0].set_ylabel(cluster_row_title(i, members, actions), fontsize=7)
        picks = rng.choice(len(win), min(examples, len(win)), replace=False)
        for j in range(examples):
            for c in range(2):
                ax = axes[i, 1 + 2 * j + c]
                if j < len(picks):
                    ax.imshow(win[picks[j], 1 + c])
                    ax.set_title(("o[t]", "o[t+1]")[c], fontsize=7)
                else:
                    ax.axis("off")
        for ax in axes[i]:
            ax.set_xticks([])
            ax.set_yticks([])
    fig.suptitle(f"{title}: what each cluster of latent actions does")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def latent_pictures(
    batch: dict, z: np.ndarray, km: KMeans | None, out: Path, title: str, seed: int = 0
) -> dict:
    """The latent map (by true action where ``batch`` has actions, else by cluster ``km``) and
    the cluster picture (unless ``km`` is None), into ``out``; returns their paths by name."""
    actions = batch["actions"][:, 1] if "actions" in batch else None
    tmp = out / "latent_tmp.png"
    if actions is not None:
        method = plot_latents(z, actions, tmp, title, seed)
    else:
        names = [f"cluster {i + 1}" for i in range(len(km.centres))]
        method = plot_latents(z, km.labels, tmp, title, seed, names, "k-means cluster")
    files = {"latents": str(tmp.rename(out / f"latent_{method}.png"))}
    if km is None:
        return files
    plot_clusters(batch["obs"], km.labels, out / "clusters.png", title, actions, seed=seed)
    files["clusters"] = str(out / "clusters.png")
    return files


def prediction_picture(model, batch: dict, out: Path, title: str) -> str:
    """World-model predictions on 6 windows spread over ``batch``: ``predictions.png``."""
    from lapo.models.frames import frames_to_float

    sel = batch["obs"][np.linspace(0, len(batch["obs"]) - 1, 6).astype(int)]
    x = frames_to_float(torch.from_numpy(sel))
    with torch.no_grad():  # three-frame windows: a world model that takes z[t-1] gets zeros
        _, q = model.idm(x)
        pred = model.predict(x[:, :2], q.z_q)
    plot_predictions(sel[:, 1], sel[:, 2], _to_uint8(pred), out / "predictions.png", title)
    return str(out / "predictions.png")


def rollout_picture(model, data: Path, out: Path, rollout_frames: int = 48) -> str:
    """The open-loop rollout of the first stretch of ``rollout_frames`` frames (fewer if no
    test episode is as long) of ``data``'s test split: ``rollout.gif``."""
    from lapo.models.frames import frames_to_float

    long = None
    for k in (rollout_frames, rollout_frames // 2, rollout_frames // 4):
        try:
            long = WindowDataset(data, "test", k=max(k, 3))
            break
        except DatasetError:
            continue
    if long is None:
        raise DatasetError(
            f"no test episode in {data} has {max(rollout_frames // 4, 3)} frames for the "
            "rollout GIF: " + more_data_hint(open_dataset(data).manifest, "test")
        )
    ep = long.read(long.starts[:1])["obs"][0]  # (T, 64, 64, 3)
    roll = open_loop_rollout(model, frames_to_float(torch.from_numpy(ep[None]))[0])
    save_gif(ep, _to_uint8(roll), out / "rollout.gif")
    return str(out / "rollout.gif")


def plot_lam(
    run: Path,
    data: Path,
    out: Path,
    windows: int = 2_000,
    rollout_frames: int = 48,
    seed: int = 0,
    clusters: int = 8,
) -> dict:
    """Write the stage-1 pictures for ``run`` on ``data``'s test split into ``out``, the
    latents grouped into ``clusters`` k-means clusters (0: no cluster picture, on data with
    actions only)."""
    from lapo.data.checks import dataset_for
    from lapo.runkinds import load_lam

    out = Path(out)
    model, config = load_lam(run)
    manifest = dataset_for(data, f"stage-1 run {run}", config.get("game"))
    if clusters < (0 if manifest.get("has_actions") else 1):
        raise UserError(f"{data} has no actions: its latents need --clusters of at least 1")
    game = manifest.get("game", "?")
    title = str(game)
    out.mkdir(parents=True, exist_ok=True)
    batch, z, z_q, _ = latent_sample(model, data, windows, seed)
    km = kmeans(z_q.numpy(), clusters, seed) if clusters else None
    files = latent_pictures(batch, z.numpy(), km, out, title, seed)
    summary = {"run": str(run), "data": str(data), "game": game}
    summary["clusters"] = len(km.centres) if km else 0
    if not model.predicts_pixels:
        # a world model that predicts embeddings has no frames to show
        return {**summary, "files": files}
    files["predictions"] = prediction_picture(model, batch, out, title)
    files["rollout"] = rollout_picture(model, data, out, rollout_frames)
    return {**summary, "files": files}
