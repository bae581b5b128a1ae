"""Policies that act in Procgen: a uniform-random policy and saved PPO demonstrators.

Every policy maps uint8 observations ``(N, 64, 64, 3)`` to integer actions ``(N,)``.
``load_policy("random", game)``, ``load_policy("demonstrator", game)`` (the demonstrator shipped
with lapo for that game), ``load_policy("planner", "maze")`` (:mod:`lapo.evaluation.planner`, which
plays by searching the game's state) or ``load_policy(DIR)`` gives one; ``DIR`` is a folder with
``config.json`` + ``policy.safetensors`` (what ``lapo expert train``, ``lapo decode`` and
``lapo baseline`` write).
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from torch.distributions import Categorical

from lapo.checkpoint import CheckpointError, load_tensors, read_json
from lapo.envs import NUM_ACTIONS, ProcgenVecEnv
from lapo.models.actor_critic import ActorCritic
from lapo.runkinds import POLICY_KINDS, PPO_EXPERT, load_policy_run

DEMONSTRATORS_DIR = Path(__file__).parent.parent / "demonstrators"


PLANNER = "planner"
"""``load_policy``'s name for the planners of :mod:`lapo.evaluation.planner` (maze, bigfish)."""


def shipped_demonstrators() -> dict[str, Path]:
    """The demonstrators that ship with lapo: game -> folder (policy, config, manifest)."""
    if not DEMONSTRATORS_DIR.is_dir():
        return {}
    return {
        p.name: p
        for p in sorted(DEMONSTRATORS_DIR.iterdir())
        if (p / "policy.safetensors").is_file() and (p / "config.json").is_file()
    }


def attach(policy: Policy, env: ProcgenVecEnv) -> None:
    """Give ``env`` (just reset) to a policy that reads the game's state, not only the screen
    (the planner); other policies need nothing."""
    hook = getattr(policy, "attach", None)
    if hook is not None:
        hook(env)


class Policy(Protocol):
    name: str
    game: str | None
    # optional: ``per_screen = True`` where each environment's action depends on its own
    # screen alone, so evaluation may ask only for the environments still playing

    def act(self, obs: np.ndarray) -> np.ndarray:
        """uint8 ``(N, 64, 64, 3)`` -> int64 actions ``(N,)``."""
        ...

    def describe(self) -> dict:
        """A JSON-able description, recorded in dataset manifests and eval output."""
        ...


class RandomPolicy:
    """Uniformly random actions; the 0 of normalised return."""

    per_screen = True

    def __init__(self, game: str | None = None, seed: int = 0) -> None:
        self.name = "random"
        self.game = game
        self.rng = np.random.default_rng(seed)

    def act(self, obs: np.ndarray) -> np.ndarray:
        return self.rng.integers(0, NUM_ACTIONS, size=len(obs))

    def describe(self) -> dict:
        return {"kind": "random"}


class ExpertPolicy:
    """A PPO demonstrator saved by ``lapo expert train``; samples from its action distribution."""

    per_screen = True

    def __init__(self, path: Path, seed: int = 0, device: str = "cpu") -> None:
        self.path = Path(path)
        self.config = read_json(self.path / "config.json")
        if self.config.get("kind") != PPO_EXPERT:
            raise CheckpointError(
                f"{self.path / 'config.json'} is not a lapo policy config (kind "
                f"{self.config.get('kind')!r}); point --policy to a folder from 'lapo expert train'"
            )
        self.name = str(self.path)
        self.game = self.config["game"]
        self.device = torch.device(device)
        c = self.config
        # configs written before obs_size and grey existed: the network saw 64x64 RGB
        self.input = {"obs_size": c.get("obs_size", 64), "grey": c.get("grey", False)}
        model = ActorCritic(c["num_actions"], c["arch"], c["width"], **self.input)
        self.model = model.to(self.device)
        tensors, _ = load_tensors(self.path / "policy.safetensors")
        try:
            self.model.load_state_dict(tensors)
        except RuntimeError as e:
            raise CheckpointError(
                f"{self.path / 'policy.safetensors'} does not match its config.json: "
                f"{str(e).splitlines()[0]}"
            ) from None
        self.model.eval()
        self.generator = torch.Generator().manual_seed(seed)

    @torch.no_grad()
    def act(self, obs: np.ndarray) -> np.ndarray:
        logits, _ = self.model(torch.from_numpy(np.ascontiguousarray(obs)).to(self.device))
        probs = Categorical(logits=logits.float().cpu()).probs
        return torch.multinomial(probs, 1, generator=self.generator).squeeze(1).numpy()

    def describe(self) -> dict:
        return {
            "kind": PPO_EXPERT,
            "path": str(self.path),
            "game": self.game,
            "arch": self.config["arch"],
            "width": self.config["width"],
            **self.input,
            "frames_trained": self.config.get("frames_trained"),
        }


class NetworkPolicy:
    """A policy network of stages 2-3 or the baselines (a :mod:`lapo.models.policy` network
    that maps observations to action logits), sampling from its action distribution."""

    per_screen = True
    KINDS = POLICY_KINDS

    def __init__(self, path: Path, seed: int = 0, device: str = "cpu") -> None:
        self.path = Path(path)
        self.device = torch.device(device)
        self.model, self.config = load_policy_run(self.path, self.KINDS)
        self.model.to(self.device)
        self.name = str(self.path)
        self.game = self.config.get("game")
        self.generator = torch.Generator().manual_seed(seed)

    @torch.no_grad()
    def act(self, obs: np.ndarray) -> np.ndarray:
        logits = self.model(torch.from_numpy(np.ascontiguousarray(obs)).to(self.device))
        probs = Categorical(logits=logits.float().cpu()).probs
        return torch.multinomial(probs, 1, generator=self.generator).squeeze(1).numpy()

    def describe(self) -> dict:
        return {
            "kind": self.config["kind"],
            "path": str(self.path),
            "game": self.game,
            **{k: self.config[k] for k in ("baseline", "labels") if k in self.config},
        }


def load_policy(spec: str | Path, game: str | None = None, seed: int = 0) -> Policy:
    """``"random"``, ``"demonstrator"``, ``"planner"`` (maze, bigfish) or a policy folder; raises
    :class:`CheckpointError` (:class:`lapo.envs.procgen.EnvError` for a game the planner
    cannot search)."""
    if str(spec) == "random":
        return RandomPolicy(game, seed)
    if str(spec) == PLANNER:
        from lapo.evaluation.planner import PlannerPolicy, check_planner_game

        return PlannerPolicy(check_planner_game(str(game)), seed)
    if str(spec) == "demonstrator":
        shipped = shipped_demonstrators()
        if game not in shipped:
            raise CheckpointError(
                f"no demonstrator ships for {game!r} (shipped: {', '.join(shipped) or 'none'}); "
                "train one with 'lapo expert train' and pass its folder"
            )
        return ExpertPolicy(shipped[game], seed)
    path = Path(spec)
    if not path.is_dir():
        raise CheckpointError(
            f"policy {spec!r} is neither 'random' nor a folder; pass a folder written by "
            "'lapo expert train', 'lapo decode' or 'lapo baseline' (config.json + "
            "policy.safetensors)"
        )
    if not (path / "config.json").is_file() or not (path / "policy.safetensors").is_file():
        raise CheckpointError(
            f"{path} has no config.json + policy.safetensors; pass a folder written by "
            "'lapo expert train'"
        )
    kind = read_json(path / "config.json").get("kind")
    if kind == "latent-policy":
        raise CheckpointError(
            f"{path} is a stage-2 latent policy: it outputs latent actions, not actions; "
            "decode it with 'lapo decode offline' or 'lapo decode online' and evaluate that"
        )
    policy: Policy = (
        NetworkPolicy(path, seed) if kind in NetworkPolicy.KINDS else ExpertPolicy(path, seed)
    )
    if game is not None and policy.game != game:
        raise CheckpointError(f"policy {path} plays {policy.game}, not {game}: pick its game")
    return policy
