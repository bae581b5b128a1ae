"""The PPO demonstrators' network: one encoder, a policy head and a value head.

What ``lapo expert train`` and ``lapo baseline ppo`` train (:mod:`lapo.rl.expert`) and what a
``ppo-expert`` policy folder holds. The network is told its action count (Procgen's 15 is
``lapo.envs.NUM_ACTIONS``). It always takes the recorded 64x64 RGB frames; a cheaper one sees
them at half the resolution (``obs_size`` 32) or grey, made inside its forward pass.
"""

from __future__ import annotations

import torch
from torch import nn

from lapo.models.frames import frames_to_input
from lapo.models.impala import make_encoder


class ActorCritic(nn.Module):
    """Encoder -> policy logits ``(B, num_actions)`` and value ``(B,)`` from uint8
    observations ``(B, 64, 64, 3)``.

    ``arch``: the encoder (:func:`lapo.models.impala.make_encoder`); ``obs_size`` (64 or 32)
    and ``grey``: what the encoder sees (:func:`lapo.models.frames.frames_to_input`).
    ``features`` and ``heads`` split the forward pass where a PPO rollout may cache it
    (:func:`lapo.rl.ppo.collect_rollout`); ``forward`` is ``heads(features(obs))``.
    """

    def __init__(
        self,
        num_actions: int,
        arch: str = "impala",
        width: int = 1,
        obs_size: int = 64,
        grey: bool = False,
    ) -> None:
        super().__init__()
        self.obs_size, self.grey = obs_size, grey
        self.encoder = make_encoder(arch, 1 if grey else 3, width, obs_size)
        self.actor = nn.Linear(self.encoder.out_features, num_actions)
        self.critic = nn.Linear(self.encoder.out_features, 1)
        # small policy init so the first policy is near uniform (as in CleanRL / baselines)
        nn.init.orthogonal_(self.actor.weight, 0.01)
        nn.init.zeros_(self.actor.bias)
        nn.init.orthogonal_(self.critic.weight, 1.0)
        nn.init.zeros_(self.critic.bias)

    def features(self, obs: torch.Tensor) -> torch.Tensor:
        """uint8 ``(B, 64, 64, 3)`` -> (float, channels-last ``(B, C, S, S)``) -> ``(B, F)``."""
        x = frames_to_input(obs, self.obs_size, self.grey)
        return self.encoder(x.contiguous(memory_format=torch.channels_last))

    def heads(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Features ``(B, F)`` -> ``(logits (B, num_actions), value (B,))``."""
        return self.actor(h), self.critic(h).squeeze(-1)

    def forward(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # (B, 64, 64, 3) uint8 -> (B, F) -> (B, num_actions), (B,)
        return self.heads(self.features(obs))
