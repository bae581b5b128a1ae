"""Policy networks of stages 2 and 3 and of the baselines.

Every network here maps uint8 observations ``(B, 64, 64, 3)`` to what it predicts:

- :class:`LatentPolicy` (stage 2): IMPALA-CNN -> latent action ``(B, A)``.
- :class:`ActionDecoder` (stage 3): MLP from a latent action ``(B, A)`` to action logits.
- :class:`DecodedPolicy` (offline decoding): ``decoder(latent_policy(o))`` -> logits.
- :class:`ActionPolicy` (baselines): IMPALA-CNN -> action logits.
- :class:`OnlineAgent` (online decoding): a frozen latent path and decoder averaged with a
  trainable RL path, plus a value head.

Networks with action logits are told their action count ``num_actions`` (``K`` in the shapes
below); callers pass ``lapo.envs.NUM_ACTIONS``, Procgen's 15, which is also the default.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from lapo.models.frames import frames_to_float
from lapo.models.impala import ImpalaCNN, NatureCNN, make_encoder

DECODER_HIDDEN = (192, 128, 64)  # ../shared/LAPO_NOTES.md: 128 -> 192 -> 128 -> 64 -> 15
PROCGEN_ACTIONS = 15  # the default num_actions (lapo.envs.NUM_ACTIONS)


def _features(encoder: ImpalaCNN | NatureCNN, obs: torch.Tensor) -> torch.Tensor:
    """uint8 ``(B, 64, 64, 3)`` -> ``(B, F)`` after the encoder's linear layer and ReLU."""
    return encoder(frames_to_float(obs).contiguous(memory_format=torch.channels_last))


class LatentPolicy(nn.Module):
    """Stage 2: ``pi(o[t]) -> z[t]``, regressed onto the frozen IDM's continuous latent.

    ``arch``: the encoder (:func:`lapo.models.impala.make_encoder`; ``width`` is the IMPALA-CNN's
    multiplier, unused by the Nature CNN)."""

    def __init__(self, latent_dim: int, width: int = 4, arch: str = "impala") -> None:
        super().__init__()
        self.encoder = make_encoder(arch, 3, width, 64)
        self.head = nn.Linear(self.encoder.out_features, latent_dim)
        self.latent_dim, self.width, self.arch = latent_dim, width, arch

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        # (B, 64, 64, 3) uint8 -> (B, F) -> (B, A)
        return self.head(_features(self.encoder, obs))


class ActionDecoder(nn.Module):
    """MLP from a latent action ``(B, A)`` to action logits ``(B, K)``.

    Latents are standardised first with ``z_mean``/``z_std``, buffers set from the labelled
    latents the decoder is fit on (:func:`lapo.stages.decode.fit_decoder`). With ``skip``, a
    linear layer on the raw latent is added to the MLP's logits: offline decoding starts it
    from stage 1's action head (a stage-1 run trained with labels).
    """

    def __init__(
        self,
        latent_dim: int,
        hidden: tuple[int, ...] = DECODER_HIDDEN,
        num_actions: int = PROCGEN_ACTIONS,
        skip: bool = False,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        d = latent_dim
        for h in hidden:
            layers += [nn.Linear(d, h), nn.ReLU()]
            d = h
        layers.append(nn.Linear(d, num_actions))
        self.net = nn.Sequential(*layers)
        self.register_buffer("z_mean", torch.zeros(latent_dim))
        self.register_buffer("z_std", torch.ones(latent_dim))
        self.skip = nn.Linear(latent_dim, num_actions) if skip else None

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        # (B, A) -> (B, K)
        logits = self.net((z - self.z_mean) / self.z_std)
        return logits if self.skip is None else logits + self.skip(z)


class DecodedPolicy(nn.Module):
    """Offline decoding's deployed policy: ``decoder(latent_policy(o))`` -> ``(B, K)`` logits."""

    def __init__(
        self,
        latent_dim: int,
        width: int = 4,
        num_actions: int = PROCGEN_ACTIONS,
        decoder_skip: bool = False,
        arch: str = "impala",
    ) -> None:
        super().__init__()
        self.latent_policy = LatentPolicy(latent_dim, width, arch)
        self.decoder = ActionDecoder(latent_dim, num_actions=num_actions, skip=decoder_skip)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        # (B, 64, 64, 3) uint8 -> (B, A) -> (B, K)
        return self.decoder(self.latent_policy(obs))


class ActionPolicy(nn.Module):
    """Baselines' policy: an encoder (IMPALA-CNN, or ``arch``) -> action logits ``(B, K)``,
    trained on action labels."""

    def __init__(
        self, width: int = 4, num_actions: int = PROCGEN_ACTIONS, arch: str = "impala"
    ) -> None:
        super().__init__()
        self.encoder = make_encoder(arch, 3, width, 64)
        self.head = nn.Linear(self.encoder.out_features, num_actions)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        # (B, 64, 64, 3) uint8 -> (B, F) -> (B, K)
        return self.head(_features(self.encoder, obs))


class OnlineAgent(nn.Module):
    """Online decoding's actor-critic (LAPO's stage 3, ../shared/LAPO_NOTES.md).

    - ``trunk``: the latent policy's convolutions (``encoder.trunk``), frozen.
    - latent path, frozen: the latent policy's linear layer and latent head, then
      ``decoder`` (re-fit from the agent's own transitions, never by PPO).
    - RL path, trained by PPO: ``rl_fc`` (a copy of the latent policy's linear layer) and
      ``rl_head`` (K-way, initialised to zero, so the agent starts as the decoded policy).
    - ``value_head`` on the RL path's features.

    The action logits are the mean of the two paths' logits.
    """

    def __init__(
        self,
        latent_dim: int,
        width: int = 4,
        num_actions: int = PROCGEN_ACTIONS,
        arch: str = "impala",
    ) -> None:
        super().__init__()
        lp = LatentPolicy(latent_dim, width, arch)
        self.trunk = lp.encoder.trunk
        self.latent_fc = lp.encoder.fc
        self.latent_head = lp.head
        self.decoder = ActionDecoder(latent_dim, num_actions=num_actions)
        self.rl_fc = copy.deepcopy(lp.encoder.fc)
        self.rl_head = nn.Linear(lp.encoder.out_features, num_actions)
        nn.init.zeros_(self.rl_head.weight)
        nn.init.zeros_(self.rl_head.bias)
        self.value_head = nn.Linear(lp.encoder.out_features, 1)
        nn.init.orthogonal_(self.value_head.weight, 1.0)
        nn.init.zeros_(self.value_head.bias)
        for module in (self.trunk, self.latent_fc, self.latent_head):
            module.requires_grad_(False)

    @classmethod
    def from_latent_policy(
        cls, policy: LatentPolicy, num_actions: int = PROCGEN_ACTIONS
    ) -> OnlineAgent:
        """The agent at frame 0: trunk, latent path and RL linear layer copied from ``policy``."""
        agent = cls(policy.latent_dim, policy.width, num_actions, policy.arch)
        agent.trunk.load_state_dict(policy.encoder.trunk.state_dict())
        agent.latent_fc.load_state_dict(policy.encoder.fc.state_dict())
        agent.latent_head.load_state_dict(policy.head.state_dict())
        agent.rl_fc.load_state_dict(policy.encoder.fc.state_dict())
        return agent

    @torch.no_grad()
    def trunk_features(self, obs: torch.Tensor) -> torch.Tensor:
        """uint8 ``(B, 64, 64, 3)`` -> frozen trunk features ``(B, F)`` (IMPALA: 32w x 8 x 8;
        Nature: 64 x 4 x 4; the ReLU the IMPALA-CNN applies before its linear layer, which the
        Nature CNN's last convolution already has)."""
        x = frames_to_float(obs).contiguous(memory_format=torch.channels_last)
        return F.relu(self.trunk(x)).flatten(1)

    def features(self, obs: torch.Tensor) -> torch.Tensor:
        """:meth:`trunk_features`: what a PPO rollout caches (:func:`lapo.rl.ppo.collect_rollout`)."""
        return self.trunk_features(obs)

    def latent(self, feats: torch.Tensor) -> torch.Tensor:
        """Trunk features ``(B, F)`` -> the frozen latent path's latent action ``(B, A)``."""
        return self.latent_head(F.relu(self.latent_fc(feats)))

    def heads(self, feats: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Trunk features ``(B, F)`` -> ``(logits (B, K), value (B,))``."""
        decoded = self.decoder(self.latent(feats))  # (B, K)
        h = F.relu(self.rl_fc(feats))  # (B, 256)
        logits = (decoded + self.rl_head(h)) / 2
        return logits, self.value_head(h).squeeze(-1)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        # (B, 64, 64, 3) uint8 -> (B, F) -> (B, K) logits
        return self.heads(self.trunk_features(obs))[0]


NETWORKS = {
    "latent-policy": LatentPolicy,
    "decoded-policy": DecodedPolicy,
    "action-policy": ActionPolicy,
    "online-agent": OnlineAgent,
}


def build_network(spec: dict) -> nn.Module:
    """A network from its JSON spec ``{"class": name, **constructor arguments}``."""
    spec = dict(spec)
    cls = NETWORKS[spec.pop("class")]
    return cls(**spec)
