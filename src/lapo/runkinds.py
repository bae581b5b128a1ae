"""Run kinds: what each kind of run folder is, how its network is specified, how it is read.

Every run folder holds ``config.json`` with a ``kind``:

- ``lam`` (stage 1, :mod:`lapo.stages.lam`): ``lam.safetensors`` (:func:`load_lam`).
- ``latent-policy`` (stage 2, :mod:`lapo.stages.bc`): ``policy.safetensors`` + ``idm.safetensors``
  (+ ``action_head.safetensors`` when stage 1 was trained with labels).
- ``action-policy`` (baselines (a) and (b), :mod:`lapo.stages.baselines`), ``decoded-policy``
  (offline decoding), ``online-agent`` (online decoding): ``policy.safetensors``, a network
  that maps observations to action logits (:data:`POLICY_KINDS`).
- ``ppo-expert`` (``lapo expert train``, baseline (c)): an actor-critic.

A policy network is stored as a JSON spec ``{"class": kind, **constructor arguments}`` that
:func:`lapo.models.policy.build_network` builds; one function here writes each spec. The
demonstrator's mean return travels from the dataset's manifest into every policy run's
config by :func:`data_fields` and is read back by :func:`demonstrator_return_of`.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from lapo.checkpoint import CheckpointError, load_tensors, read_json
from lapo.config import LAMConfig, config_from_dict
from lapo.models.idm import IDM, build_idm
from lapo.models.lam import LatentActionModel
from lapo.models.policy import LatentPolicy, build_network

LAM = "lam"
LATENT_POLICY = "latent-policy"
ACTION_POLICY = "action-policy"
DECODED_POLICY = "decoded-policy"
ONLINE_AGENT = "online-agent"
PPO_EXPERT = "ppo-expert"
ACTION_HEAD_FILE = "action_head.safetensors"  # stage 1's latent -> action head, in stage 2's run
POLICY_KINDS = (DECODED_POLICY, ACTION_POLICY, ONLINE_AGENT)  # networks that output actions


# -- network specs ---------------------------------------------------------------------------
def with_arch(spec: dict, arch: str) -> dict:
    """``spec`` with its encoder named where it is not the IMPALA-CNN (a spec without
    ``arch``, every one written before the option, builds the IMPALA-CNN)."""
    return spec if arch == "impala" else {**spec, "arch": arch}


def latent_policy_spec(latent_dim: int, width: int, arch: str = "impala") -> dict:
    """Stage 2's :class:`~lapo.models.policy.LatentPolicy`."""
    return with_arch({"class": LATENT_POLICY, "latent_dim": int(latent_dim), "width": width}, arch)


def decoded_policy_spec(
    latent_dim: int, width: int, decoder_skip: bool = False, arch: str = "impala"
) -> dict:
    """Offline decoding's :class:`~lapo.models.policy.DecodedPolicy` (``decoder_skip``: its
    decoder has the linear path that starts from stage 1's action head)."""
    spec = {"class": DECODED_POLICY, "latent_dim": int(latent_dim), "width": width}
    return with_arch({**spec, "decoder_skip": True} if decoder_skip else spec, arch)


def online_agent_spec(latent_dim: int, width: int, arch: str = "impala") -> dict:
    """Online decoding's :class:`~lapo.models.policy.OnlineAgent`."""
    return with_arch({"class": ONLINE_AGENT, "latent_dim": int(latent_dim), "width": width}, arch)


def action_policy_spec(width: int, arch: str = "impala") -> dict:
    """The baselines' :class:`~lapo.models.policy.ActionPolicy`."""
    return with_arch({"class": ACTION_POLICY, "width": width}, arch)


# -- what a policy run records of its data ---------------------------------------------------
def data_fields(manifest: dict) -> dict:
    """The game, the demonstrator's mean return and the data's policy, from a dataset's
    manifest: what every policy run's ``config.json`` records of the data it learnt from."""
    return {
        "game": manifest.get("game"),
        "demonstrator_return": manifest.get("policy_mean_return"),
        "data_policy": manifest.get("policy"),
    }


def demonstrator_return_of(run: str | Path) -> float | None:
    """The mean return of the demonstrator whose data trained the policy run ``run``, or
    None (not a run folder, or no return recorded)."""
    path = Path(run)
    if not (path / "config.json").is_file():
        return None
    ret = read_json(path / "config.json").get("demonstrator_return")
    return float(ret) if ret is not None else None


# -- reading run folders ---------------------------------------------------------------------
def read_run_config(run: Path, kinds: tuple[str, ...], what: str = "") -> dict:
    """``run``'s ``config.json``, after checking its kind is one of ``kinds``; ``what`` says
    what the caller needs (default: a run of the first kind)."""
    run = Path(run)
    what = what or f"a {' or '.join(kinds)} run"
    if not (run / "config.json").is_file():
        raise CheckpointError(f"{run} has no config.json: pass {what}")
    config = read_json(run / "config.json")
    if config.get("kind") not in kinds:
        raise CheckpointError(f"{run} is a {config.get('kind')!r} run; this needs {what}")
    return config


def load_weights(model: nn.Module, path: Path) -> nn.Module:
    """Load ``path``'s tensors into ``model``; a mismatch is a :class:`CheckpointError`."""
    tensors, _ = load_tensors(path)
    try:
        model.load_state_dict(tensors)
    except RuntimeError as e:
        raise CheckpointError(
            f"{path} does not match its config.json: {str(e).splitlines()[0]}"
        ) from None
    return model


def load_policy_run(run: Path, kinds: tuple[str, ...]) -> tuple[nn.Module, dict]:
    """A trained policy network (eval mode) and its config; ``kinds`` are the accepted kinds."""
    config = read_run_config(run, kinds)
    model = load_weights(build_network(config["network"]), Path(run) / "policy.safetensors")
    return model.eval(), config


def lam_config_from_dict(d: dict, where: str = "") -> LAMConfig:
    """The :class:`LAMConfig` that ``dataclasses.asdict`` turned into ``d`` (a run's ``lam``
    section; :func:`lapo.config.config_from_dict`, which fills the defaults of later fields)."""
    return config_from_dict(LAMConfig, d, where)


def load_lam(run: Path, device: str = "cpu") -> tuple[LatentActionModel, dict]:
    """Load a trained stage-1 model (eval mode) and its run config from ``run``."""
    run = Path(run)
    config = read_run_config(run, (LAM,), "a stage-1 run")
    model = LatentActionModel(lam_config_from_dict(config["lam"]))
    tensors, _ = load_tensors(run / "lam.safetensors")
    model.load_state_dict(tensors)
    return model.to(device, memory_format=torch.channels_last).eval(), config


def load_stage2(run: Path) -> tuple[LatentPolicy, IDM, dict]:
    """A stage-2 run's latent policy, its frozen IDM (both eval mode, CPU) and config."""
    policy, config = load_policy_run(run, (LATENT_POLICY,))
    assert isinstance(policy, LatentPolicy)
    idm = build_idm(lam_config_from_dict(config["lam"]))
    load_weights(idm, Path(run) / "idm.safetensors")
    return policy, idm.eval(), config


def load_action_head(run: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """Stage 1's action head ``(weight (K, A), bias (K,))`` kept in stage-2 run ``run``; a
    stage-1 run trained without ``--labels`` has none (one clear error)."""
    path = Path(run) / ACTION_HEAD_FILE
    if not path.is_file():
        raise CheckpointError(
            f"stage-2 run {run} has no stage-1 action head: its stage 1 was trained without "
            "--labels; train stage 1 with --labels K or use --decoder-init fresh"
        )
    tensors, _ = load_tensors(path)
    return tensors["weight"], tensors["bias"]
