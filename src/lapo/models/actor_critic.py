"""The PPO demonstrators' network: one encoder, a policy head and a value head.

What ``lapo expert train`` and ``lapo baseline ppo`` train (:mod:`lapo.rl.expert`) and what a
``ppo-expert`` policy folder holds. The network is told its action count (Procgen's 15 is
``lapo.envs.NUM_ACTIONS``).
"""

from __future__ import annotations

import torch
from torch import nn

from lapo.models.frames import frames_to_float
from lapo.models.impala import make_encoder


class ActorCritic(nn.Module):
    """Encoder -> policy logits ``(B, num_actions)`` and value ``(B,)`` from uint8
    observations ``(B, 64, 64, 3)``.

    ``features`` and ``heads`` split the forward pass where a PPO rollout may cache it
    (:func:`lapo.rl.ppo.collect_rollout`); ``forward`` is ``heads(features(obs))``.
    """

    def __init__(self, num_actions: int, arch: str = "impala", width: int = 1) -> None:
        super().__init__()
        self.encoder = make_encoder(arch, in_channels=3, width=width)
        self.actor = nn.Linear(self.encoder.out_features, num_actions)
        self.critic = nn.Linear(self.encoder.out_features, 1)
        # small policy init so the first policy is near uniform (as in CleanRL / baselines)
        nn.init.orthogonal_(self.actor.weight, 0.01)
        nn.init.zeros_(self.actor.bias)
        nn.init.orthogonal_(self.critic.weight, 1.0)
        nn.init.zeros_(self.critic.bias)

    def features(self, obs: torch.Tensor) -> torch.Tensor:
        """uint8 ``(B, 64, 64, 3)`` -> (float, channels-last ``(B, 3, 64, 64)``) -> ``(B, F)``."""
        return self.encoder(frames_to_float(obs).contiguous(memory_format=torch.channels_last))

    def heads(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Features ``(B, F)`` -> ``(logits (B, num_actions), value (B,))``."""
        return self.actor(h), self.critic(h).squeeze(-1)

    def forward(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # (B, 64, 64, 3) uint8 -> (B, F) -> (B, num_actions), (B,)
        return self.heads(self.features(obs))
