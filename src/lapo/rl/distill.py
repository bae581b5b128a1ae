"""Demonstrators distilled from a planner: DAgger (Ross, Gordon & Bagnell 2011).

PPO needs tens of millions of frames to learn maze or bigfish with Procgen's networks, far
more than a CPU gives in a session. The planners of :mod:`lapo.evaluation.planner` play them well by
searching the game's own state, but they are no network: they cannot look at a screen alone,
so they cannot be shipped or run as a policy. ``distill_expert`` trains the network a PPO
demonstrator would have (:class:`lapo.models.actor_critic.ActorCritic`, saved in the same
``ppo-expert`` folder, so ``lapo expert package``, ``lapo collect`` and ``lapo eval`` take it
as they take a PPO run) to choose the planner's moves from the screen alone:

1. round 0: the planner plays, with a random action in place of its move at rate ``noise``,
   and every screen is recorded with the planner's moves as its target;
2. each later round: the network plays (sampling), and the screens it reaches are recorded
   with the planner's moves, so it learns to recover from its own mistakes;
3. after each round the network trains ``epochs`` passes over everything recorded so far
   (cross-entropy to the uniform distribution over the planner's shortest-path moves).

A round's frames are kept in ``round_R.safetensors``; the checkpoint is written after each
round, so a killed run resumes at the round it was in.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch.distributions import Categorical

from lapo.checkpoint import load_tensors, save_tensors
from lapo.config import DistillConfig
from lapo.envs import NUM_ACTIONS
from lapo.evaluation.planner import check_planner_game, make_planner, one_game
from lapo.models.actor_critic import ActorCritic
from lapo.rl.expert import network_spec, refuse_other_game
from lapo.runkinds import PPO_EXPERT
from lapo.runs import Run

COLUMNS = ["round", "frames", "episodes", "mean_return", "player", "loss", "seconds"]
PLANNER = "planner"
NETWORK = "network"


def round_seed(cfg: DistillConfig, rnd: int) -> int:
    """Procgen's seed for round ``rnd``: each round plays its own draw of levels."""
    return (cfg.seed + 1_000_003 * rnd) % 2**31


def record_round(
    model: ActorCritic | None, cfg: DistillConfig, rnd: int, run: Run, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, list[float]]:
    """Play ``cfg.frames_per_round`` frames of fresh levels: the planner (with noise) when
    ``model`` is None, else the network, sampling. Returns the screens ``(N, 64, 64, 3)``
    uint8, the targets ``(N, 15)`` (uniform over the planner's moves) and the returns of the
    episodes that ended."""
    env = one_game(cfg.game, cfg.distribution_mode, round_seed(cfg, rnd))
    planner = make_planner(env, cfg.game)
    screens, targets, returns = [], [], []
    episode_return, shown = 0.0, 0
    try:
        while len(screens) < cfg.frames_per_round:
            _, obs, _ = env.observe()
            screen = obs["rgb"][0]
            moves = planner.moves(screen)
            if moves:  # a screen from which the reward cannot be reached teaches nothing
                target = np.zeros(NUM_ACTIONS, np.float32)
                target[moves] = 1.0 / len(moves)
                screens.append(screen.copy())
                targets.append(target)
            if model is None:
                noisy = not moves or rng.random() < cfg.noise
                action = rng.integers(NUM_ACTIONS) if noisy else rng.choice(moves)
            else:
                with torch.no_grad():
                    logits, _ = model(torch.from_numpy(screen[None]).to(run.device))
                action = int(Categorical(logits=logits.float().cpu()).sample())
            env.act(np.array([action], np.int32))
            reward, _, first = env.observe()
            episode_return += float(reward[0])
            if first[0]:
                returns.append(episode_return)
                episode_return = 0.0
                planner.new_level()
            if len(screens) - shown >= 200:
                run.advance(len(screens) - shown)
                shown = len(screens)
    finally:
        if hasattr(env, "close"):
            env.close()
    run.advance(len(screens) - shown)
    return np.stack(screens), np.stack(targets), returns


def train_epochs(
    model: ActorCritic,
    optimizer: torch.optim.Optimizer,
    screens: np.ndarray,
    targets: np.ndarray,
    cfg: DistillConfig,
    device: torch.device,
) -> float:
    """``cfg.epochs`` passes of soft-target cross-entropy over ``screens`` ``(N, 64, 64, 3)``
    and ``targets`` ``(N, 15)``; returns the last pass's mean loss."""
    model.train()
    total = 0.0
    for _ in range(cfg.epochs):
        order = torch.randperm(len(screens)).numpy()
        total = 0.0
        for i in range(0, len(order), cfg.batch_size):
            idx = np.sort(order[i : i + cfg.batch_size])
            logits, _ = model(torch.from_numpy(screens[idx]).to(device))  # (b, 15)
            target = torch.from_numpy(targets[idx]).to(device)  # (b, 15)
            loss = -(torch.log_softmax(logits.float(), -1) * target).sum(-1).mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += loss.item() * len(idx)
        total /= len(order)
    model.eval()
    return total


def distill_expert(
    cfg: DistillConfig, out: Path, progress: bool = True, command: str | None = None
) -> dict:
    """Train a demonstrator network by DAgger on the planner's moves into ``out``; resumes
    from ``out/checkpoint.safetensors``. Returns a summary of the last round."""
    check_planner_game(cfg.game)
    run = Run(
        out,
        PPO_EXPERT,
        cfg,
        columns=COLUMNS,
        total=cfg.rounds * cfg.frames_per_round,
        unit="frame",
        per_step=cfg.frames_per_round,
        desc=f"distill {cfg.game}",
        resumable=cfg.resumable(),
        progress=progress,
        shared={},
    )
    with run:
        torch.manual_seed(cfg.seed)
        rng = np.random.default_rng(cfg.seed)
        model = ActorCritic(NUM_ACTIONS, cfg.arch, cfg.width, cfg.obs_size, cfg.grey)
        model = model.to(run.device, memory_format=torch.channels_last)
        optimizer = torch.optim.Adam(model.parameters(), lr=cfg.learning_rate)
        refuse_other_game(run.ckpt, cfg.game)
        start = run.resume(model, optimizer, rng, counter="round")
        spec = dict(network_spec(cfg), trained_by="distill")
        done = start * cfg.frames_per_round
        run.write_config("distill", **spec, command=command, frames_trained=done)
        shards = [load_tensors(run.out / f"round_{r}.safetensors")[0] for r in range(start)]
        screens = [s["screens"].numpy() for s in shards]
        targets = [s["targets"].numpy() for s in shards]
        row: dict = {}
        model.eval()
        for rnd in range(start, cfg.rounds):
            player = PLANNER if rnd == 0 else NETWORK
            s, t, returns = record_round(None if rnd == 0 else model, cfg, rnd, run, rng)
            save_tensors(
                run.out / f"round_{rnd}.safetensors",
                {"screens": torch.from_numpy(s), "targets": torch.from_numpy(t)},
            )
            screens.append(s)
            targets.append(t)
            loss = train_epochs(
                model, optimizer, np.concatenate(screens), np.concatenate(targets), cfg, run.device
            )
            mean_return = float(np.mean(returns)) if returns else float("nan")
            frames = (rnd + 1) * cfg.frames_per_round
            row = dict(
                round=rnd + 1,
                frames=frames,
                episodes=len(returns),
                mean_return=round(mean_return, 3),
                player=player,
                loss=round(loss, 4),
                seconds=round(run.wall_seconds(), 1),
            )
            run.row(row)
            run.scalars(frames, {f"return/{player}": mean_return, "loss/cross_entropy": loss})
            run.checkpoint(rnd + 1, model, optimizer, rng, counter="round")
            run.save("policy.safetensors", model.state_dict())
            run.write_config("distill", **spec, command=command, frames_trained=frames)
    return {"game": cfg.game, "out": str(run.out), "rounds": cfg.rounds, **row}
