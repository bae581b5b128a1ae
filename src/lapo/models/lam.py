"""The latent action model (LAM) of stage 1: the latent IDM and the world model, trained together.

From a window ``o[t-1], o[t], o[t+1]`` the IDM infers a latent action ``z[t]``; the world
model predicts ``o[t+1]`` (or its embedding) from ``o[t-1], o[t]`` and the quantised latent
(with ``wm_prev_latent``, also the previous step's, ``z[t-1]``).
:func:`idm_input` and :func:`wm_context` are what each network sees in training, with stage
1's augmentations; evaluation shows them the plain window.
"""

from __future__ import annotations

import torch
from torch import nn

from lapo import distributed
from lapo.config import LAMConfig
from lapo.models.augment import random_shift
from lapo.models.idm import build_idm
from lapo.models.motion import global_shift, roll_each
from lapo.models.policy import PROCGEN_ACTIONS
from lapo.models.world_model import EmbeddingWorldModel, WorldModel, embedding_error


class LatentActionModel(nn.Module):
    """The IDM and the world model, and with labels in stage 1 an action head: latent ``(B, A)``
    -> logits ``(B, num_actions)``, trained on the K labelled windows."""

    def __init__(self, cfg: LAMConfig, num_actions: int = PROCGEN_ACTIONS) -> None:
        super().__init__()
        self.idm = build_idm(cfg)
        self.action_head = (
            nn.Linear(cfg.quantizer.latent_dim, num_actions) if cfg.uses_labels else None
        )
        if cfg.wm_target not in ("pixels", "embedding"):
            raise ValueError(f"wm_target must be pixels or embedding, not {cfg.wm_target!r}")
        self.world_model: WorldModel | EmbeddingWorldModel
        # with wm_differences the context gains a third image, the amplified o[t] - o[t-1]
        self.wm_difference_scale = cfg.idm_difference_scale if cfg.wm_differences else 0.0
        # with wm_camera_shift, o[t] moved by the camera's shift to o[t+1]
        self.wm_camera_shift = cfg.wm_camera_shift
        context = 2 + int(cfg.wm_differences) + int(cfg.wm_camera_shift)
        # with wm_prev_latent the world model's latent input is (z[t], z[t-1]) concatenated
        self.wm_prev_latent = cfg.wm_prev_latent
        latents = cfg.quantizer.latent_dim * (2 if cfg.wm_prev_latent else 1)
        if cfg.wm_target == "embedding":
            self.world_model = EmbeddingWorldModel(latents, context, cfg.idm_width)
        else:
            self.world_model = WorldModel(
                latents,
                context,
                base=cfg.wm_base,
                residual=cfg.wm_residual,
                action_everywhere=cfg.wm_action_everywhere,
                space_to_depth=cfg.wm_space_to_depth,
            )

    @property
    def predicts_pixels(self) -> bool:
        return isinstance(self.world_model, WorldModel)

    def predict(
        self,
        context: torch.Tensor,
        z_q: torch.Tensor,
        z_prev: torch.Tensor | None = None,
        shift: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The world model's prediction from ``o[t-1], o[t]`` ``(B, 2, 3, 64, 64)`` and the
        latent ``(B, A)``: ``o[t+1]`` ``(B, 3, 64, 64)``, or its embedding ``(B, F)``.

        ``z_prev`` ``(B, A)``: the previous step's quantised latent, which a world model built
        with ``wm_prev_latent`` receives beside ``z_q`` (zeros where there is none: the first
        step of a rollout or of play); ignored by one built without. ``shift`` ``(B, 2)``: the
        camera's shift from ``o[t]`` to ``o[t+1]`` for a world model built with
        ``wm_camera_shift`` (None: the shift from ``o[t-1]`` to ``o[t]``, the best guess
        without ``o[t+1]``); ignored by one built without."""
        if self.wm_camera_shift:
            context = camera_context(context, shift)  # (B, 3, 3, 64, 64), o[t] last
        if self.wm_difference_scale:
            diff = (context[:, -1] - context[:, -2]) * self.wm_difference_scale  # o[t] - o[t-1]
            context = torch.cat([diff[:, None], context], 1)  # (B, 3, 3, 64, 64), o[t] last
        if self.wm_prev_latent:
            z_prev = torch.zeros_like(z_q) if z_prev is None else z_prev.to(z_q.dtype)
            z_q = torch.cat([z_q, z_prev], 1)  # (B, 2A)
        return self.world_model(context, z_q)

    def prediction_error(
        self,
        context: torch.Tensor,
        target: torch.Tensor,
        z_q: torch.Tensor,
        z_prev: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Per-pixel squared error ``(B, 3, 64, 64)`` of the predicted ``o[t+1]``, or per-sample
        ``(B,)`` embedding error, for context ``(B, 2, 3, 64, 64)``, target ``(B, 3, 64, 64)``
        (``z_prev``: as :meth:`predict`; a world model built with ``wm_camera_shift`` gets the
        shift from ``o[t]`` to the target)."""
        shift = None
        if self.wm_camera_shift:
            with torch.no_grad():
                shift = global_shift(context[:, -1], target)  # (B, 2)
        pred = self.predict(context, z_q, z_prev, shift)
        if self.predicts_pixels:
            return (pred - target) ** 2
        return embedding_error(pred, self.world_model.target(target))

    @torch.no_grad()
    def previous_latent(self, window: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The previous step's latent ``z[t-1]`` of ``o[t-2], o[t-1], o[t]``
        ``(B, 3, 3, 64, 64)``: ``(z (B, A), z_q (B, A))``, without gradient (stop-gradient: the
        IDM learns only through ``z[t]``) and without touching the codebook (its EMA statistics
        and restarts count each step's ``z[t]`` alone, as without the option)."""
        quantizer = self.idm.quantizer
        was_training = quantizer.training
        quantizer.eval()
        try:
            z, q = self.idm(window)
        finally:
            quantizer.train(was_training)
        return z, q.z_q


def camera_context(context: torch.Tensor, shift: torch.Tensor | None = None) -> torch.Tensor:
    """``o[t-1], o[t]`` ``(B, 2, 3, 64, 64)`` -> ``shift(o[t]), o[t-1], o[t]``
    ``(B, 3, 3, 64, 64)``: ``o[t]`` rolled by ``shift`` ``(B, 2)`` (``(dy, dx)``, as
    :func:`~lapo.models.motion.global_shift` gives), or by the shift from ``o[t-1]`` to
    ``o[t]`` when None (the camera keeps moving as it did)."""
    if shift is None:
        with torch.no_grad():
            shift = global_shift(context[:, 0], context[:, 1])  # (B, 2)
    moved = roll_each(context[:, 1], shift)  # (B, 3, 64, 64)
    return torch.cat([moved[:, None], context], 1)


def split_window(frames: torch.Tensor, cfg: LAMConfig) -> tuple[torch.Tensor | None, torch.Tensor]:
    """A training window ``(B, P+K+2, 3, 64, 64)`` -> ``(o[t-2] (B, 3, 64, 64) or None,
    o[t-1] .. o[t+K] (B, K+2, 3, 64, 64))``: ``P = cfg.previous_frames`` is 1 where the window
    starts at ``o[t-2]`` for the previous latent ``z[t-1]``."""
    if cfg.previous_frames:
        return frames[:, 0], frames[:, 1:]
    return None, frames


def idm_input(frames: torch.Tensor, cfg: LAMConfig) -> torch.Tensor:
    """The IDM's training frames ``(B, 3, 3, 64, 64)`` from a window ``(B, K+2, 3, 64, 64)``:
    ``o[t-1], o[t], o[t+k]`` with k drawn per window from 1..K (``idm_lookahead``), each frame
    shifted by up to ``aug_shift`` pixels; ``o[t-1], o[t], o[t+1]`` when both are off (as in
    evaluation). Per-window draws are made for the global batch and sliced
    (:func:`distributed.draw_local`): N processes draw what one process does."""
    x = frames[:, :3]
    if cfg.idm_lookahead > 1:
        B = frames.shape[0]
        K, dev = cfg.idm_lookahead, frames.device
        k = distributed.draw_local(lambda n: torch.randint(1, K + 1, (n,), device=dev), B)
        far = frames[torch.arange(B, device=frames.device), 1 + k]  # (B, 3, 64, 64)
        x = torch.cat([frames[:, :2], far[:, None]], 1)
    return random_shift(x, cfg.aug_shift)


def wm_context(frames: torch.Tensor, cfg: LAMConfig) -> torch.Tensor:
    """The world model's training context ``o[t-1], o[t]`` ``(B, 2, 3, 64, 64)`` from a window
    ``(B, K+2, 3, 64, 64)``, ``o[t-1]`` zeroed with probability ``wm_mask_past`` per window
    (drawn for the global batch and sliced, like :func:`idm_input`'s)."""
    context = frames[:, :2]
    if cfg.wm_mask_past <= 0:
        return context
    draw = lambda n: torch.rand(n, device=frames.device)  # noqa: E731
    keep = distributed.draw_local(draw, len(frames)) >= cfg.wm_mask_past  # (B,)
    return torch.stack([context[:, 0] * keep[:, None, None, None], context[:, 1]], 1)
