"""Playing a stage-1 world model: pick a latent action, see the frame it predicts.

A :class:`PlaySession` starts from a real frame pair ``o[t-1], o[t]`` of the data and steps the
world model with the latent of the button the player picks. The buttons are latents the IDM
really gives (:func:`action_buttons`, :func:`cluster_buttons`):

- on data with actions, one button per true action, holding the latent the IDM gives most
  often over that action's windows (per code slot, the most frequent code; for a continuous
  latent, the mean), named by the action;
- without actions, one button per k-means cluster of the latents
  (:mod:`lapo.evaluation.clusters`), holding the real latent nearest its centre.

After every move the session predicts the next frame for every button; where they are all
the same (no pixel apart by more than :data:`SAME_LEVELS` of 255) although the buttons hold
different latents, the world model ignores its latent there, and the page says so with the
measured spread. Where every button holds the same latent (a collapsed codebook), the page
says that instead.
"""

from __future__ import annotations

import base64
import io
import threading
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from lapo.envs import ACTION_NAMES
from lapo.errors import UserError
from lapo.evaluation.clusters import kmeans, nearest_points
from lapo.models.frames import frames_to_float
from lapo.report.latents import latent_sample

SAME_LEVELS = 8
"""Two predicted frames are "the same" when no pixel's channel differs by more than this many
levels of 255: less than a sprite moving by one pixel against the background changes."""
STRIP = 8
"""Frames in the page's history strip."""

# arrows and WASD move; space is each game's main action (the special action "D" fires,
# throws or shoots in these games; in the platformers UP jumps; elsewhere it waits)
MOVE_KEYS = {
    "LEFT": ["arrowleft", "a"],
    "RIGHT": ["arrowright", "d"],
    "UP": ["arrowup", "w"],
    "DOWN": ["arrowdown", "s"],
}
FIRE_GAMES = ("bossfight", "caveflyer", "dodgeball", "fruitbot", "plunder", "starpilot")
JUMP_GAMES = ("climber", "coinrun", "jumper", "leaper", "ninja")


def main_action(game: str) -> str:
    """The action the space bar plays in ``game``."""
    return "D" if game in FIRE_GAMES else "UP" if game in JUMP_GAMES else "NOOP"


@dataclass
class Button:
    """A latent action the player can pick."""

    label: str
    """What the page shows: the true action's name, or ``cluster i``."""
    latent: torch.Tensor
    """(A,) the quantised latent fed to the world model."""
    keys: list[str]
    """Keyboard keys (``KeyboardEvent.key``, lower case) that press it."""
    windows: int
    """Windows of the sample behind it (the action's, or the cluster's)."""
    agreement: float
    """Share of those windows whose latent matches it: per code slot for an action's
    (:func:`mode_latent`), whole latent for a cluster's; for a continuous latent, 0."""
    action: int | None = None
    """The true action, on data with actions."""


def mode_latent(z_q: torch.Tensor, codes: torch.Tensor | None) -> tuple[torch.Tensor, float]:
    """The latent the IDM gives most often among ``z_q`` ``(n, A)`` whose slots' code indices
    are ``codes`` ``(n, slots)``, and the mean share of the ``n`` windows that give each of its
    slots' codes: ``((A,), agreement)``.

    A large codebook rarely gives one whole latent twice, so ties in how often a whole latent
    occurs are broken by how common its codes are, slot by slot (the sum of the log shares of
    its slots' codes): the result is always a latent the IDM really gave. For a continuous
    latent (``codes`` None), the mean and agreement 0."""
    if codes is None:
        return z_q.mean(0), 0.0
    _, whole, whole_counts = torch.unique(codes, dim=0, return_inverse=True, return_counts=True)
    shares = []  # per slot, (n,): the share of windows that give each window's code there
    for s in range(codes.shape[1]):
        _, inv, counts = torch.unique(codes[:, s], return_inverse=True, return_counts=True)
        shares.append(counts[inv].double() / len(codes))
    share = torch.stack(shares, 1)  # (n, slots)
    # the most frequent whole latent; among equals, the one with the most common codes
    best = int(np.lexsort((share.log().sum(1).numpy(), whole_counts[whole].numpy()))[-1])
    return z_q[best], float(share[best].mean())


def action_buttons(
    z_q: torch.Tensor, codes: torch.Tensor | None, actions: np.ndarray, game: str
) -> list:
    """One :class:`Button` per true action in ``actions`` ``(N,)`` (the middle frame's), its
    latent the mode (:func:`mode_latent`) of the IDM's ``z_q`` ``(N, A)`` over that action's
    windows."""
    space = main_action(game)
    buttons = []
    for a in np.unique(actions):
        name = ACTION_NAMES[a]
        members = torch.from_numpy(actions == a)
        mine = codes[members] if codes is not None else None
        latent, agreement = mode_latent(z_q[members], mine)
        keys = list(MOVE_KEYS.get(name, [])) + [" "] * (name == space)
        buttons.append(Button(name, latent, keys, int(members.sum()), agreement, int(a)))
    return buttons


def cluster_buttons(z_q: torch.Tensor, k: int, seed: int = 0) -> list:
    """One :class:`Button` per k-means cluster of ``z_q`` ``(N, A)``, numbered from 1 by size,
    holding the real latent nearest its centre; number keys 1-9, 0 press the first ten."""
    km = kmeans(z_q.numpy(), k, seed)
    snap = nearest_points(z_q.numpy(), km.centres)
    buttons = []
    for i, n in enumerate(snap):
        latent = z_q[n]
        members = km.labels == i
        same = float((z_q[torch.from_numpy(members)] == latent).all(1).float().mean())
        keys = [str((i + 1) % 10)] if i < 10 else []
        buttons.append(Button(f"cluster {i + 1}", latent, keys, int(members.sum()), same))
    return buttons


def png_base64(frame: torch.Tensor) -> str:
    """A float frame ``(3, 64, 64)`` in [-0.5, 0.5] as a base64 PNG."""
    from PIL import Image

    img = ((frame.clamp(-0.5, 0.5) + 0.5) * 255).round().byte().permute(1, 2, 0).numpy()
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def spread(preds: torch.Tensor) -> dict:
    """How far apart the buttons' predicted frames ``(B, 3, 64, 64)`` are, in levels of 255:
    the largest and the mean (over pixels) of each pixel's range over the buttons (largest
    over channels), and the pixels whose range exceeds :data:`SAME_LEVELS`."""
    img = ((preds.clamp(-0.5, 0.5) + 0.5) * 255).round()  # (B, 3, 64, 64)
    rng = (img.max(0).values - img.min(0).values).amax(0)  # (64, 64)
    return {
        "max_levels": int(rng.max()),
        "mean_levels": round(float(rng.mean()), 3),
        "pixels_apart": int((rng > SAME_LEVELS).sum()),
        "threshold_levels": SAME_LEVELS,
    }


@dataclass
class PlaySession:
    """A game in the world model: the frames so far (float ``(3, 64, 64)``, the first two real),
    the buttons, and each button's predicted next frame from here."""

    model: torch.nn.Module
    starts: np.ndarray
    """uint8 ``(N, 2, 64, 64, 3)`` real frame pairs to start from."""
    buttons: list[Button]
    info: dict
    """What the page shows about the run and data (run, data, game, labels)."""
    seed: int = 0
    frames: list[torch.Tensor] = field(default_factory=list)
    moves: list[str] = field(default_factory=list)
    """The label of the move that produced each frame ("real" for the start)."""
    played: list[torch.Tensor] = field(default_factory=list)
    """The latent ``(A,)`` of each move played since the start."""

    def __post_init__(self) -> None:
        self.rng = np.random.default_rng(self.seed)
        self.lock = threading.Lock()  # the HTTP server answers from several threads
        self.latents = torch.stack([b.latent for b in self.buttons])  # (B, A)
        self.distinct = len(torch.unique(self.latents, dim=0))
        self.reset()

    @torch.no_grad()
    def predict_all(self) -> torch.Tensor:
        """Every button's next frame from the last two frames: ``(B, 3, 64, 64)``.

        A world model trained with ``wm_prev_latent`` also gets the previous step's latent:
        the latent of the move played last, or zeros at the start (a real frame pair, whose
        own latent the session does not know); any other world model ignores it."""
        context = torch.stack(self.frames[-2:])[None]  # (1, 2, 3, 64, 64)
        context = context.expand(len(self.buttons), -1, -1, -1, -1)
        last = self.played[-1] if self.played else torch.zeros_like(self.latents[0])
        previous = last[None].expand_as(self.latents)  # (B, A)
        return self.model.predict(context, self.latents, previous).clamp(-0.5, 0.5)

    def _update(self) -> None:
        self.preview = self.predict_all()
        self.spread = spread(self.preview)
        # with one latent among the buttons there is nothing to compare
        apart = self.spread["max_levels"] > SAME_LEVELS
        self.ignores_latent = None if self.distinct < 2 else not apart

    def reset(self) -> None:
        """Start again from a random real frame pair."""
        pair = self.starts[self.rng.integers(len(self.starts))]  # (2, 64, 64, 3)
        self.frames = list(frames_to_float(torch.from_numpy(pair[None]))[0])
        self.moves = ["real", "real"]
        self.played = []
        self._update()

    def step(self, button: int) -> None:
        """Play ``button``: its predicted frame becomes the next frame."""
        if not 0 <= button < len(self.buttons):
            raise UserError(f"no button {button}: there are {len(self.buttons)}")
        self.frames.append(self.preview[button])
        self.moves.append(self.buttons[button].label)
        self.played.append(self.buttons[button].latent)
        self._update()

    def undo(self) -> None:
        """Take back the last move (the real start frames stay)."""
        if len(self.frames) > 2:
            self.frames.pop()
            self.moves.pop()
            self.played.pop()
            self._update()

    def state(self) -> dict:
        """Everything the page draws, frames as base64 PNGs."""
        strip = [
            {"png": png_base64(f), "move": m}
            for f, m in zip(self.frames[-STRIP:], self.moves[-STRIP:], strict=True)
        ]
        buttons = [
            {
                "index": i,
                "label": b.label,
                "keys": b.keys,
                "action": b.action,
                "windows": b.windows,
                "agreement": round(b.agreement, 3),
                "preview": png_base64(p),
            }
            for i, (b, p) in enumerate(zip(self.buttons, self.preview, strict=True))
        ]
        return {
            **self.info,
            "step": len(self.frames) - 2,
            "frame": strip[-1]["png"],
            "history": strip,
            "can_undo": len(self.frames) > 2,
            "buttons": buttons,
            "distinct_latents": self.distinct,
            "ignores_latent": self.ignores_latent,
            "spread": self.spread,
        }


def default_data(run: Path, config: dict) -> Path:
    """The dataset ``run`` was trained on, as its config records it."""
    data = config.get("data")
    if not data or not Path(data).is_dir():
        raise UserError(f"{run} was trained on {data or 'an unrecorded dataset'}, which is not "
                        "here: pass --data DIR (a dataset of the same game)")  # fmt: skip
    return Path(data)


def open_session(
    run: Path, data: Path | None = None, windows: int = 2_000, clusters: int = 8, seed: int = 0
) -> PlaySession:
    """A :class:`PlaySession` for the stage-1 ``run`` on ``data`` (default: the run's own):
    ``windows`` windows of its test split (train where it has no test frames) give the start
    frames and the buttons' latents (``clusters`` k-means clusters on data without actions)."""
    from lapo.data.checks import dataset_for
    from lapo.runkinds import load_lam

    if windows < 1 or clusters < 1:
        raise UserError("--windows and --clusters must be at least 1")
    model, config = load_lam(run)
    if not model.predicts_pixels:
        raise UserError(
            f"{run}'s world model predicts embeddings, not frames (wm_target embedding): "
            "there is nothing to draw; play a run trained with --wm-target pixels"
        )
    data = Path(data) if data is not None else default_data(Path(run), config)
    manifest = dataset_for(data, f"stage-1 run {run}", config.get("game"))
    game = manifest["game"]
    batch, _, z_q, codes = latent_sample(model, data, windows, seed)
    if "actions" in batch:
        buttons = action_buttons(z_q, codes, batch["actions"][:, 1], game)
    else:
        buttons = cluster_buttons(z_q, clusters, seed)
    info = {"run": str(run), "data": str(data), "game": game, "labels": "actions" in batch}
    return PlaySession(model, batch["obs"][:, :2].copy(), buttons, info, seed)
