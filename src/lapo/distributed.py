"""Data-parallel training over the processes ``torchrun`` starts: the one module that knows.

``torchrun --nproc-per-node N -m lapo lam train ...`` starts N copies of the command with
``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` and a rendezvous in the environment; :func:`init`
reads them (nothing else is needed across machines) and joins the process group: NCCL on
CUDA, gloo on CPU (and where several processes share one GPU, which NCCL refuses).

The design keeps N processes exactly equivalent to one process with the same global batch:

- every rank draws the *same* global batch from the same seeded generator and keeps its own
  contiguous slice (:func:`local`), so no window is used twice in a step and the slices put
  together are the one-process batch; per-sample randomness (augmentation shifts, the IDM's
  lookahead) is drawn for the global batch and sliced the same way (:func:`draw_local`);
- gradients are averaged (:func:`average_gradients`): the mean of the slices' mean losses is
  the global batch's mean loss;
- batch statistics are reduced over the global batch: the quantiser's EMA counts and sums,
  its dead-code restarts (picked from the gathered global batch with the same RNG on every
  rank) and batch norm (:func:`global_sum`, differentiable);
- evaluation runs identically on every rank; rank 0 alone writes files and logs.

Without torchrun (``WORLD_SIZE`` unset or 1) every function here is the identity or a no-op.
"""

from __future__ import annotations

import atexit
import importlib
import json
import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar

import torch
import torch.distributed as dist

from lapo.errors import ConfigError, LapoError

T = TypeVar("T")
BACKEND_ENV = "LAPO_DIST_BACKEND"
"""Environment variable that overrides the backend (nccl or gloo)."""


@dataclass(frozen=True)
class Dist:
    """This process's place among the ranks (``rank 0 of 1`` without torchrun)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        """Rank 0: the process that writes files and logs."""
        return self.rank == 0


def launched() -> bool:
    """Whether torchrun started this process as one of several."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_size() -> int:
    """Processes training together (1 without torchrun)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def current() -> Dist:
    """This process's :class:`Dist` (rank 0 of 1 before :func:`init` or without torchrun)."""
    if not active():
        return Dist()
    return Dist(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)))


def device_for(name: str) -> torch.device:
    """``auto`` -> CUDA when available, else CPU; a bare ``cuda`` is this process's GPU
    (``cuda:LOCAL_RANK``, wrapping round when there are more processes than GPUs)."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cuda" and device.index is None:
        if not torch.cuda.is_available():
            raise ConfigError("--device cuda: no CUDA GPU is visible; use --device cpu or auto")
        local = int(os.environ.get("LOCAL_RANK", 0))
        device = torch.device("cuda", local % torch.cuda.device_count())
    return device


def _backend(device: torch.device) -> str:
    if os.environ.get(BACKEND_ENV):
        return os.environ[BACKEND_ENV]
    if device.type != "cuda":
        return "gloo"
    # NCCL refuses two ranks on one GPU; gloo moves CUDA tensors through the host instead
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", os.environ.get("WORLD_SIZE", 1)))
    return "nccl" if local_world <= torch.cuda.device_count() else "gloo"


def init(device_name: str = "auto") -> tuple[Dist, torch.device]:
    """Join torchrun's process group, once per process; return ``(Dist, this rank's device)``.

    Without torchrun this only resolves the device name (see :func:`device_for`)."""
    device = device_for(device_name)
    if launched() and not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        # torch.optim imports torch._dynamo on first use; imported after the process group
        # exists, it keeps a reference to the group, so destroy_process_group at exit leaves
        # gloo's worker threads running into interpreter finalisation, where the last
        # collective's clean-up needs the GIL and aborts the process ("terminate called
        # without an active exception", about one exit in five under torchrun on CPU).
        # Imported first, nothing holds the group and the threads are joined at exit.
        importlib.import_module("torch._dynamo")

        backend = _backend(device)
        kw = {"device_id": device} if backend == "nccl" else {}
        dist.init_process_group(backend, timeout=timedelta(minutes=30), **kw)
        atexit.register(_shutdown)
    return current(), device


def _shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def split(global_size: int, what: str) -> int:
    """The per-rank share of ``global_size`` (a global batch or environment count); refuses
    sizes the ranks cannot share equally."""
    d = current()
    if global_size % d.world:
        raise ConfigError(
            f"{what} {global_size} does not divide among {d.world} processes; choose a "
            f"multiple of {d.world} (it is the global size, split across processes)"
        )
    return global_size // d.world


def local(x: T, dim: int = 0) -> T:
    """This rank's contiguous slice of a global batch ``x`` (numpy array or tensor) along
    ``dim``: rank r of N keeps the r-th of N equal parts."""
    d = current()
    if d.world == 1:
        return x
    size = x.shape[dim]  # type: ignore[attr-defined]
    if size % d.world:
        raise ConfigError(
            f"a global batch of {size} does not divide among {d.world} processes; choose "
            f"batch sizes that are multiples of {d.world}"
        )
    n = size // d.world
    return x[(slice(None),) * dim + (slice(d.rank * n, (d.rank + 1) * n),)]  # type: ignore[index]


def draw_local(draw: Callable[[int], torch.Tensor], n: int, dim: int = 0) -> torch.Tensor:
    """Per-sample random numbers for this rank's ``n`` samples: ``draw(N * n)`` for the global
    batch (the same on every rank: same RNG state), sliced by :func:`local` along ``dim``. One
    process draws exactly what N processes draw together."""
    return local(draw(n * current().world), dim)


def all_reduce_(t: torch.Tensor) -> torch.Tensor:
    """Sum ``t`` over the ranks, in place (no gradient); returns ``t``."""
    if active():
        dist.all_reduce(t)
    return t


def global_sum(t: torch.Tensor) -> torch.Tensor:
    """``t`` summed over the ranks, differentiable: the backward pass sums each rank's
    gradient, so a loss on global statistics trains every rank's inputs."""
    if not active():
        return t
    return _GlobalSum.apply(t)


class _GlobalSum(torch.autograd.Function):
    """Sum over the ranks; its gradient is the sum of every rank's gradient."""

    @staticmethod
    def forward(ctx: Any, t: torch.Tensor) -> torch.Tensor:  # noqa: ARG004
        out = t.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(out)
        return out

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:  # noqa: ARG004
        grad = grad.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(grad)
        return grad


def batch_var(x: torch.Tensor) -> torch.Tensor:
    """Unbiased variance over the global batch of ``x`` ``(B, ...)`` -> ``(...)``,
    differentiable (``x.var(0)`` in one process)."""
    if not active():
        return x.var(0)
    n = x.shape[0] * dist.get_world_size()
    mean = global_sum(x.sum(0)) / n
    return global_sum((x - mean).pow(2).sum(0)) / max(n - 1, 1)


def gather(t: torch.Tensor, dim: int = 0) -> torch.Tensor:
    """Every rank's ``t`` (same shape) concatenated along ``dim`` in rank order: the global
    batch, when ``t`` is a rank's :func:`local` slice (no gradient)."""
    if not active():
        return t
    mine = t.contiguous().to(_collective_device())  # gloo gathers CPU tensors only
    parts = [torch.empty_like(mine) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, mine)
    return torch.cat(parts, dim).to(t.device)


def gather_rows(t: torch.Tensor) -> torch.Tensor:
    """Every rank's ``t`` concatenated along dim 0 in rank order, where the ranks may hold
    different numbers of rows (same trailing shape; no gradient): e.g. the decoder pairs each
    rank's rollout yields."""
    if not active():
        return t
    dev, world = _collective_device(), dist.get_world_size()
    n = torch.tensor([t.shape[0]], dtype=torch.long, device=dev)
    counts = [torch.zeros_like(n) for _ in range(world)]
    dist.all_gather(counts, n)
    sizes = [int(c.item()) for c in counts]
    if max(sizes) == 0:
        return t
    padded = torch.zeros((max(sizes), *t.shape[1:]), dtype=t.dtype, device=dev)
    padded[: t.shape[0]] = t
    parts = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(parts, padded)
    return torch.cat([p[:s] for p, s in zip(parts, sizes, strict=True)]).to(t.device)


def global_mean(values: Any) -> float:
    """The mean of every rank's ``values`` (floats) put together, NaN where no rank has any:
    one all-reduce of a sum and a count (for log steps)."""
    values = list(values)
    t = torch.tensor([math.fsum(values), len(values)], dtype=torch.float64)
    if active():
        t = t.to(_collective_device())
        dist.all_reduce(t)
        t = t.cpu()
    total, count = t.tolist()
    return total / count if count else math.nan


RANK_SEED_STRIDE = 500_009
"""Seed offset between ranks: rank r's own draws use ``seed + r * RANK_SEED_STRIDE``."""


def rank_seed(seed: int) -> int:
    """This rank's own seed for draws the ranks must not share, such as the levels its
    environments play: ``seed`` on rank 0 (and in one process), offset on the others."""
    return seed + current().rank * RANK_SEED_STRIDE


def rank_generator(seed: int, device: torch.device) -> torch.Generator | None:
    """A random stream of this rank's own (seeded :func:`rank_seed`), for per-rank draws
    such as the actions sampled in its environments; None in one process, where torch's
    global generator draws them as it always has."""
    if not active():
        return None
    return torch.Generator(device=device).manual_seed(rank_seed(seed))


def average_gradients(params: Any) -> None:
    """Average the gradients of ``params`` over the ranks (one flat all-reduce)."""
    if not active():
        return
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads]).div_(dist.get_world_size())
    dist.all_reduce(flat)
    offset = 0
    for g in grads:
        g.copy_(flat[offset : offset + g.numel()].view_as(g))
        offset += g.numel()


def mean_floats(values: dict[str, Any]) -> dict[str, float]:
    """Scalars (tensors or numbers) averaged over the ranks, as floats: one host
    synchronisation, for log steps only."""
    if not values:
        return {}
    names = list(values)
    t = torch.stack([torch.as_tensor(values[k], dtype=torch.float64).cpu() for k in names])
    if active():
        t = t.to(_collective_device())
        dist.all_reduce(t)
        t = t.cpu() / dist.get_world_size()
    return dict(zip(names, t.tolist(), strict=True))


def _collective_device() -> torch.device:
    """Where tensors for a collective must live: the rank's GPU for NCCL, else the CPU."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def agree(value: float) -> float:
    """Rank 0's ``value`` on every rank (e.g. a clock reading that decides when to stop)."""
    if not active():
        return value
    t = torch.tensor([value], dtype=torch.float64, device=_collective_device())
    dist.broadcast(t, 0)
    return float(t.item())


def same_everywhere(value: Any) -> bool:
    """Whether every rank holds rank 0's JSON-able ``value`` (the same answer on every rank)."""
    if not active():
        return True
    differs = value != on_main(lambda: value)
    return mean_floats({"differs": float(differs)})["differs"] == 0


def barrier() -> None:
    if active():
        dist.barrier()


def on_main(fn: Callable[[], T]) -> T:
    """Run ``fn`` on rank 0 alone (the others wait) and return its JSON-able result on every
    rank: for work done once, such as a file every rank then reads. An error on rank 0 is
    raised on every rank (as a :class:`LapoError` with its message on the others)."""
    if not active():
        return fn()
    main = current().main
    result: Any = None
    error: BaseException | None = None
    if main:
        try:
            result = {"ok": fn()}
        except Exception as e:  # every rank must hear of it, or the others wait forever
            error, result = e, {"error": str(e)}
    reply = _broadcast_json(result)
    if error is not None:
        raise error
    if "error" in reply:
        raise LapoError(f"rank 0 failed: {reply['error']}")
    return reply["ok"]


def _broadcast_json(obj: Any) -> Any:
    """Rank 0's JSON-able ``obj`` on every rank (sent as UTF-8 bytes: nothing is pickled)."""
    main = current().main
    data = json.dumps(obj).encode() if main else b""
    size = torch.tensor([len(data)], dtype=torch.long, device=_collective_device())
    dist.broadcast(size, 0)
    buf = torch.zeros(int(size.item()), dtype=torch.uint8, device=_collective_device())
    if main:
        buf.copy_(torch.frombuffer(bytearray(data), dtype=torch.uint8))
    dist.broadcast(buf, 0)
    return json.loads(bytes(buf.cpu().tolist()).decode())
