"""Checkpoints: safetensors for tensors, JSON for everything else, written atomically.

Nothing here unpickles: a checkpoint is a ``.safetensors`` file whose header metadata holds
one JSON document (step, config, optimiser hyperparameters, counters), so a file a user hands
us can only ever yield tensors and JSON. Every write goes to a temporary file in the same
folder and is then renamed over the target, so a kill never leaves a half-written file.
"""

from __future__ import annotations

import functools
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from lapo.errors import LapoError

_META_KEY = "lapo"


class CheckpointError(LapoError, ValueError):
    """A checkpoint or policy file is missing or unreadable; the message says what to do."""


@functools.cache
def _umask() -> int:
    """The process's umask (read once: setting it to read it is not thread-safe)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file and a rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        # mkstemp makes the file private (0600); give it the mode a plain open() would
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def remove_stale_temporaries(folder: Path) -> list[Path]:
    """Delete the temporary files our atomic writers leave when killed mid-write (SIGKILL
    cannot be caught); returns what was removed. Call only where no writer is running."""
    removed = []
    for p in Path(folder).glob(".*.tmp"):
        if p.is_file():
            p.unlink()
            removed.append(p)
    return removed


def write_json(path: Path, obj: Any) -> None:
    """Write ``obj`` as indented JSON to ``path``, atomically."""
    atomic_write_bytes(Path(path), (json.dumps(obj, indent=2, sort_keys=False) + "\n").encode())


def read_json(path: Path) -> Any:
    """Read a JSON file, turning a missing or broken file into a :class:`CheckpointError`."""
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{path} does not exist") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path} is not valid JSON ({e}); restore or regenerate it") from None


def save_tensors(path: Path, tensors: dict[str, torch.Tensor], meta: dict | None = None) -> None:
    """Save ``tensors`` (and JSON-able ``meta`` in the header) to ``path`` atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
        save_file(tensors, tmp, metadata={_META_KEY: json.dumps(meta or {})})
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_tensors(path: Path) -> tuple[dict[str, torch.Tensor], dict]:
    """Load ``(tensors, meta)`` from a file written by :func:`save_tensors`."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path} does not exist")
    try:
        tensors = load_file(str(path))
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            header = f.metadata() or {}
        meta = json.loads(header.get(_META_KEY, "{}"))
    except (SafetensorError, OSError, json.JSONDecodeError, ValueError) as e:
        raise CheckpointError(
            f"{path} is not a readable safetensors file ({e}); delete it or point to another"
        ) from None
    return tensors, meta


def optimizer_to_flat(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    """Split an optimiser's state into tensors (``optim/<param>/<name>``) and JSON."""
    sd = opt.state_dict()
    tensors, scalars = {}, {}
    for pid, st in sd["state"].items():
        for name, v in st.items():
            if torch.is_tensor(v):
                tensors[f"optim/{pid}/{name}"] = v
            else:
                scalars[f"{pid}/{name}"] = v
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def optimizer_from_flat(
    opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], meta: dict
) -> None:
    """Load into ``opt`` the state that :func:`optimizer_to_flat` produced."""
    state: dict[int, dict] = {}
    for key, v in tensors.items():
        if key.startswith("optim/"):
            _, pid, name = key.split("/", 2)
            state.setdefault(int(pid), {})[name] = v
    for key, v in meta.get("scalars", {}).items():
        pid, name = key.split("/", 1)
        state.setdefault(int(pid), {})[name] = v
    # hyperparameters from the checkpoint; the implementation (fused on CUDA or not) as now
    groups = [
        {**saved, **{k: now[k] for k in _IMPLEMENTATION if k in now}}
        for saved, now in zip(meta["param_groups"], opt.param_groups, strict=False)
    ]
    opt.load_state_dict({"state": state, "param_groups": groups})


_IMPLEMENTATION = ("fused", "foreach", "capturable")
"""Optimiser settings that choose a kernel, not the maths: a run resumed on another device
keeps its own."""


def refuse_changed_settings(
    ckpt: Path, saved: dict, now: dict, may_change: tuple[str, ...] = ()
) -> None:
    """Raise :class:`CheckpointError` naming the settings in which the run that wrote ``ckpt``
    (``saved``) differs from this one (``now``), apart from those a resumed run ``may_change``."""
    keys = (set(saved) | set(now)) - set(may_change)
    changed = sorted(k for k in keys if saved.get(k) != now.get(k))
    if changed:
        raise CheckpointError(
            f"{ckpt} was written with other settings ({', '.join(changed)}); resume with the "
            "same options or use another --out"
        )


def training_state(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    rng: np.random.Generator,
    **meta: Any,
) -> tuple[dict[str, torch.Tensor], dict]:
    """Everything a training loop needs to resume, as ``(tensors, meta)`` for :func:`save_tensors`.

    Tensors: the model (``model/...``), the optimiser (``optim/...``) and torch's RNG;
    meta: the optimiser's hyperparameters, numpy's RNG state and the caller's ``meta``.
    """
    opt_tensors, opt_meta = optimizer_to_flat(optimizer)
    tensors = {f"model/{k}": v for k, v in model.state_dict().items()}
    tensors.update(opt_tensors)
    tensors["rng/torch"] = torch.get_rng_state()
    return tensors, {**meta, "optimizer": opt_meta, "numpy_rng": rng.bit_generator.state}


def restore_training_state(
    tensors: dict[str, torch.Tensor],
    meta: dict,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    rng: np.random.Generator,
) -> None:
    """Load into ``model``, ``optimizer``, torch's RNG and ``rng`` what :func:`training_state` saved."""
    model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model/")})
    optimizer_from_flat(optimizer, tensors, meta["optimizer"])
    torch.set_rng_state(tensors["rng/torch"])
    rng.bit_generator.state = meta["numpy_rng"]
