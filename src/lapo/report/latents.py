"""Pictures of what a stage-1 model learned: latent actions by true action, world-model
predictions, and an open-loop rollout.

``plot_lam(run, data, out)`` writes:

- ``latent_umap.png`` (or ``latent_pca.png`` without the optional ``umap-learn``): a 2-D
  embedding of IDM latents of test windows, coloured by the true action (the paper's figure);
- ``predictions.png``: rows of ``o[t]``, ``o[t+1]``, the world model's prediction of
  ``o[t+1]`` and the absolute error;
- ``rollout.gif``: the world model rolled out open-loop from two real frames, driven only by
  the IDM's latents of a real test episode, beside the real frames.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from lapo.envs import ACTION_NAMES


def _to_uint8(x: torch.Tensor) -> np.ndarray:
    """float ``(..., 3, H, W)`` in [-0.5, 0.5] -> uint8 ``(..., H, W, 3)``."""
    img = ((x.clamp(-0.5, 0.5) + 0.5) * 255).round().byte()
    return img.movedim(-3, -1).numpy()


def embed_2d(z: np.ndarray, seed: int = 0) -> tuple[np.ndarray, str]:
    """``(N, A)`` -> ``((N, 2), method)``: UMAP when installed, else PCA."""
    try:
        import umap  # optional: pip install "lapo[umap]"
    except ImportError:
        zc = z - z.mean(0)
        _, _, vt = np.linalg.svd(zc, full_matrices=False)
        return zc @ vt[:2].T, "pca"
    import warnings

    reducer = umap.UMAP(n_components=2, random_state=seed, n_neighbors=30, min_dist=0.1)
    with warnings.catch_warnings():  # "n_jobs overridden by random_state": seeded on purpose
        warnings.simplefilter("ignore", UserWarning)
        return reducer.fit_transform(z), "umap"


def plot_latents(z: np.ndarray, actions: np.ndarray, path: Path, title: str, seed: int = 0) -> str:
    """Scatter the 2-D embedding of latents ``z`` ``(N, A)`` coloured by ``actions`` ``(N,)``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    xy, method = embed_2d(z, seed)
    fig, ax = plt.subplots(figsize=(8, 7), dpi=110)
    cmap = plt.get_cmap("tab20")
    for a in np.unique(actions):
        m = actions == a
        ax.scatter(xy[m, 0], xy[m, 1], s=4, color=cmap(int(a) % 20), label=ACTION_NAMES[a])
    ax.set_title(f"{title}: IDM latent actions ({method.upper()}), coloured by true action")
    ax.set_xlabel(f"{method.upper()} 1")
    ax.set_ylabel(f"{method.upper()} 2")
    ax.legend(
        markerscale=4, fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5), title="true action"
    )
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
    whose first two frames are the real ones and the rest are the model's own.
    """
    T = len(frames)
    windows = torch.stack([frames[t : t + 3] for t in range(T - 2)])  # (T-2, 3, 3, 64, 64)
    _, q = model.idm(windows)
    out = [frames[0], frames[1]]
    for t in range(T - 2):
        context = torch.stack([out[-2], out[-1]])[None]  # (1, 2, 3, 64, 64)
        out.append(model.predict(context, q.z_q[t : t + 1])[0])
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


def plot_lam(
    run: Path, data: Path, out: Path, windows: int = 2_000, rollout_frames: int = 48, seed: int = 0
) -> dict:
    """Write the stage-1 pictures for ``run`` on ``data``'s test split into ``out``."""
    from lapo.data.dataset import WindowDataset
    from lapo.data.format import DatasetError, open_dataset
    from lapo.models.idm import frames_to_float
    from lapo.stages.lam import encode_windows, load_lam

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    model, config = load_lam(run)
    manifest = open_dataset(data).manifest
    game = manifest.get("game", "?")
    title = str(game)
    test = WindowDataset(data, "test", k=3)
    rng = np.random.default_rng(seed)
    batch = test.read(np.sort(rng.choice(test.starts, min(windows, len(test)), replace=False)))
    files = {}

    if manifest.get("has_actions"):
        z, _ = encode_windows(model, batch["obs"], torch.device("cpu"))
        method = plot_latents(
            z.numpy(), batch["actions"][:, 1], out / "latent_tmp.png", title, seed
        )
        files["latents"] = str((out / "latent_tmp.png").rename(out / f"latent_{method}.png"))

    if not model.predicts_pixels:
        # a world model that predicts embeddings has no frames to show
        return {"run": str(run), "data": str(data), "game": game, "files": files}
    sel = batch["obs"][np.linspace(0, len(batch["obs"]) - 1, 6).astype(int)]  # spread out
    x = frames_to_float(torch.from_numpy(sel))
    with torch.no_grad():
        _, q = model.idm(x)
        pred = model.predict(x[:, :2], q.z_q)
    plot_predictions(sel[:, 1], sel[:, 2], _to_uint8(pred), out / "predictions.png", title)
    files["predictions"] = str(out / "predictions.png")

    # a stretch of one test episode of rollout_frames frames (fewer if no episode is as long)
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
            "rollout GIF; collect more test frames"
        )
    ep = long.read(long.starts[:1])["obs"][0]  # (T, 64, 64, 3)
    roll = open_loop_rollout(model, frames_to_float(torch.from_numpy(ep[None]))[0])
    save_gif(ep, _to_uint8(roll), out / "rollout.gif")
    files["rollout"] = str(out / "rollout.gif")
    return {"run": str(run), "data": str(data), "game": game, "files": files}
