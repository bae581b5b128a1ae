"""Online decoding: PPO with rewards on top of the latent policy (LAPO's stage 3).

The published scheme (../shared/LAPO_NOTES.md), as one loop that reads top to bottom:

1. rollout (:func:`lapo.rl.ppo.collect_rollout`): the :class:`lapo.models.policy.OnlineAgent`
   acts; its logits are the mean of the frozen latent path's decoded logits and a
   zero-initialised RL head's;
2. decoder data: the frozen IDM labels the agent's own frame triples
   ``o[t-1], o[t], o[t+1]`` with a latent; (latent, action taken) pairs are kept;
3. PPO (:func:`lapo.rl.ppo.ppo_epochs`) on the RL path and value head, each parameter group
   under its own learning-rate warm-up (:func:`group_lr`); the CNN trunk is frozen, so its
   features are computed once per frame during the rollout and reused by every epoch;
4. the decoder is re-initialised and re-fit on all pairs so far, after every update while
   under ``decoder_fit_every_until`` frames and every ``decoder_fit_every`` updates after,
   only between ``decoder_fit_start`` and ``decoder_fit_end`` frames.

Everything else is :mod:`lapo.rl.ppo`'s, shared with ``lapo expert train``, data-parallel
under torchrun the same way; the decoder pairs of every rank's rollouts are gathered to every
rank, which all fit the same decoder (same pairs, same seed). A run folder holds
``policy.safetensors`` + ``config.json`` (kind ``online-agent``: what ``lapo eval`` reads),
``checkpoint.safetensors`` and ``decoder_pairs.safetensors`` (resume), ``metrics.csv`` (the
learning curve) and TensorBoard files in ``tb/``.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from torch import nn

from lapo import distributed
from lapo.checkpoint import CheckpointError, load_tensors
from lapo.config import OnlineConfig
from lapo.envs import NUM_ACTIONS, check_game
from lapo.models.frames import frames_to_float
from lapo.models.policy import OnlineAgent
from lapo.rl.ppo import (
    PPO_COLUMNS,
    PPOBatch,
    PPOEnvs,
    PPOLoss,
    RolloutBuffer,
    checkpoint_due,
    collect_rollout,
    log_update,
    ppo_checkpoint,
    ppo_epochs,
    ppo_run,
    ppo_summary,
)
from lapo.runkinds import ONLINE_AGENT, load_stage2, online_agent_spec
from lapo.runs import Run
from lapo.schedules import linear_ramp
from lapo.stages.decode import fit_decoder

# parameter group -> (frames where its rate leaves 0, frames where it reaches its peak,
# peak as a fraction of the base rate); ../shared/LAPO_NOTES.md
GROUP_SCHEDULES: dict[str, tuple[int, int, float]] = {
    "value_head": (25_000, 50_000, 1 / 4),
    "rl_head": (35_000, 50_000, 1 / 4),
    "rl_fc": (50_000, 200_000, 1 / 10),
}


def group_lr(group: str, frames: int, cfg: OnlineConfig) -> float:
    """Learning rate of ``group`` after ``frames`` env frames: 0, a linear ramp to its peak,
    all times a linear decay to 0 at ``lr_decay_frames``."""
    begin, end, peak = GROUP_SCHEDULES[group]
    ramp = linear_ramp(frames, begin, end)
    decay = 1.0 - linear_ramp(frames, 0, cfg.lr_decay_frames)
    return cfg.learning_rate * peak * ramp * decay


def make_optimizer(agent: OnlineAgent) -> torch.optim.Adam:
    """Adam with one parameter group per schedule; the trunk, latent path and decoder are
    not in it (frozen, or fit by :func:`fit_decoder`)."""
    groups = [
        {"params": list(getattr(agent, name).parameters()), "name": name, "lr": 0.0}
        for name in GROUP_SCHEDULES
    ]
    return torch.optim.Adam(groups, lr=0.0, eps=1e-5)


def decoder_fit_due(update: int, frames: int, cfg: OnlineConfig) -> bool:
    """Whether the decoder is re-fit after update ``update`` (1-based), at ``frames`` frames."""
    if not cfg.decoder_fit_start <= frames <= cfg.decoder_fit_end:
        return False
    return frames <= cfg.decoder_fit_every_until or update % cfg.decoder_fit_every == 0


@torch.no_grad()
def rollout_pairs(
    idm: nn.Module, obs: torch.Tensor, actions: torch.Tensor, dones: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(IDM latent, action taken) for every triple ``o[t-1], o[t], o[t+1]`` of a rollout that
    lies inside one episode.

    ``obs`` uint8 ``(T, N, 64, 64, 3)``, ``actions`` ``(T, N)``, ``dones`` ``(T, N)`` (1 where
    ``obs[t]`` starts a new episode). Returns ``z (M, A)`` float16 and ``a (M,)`` int64, on CPU.
    """
    if obs.shape[0] < 3:
        raise ValueError(f"a rollout needs at least 3 steps for frame triples, got {obs.shape[0]}")
    # window centred at t (1 <= t <= T-2) is valid when neither o[t] nor o[t+1] starts an episode
    valid = (dones[1:-1] == 0) & (dones[2:] == 0)  # (T-2, N)
    t_idx, n_idx = valid.nonzero(as_tuple=True)
    t_idx = t_idx + 1
    zs = []
    for i in range(0, len(t_idx), 1024):
        t, n = t_idx[i : i + 1024], n_idx[i : i + 1024]
        windows = torch.stack([obs[t - 1, n], obs[t, n], obs[t + 1, n]], 1)  # (b, 3, 64, 64, 3)
        zs.append(idm(frames_to_float(windows))[0].to(torch.float16).cpu())
    z = torch.cat(zs) if zs else torch.zeros(0, idm.latent_dim, dtype=torch.float16)
    return z, actions[t_idx, n_idx].cpu()


def ppo_update(
    agent: OnlineAgent,
    optimizer: torch.optim.Optimizer,
    feats: torch.Tensor,
    actions: torch.Tensor,
    logprobs: torch.Tensor,
    advantages: torch.Tensor,
    returns: torch.Tensor,
    frames: int,
    cfg: OnlineConfig,
    rng: np.random.Generator,
) -> tuple[PPOLoss, torch.Tensor]:
    """:func:`lapo.rl.ppo.ppo_epochs` over one rollout of cached trunk features ``(B, F)`` (and
    ``(B,)`` actions, log-probabilities, advantages and returns), each parameter group's rate
    set from :func:`group_lr` at ``frames``. Returns the last minibatch's loss and grad norm.
    """
    for g in optimizer.param_groups:
        g["lr"] = group_lr(g["name"], frames, cfg)
    batch = PPOBatch(feats, actions, logprobs, advantages, returns)
    return ppo_epochs(agent.heads, optimizer, batch, cfg, rng)


class DecoderPairs:
    """The (IDM latent ``(M, A)`` float16, action taken ``(M,)`` int64) pairs of the agent's
    rollouts so far, on CPU: what every decoder fit trains on."""

    FILE = "decoder_pairs.safetensors"

    def __init__(self) -> None:
        self.z: list[torch.Tensor] = []
        self.a: list[torch.Tensor] = []

    @classmethod
    def load(cls, run: Path, count: int) -> DecoderPairs:
        """The first ``count`` pairs saved in ``run``; pairs written after the checkpoint that
        counted them (a kill between the two files) are dropped."""
        pairs = cls()
        if count:
            saved, _ = load_tensors(Path(run) / cls.FILE)
            pairs.add(saved["z"][:count], saved["a"][:count])
        return pairs

    def add(self, z: torch.Tensor, a: torch.Tensor) -> None:
        self.z.append(z)
        self.a.append(a)

    def add_from_every_rank(self, z: torch.Tensor, a: torch.Tensor) -> None:
        """Add this rank's pairs and, under torchrun, every other rank's (gathered in rank
        order): every rank holds every pair, so every rank fits the same decoder."""
        self.add(distributed.gather_rows(z), distributed.gather_rows(a))

    def __bool__(self) -> bool:
        """Whether any rollout added its pairs (even none)."""
        return bool(self.z)

    def count(self) -> int:
        return sum(len(a) for a in self.a)

    def merged(self) -> tuple[torch.Tensor, torch.Tensor]:
        """All pairs as one ``(z, a)``, kept merged."""
        self.z, self.a = [torch.cat(self.z)], [torch.cat(self.a)]
        return self.z[0], self.a[0]

    def save(self, run: Run) -> None:
        if self:
            z, a = self.merged()
            run.save(self.FILE, {"z": z, "a": a})


def refit_decoder(agent: OnlineAgent, pairs: DecoderPairs, cfg: OnlineConfig, fits: int) -> None:
    """Re-initialise the agent's decoder and fit it on every pair so far (fit ``fits``)."""
    z, a = pairs.merged()
    steps = max(1, cfg.decoder_epochs * math.ceil(len(a) / cfg.decoder_batch_size))
    decoder = fit_decoder(
        z,
        a,
        steps,
        cfg.decoder_batch_size,
        cfg.decoder_learning_rate,
        label_smoothing=cfg.label_smoothing,
        seed=cfg.seed * 1_000 + fits,
    )
    agent.decoder.load_state_dict(decoder.state_dict())


# metrics.csv: PPO's columns with the decoder's before fps
ONLINE_COLUMNS = [
    *PPO_COLUMNS[:-1],
    "demonstrator_normalized_return",
    "decoder_pairs",
    "decoder_fits",
    "fps",
]


def load_stage2_run(policy_run: Path, game: str) -> tuple[nn.Module, nn.Module, dict]:
    """The stage-2 run ``policy_run``'s ``(latent policy, IDM, config)``; refuses another game."""
    check_game(game)
    policy, idm, stage2 = load_stage2(policy_run)
    if stage2.get("game") and stage2["game"] != game:
        raise CheckpointError(
            f"stage-2 run {policy_run} was trained on {stage2['game']}, not {game}: "
            f"use --env {stage2['game']}"
        )
    return policy, idm, stage2


def decode_online(
    cfg: OnlineConfig,
    policy_run: Path,
    game: str,
    out: Path,
    progress: bool = True,
    command: str | None = None,
) -> dict:
    """Online decoding of stage-2 run ``policy_run`` in ``game`` into ``out`` (resumable)."""
    policy, idm, stage2 = load_stage2_run(policy_run, game)
    demo_return = stage2.get("demonstrator_return")
    compare = {"policy": str(policy_run), "env": game}
    run = ppo_run(out, ONLINE_AGENT, cfg, f"online {game}", progress, ONLINE_COLUMNS, compare)
    with run:
        torch.manual_seed(cfg.seed)
        rng = np.random.default_rng(cfg.seed)
        agent = OnlineAgent.from_latent_policy(policy, NUM_ACTIONS)
        agent = agent.to(run.device, memory_format=torch.channels_last)
        idm = idm.to(run.device).eval()
        optimizer = make_optimizer(agent)
        start = run.resume(agent, optimizer, rng, counter="update")
        fits = run.meta.get("fits", 0)
        pairs = DecoderPairs.load(run.out, run.meta.get("pairs", 0))
        config = dict(
            network=online_agent_spec(policy.latent_dim, policy.width, policy.arch),
            game=game,
            demonstrator_return=demo_return,
            data_policy=stage2.get("data_policy"),
            policy_run=str(policy_run),
            command=command,
        )
        run.write_config("online", **config, frames_trained=run.meta.get("frames"))
        with PPOEnvs(game, cfg, run.device, start, run.meta) as envs:
            buf = RolloutBuffer(cfg.num_steps, envs.num_envs, run.device, agent.rl_fc.in_features)
            for update in range(start, cfg.num_updates):
                frames_before, frames = update * cfg.batch_size, (update + 1) * cfg.batch_size
                # 1. rollout with the averaged logits; trunk features are cached for PPO
                agent.eval()
                advantages, returns = collect_rollout(agent, envs, buf, cfg)
                # 2. decoder data: the IDM's latents of the agent's own frame triples
                if frames_before < cfg.decoder_fit_end:
                    pairs.add_from_every_rank(*rollout_pairs(idm, buf.obs, buf.actions, buf.dones))
                # 3. PPO on the RL path and value head, over cached features
                agent.train()
                b = buf.batch(advantages, returns)
                loss, grad_norm = ppo_update(
                    agent, optimizer, b.inputs, b.actions, b.logprobs, b.advantages, b.returns,
                    frames_before, cfg, rng,
                )  # fmt: skip
                # 4. re-fit the decoder on every pair so far
                if decoder_fit_due(update + 1, frames, cfg) and pairs:
                    refit_decoder(agent, pairs, cfg, fits)
                    fits += 1
                # 5. logging
                demo_norm = envs.normalized_return(demo_return) if demo_return else math.nan
                scalars = {
                    "charts/demonstrator_normalized_return": demo_norm,
                    "decoder/pairs": pairs.count(),
                    "decoder/fits": fits,
                    **{f"lr/{g['name']}": g["lr"] for g in optimizer.param_groups},
                }
                row = {
                    "demonstrator_normalized_return": demo_norm,
                    "decoder_pairs": pairs.count(),
                    "decoder_fits": fits,
                }
                log_update(run, update + 1, start, envs, loss, grad_norm, scalars, row)
                # 6. checkpoint
                if checkpoint_due(update + 1, cfg):
                    pairs.save(run)
                    ppo_checkpoint(
                        run, update + 1, agent, optimizer, rng, envs, fits=fits, pairs=pairs.count()
                    )
                    run.save("policy.safetensors", agent.state_dict())
                    run.write_config("online", **config, frames_trained=frames)
    return {"out": str(run.out), **ppo_summary(run, cfg, envs, decoder_fits=fits)}
