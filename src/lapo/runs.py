"""The run harness: what every iterative training loop does around its steps, done once.

A run is a folder. :class:`Run` creates it (clearing temporaries a killed run left), sets
torch's threads and device, saves the run's config as ``config.json``, resumes from
``checkpoint.safetensors`` (refusing settings a resumed run may not change), logs scalars to
TensorBoard (``tb/``) and rows to ``metrics.csv``, shows a progress bar with rate and ETA,
writes checkpoints atomically and closes everything on the way out, killed or not. Stage 1
(:func:`lapo.stages.lam.train_lam`) reads::

    run = Run(out, "lam", cfg, columns=LAM_COLUMNS, total=cfg.steps, resumable=cfg.resumable())
    with run:
        model = run.prepare(LatentActionModel(cfg), "idm.encoder", "world_model")
        optimizer = run.optimizer(torch.optim.Adam, model.parameters(), lr=cfg.learning_rate)
        start = run.resume(model, optimizer, rng)
        run.write_config("lam", ...)
        for step in range(start, cfg.steps):
            ...
            run.scalars(done, {"train/wm_loss": ...})   # TensorBoard
            run.row({"step": done, ...})                  # metrics.csv
            run.checkpoint(done, model, optimizer, rng)
            run.advance()                                 # the progress bar

The step-based loops use it: stage 1, stage 2 and baseline (a)'s and (b)'s BC
(:mod:`lapo.stages.bc`), and every PPO run (:mod:`lapo.rl.ppo`: demonstrators, online decoding,
baseline (c)); their folders hold ``config.json`` (with ``kind``), ``metrics.csv``, ``tb/`` and
``checkpoint.safetensors``. Offline decoding and baseline (b)'s supervised IDM are short fits
that write their results once (``decode.json``, the IDM's safetensors and JSON) without it.

Started by ``torchrun`` (:mod:`lapo.distributed`), a run is data-parallel: the config's
``batch_size`` is the global batch, each rank trains on its slice (:meth:`Run.local`) and
averages gradients (:meth:`Run.backward`); rank 0 alone creates the folder, writes the
config, checkpoints, logs and the progress bar. The GPU fast path is read from the config
too: ``precision`` (:meth:`Run.autocast`), ``channels_last`` and ``compile``
(:meth:`Run.prepare`) and fused Adam on CUDA (:meth:`Run.optimizer`); ``data_on_device`` is
:class:`lapo.data.dataset.DeviceWindows`' to read.
"""

from __future__ import annotations

import csv
import dataclasses
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lapo import distributed
from lapo.checkpoint import (
    atomic_write_bytes,
    load_tensors,
    read_json,
    refuse_changed_settings,
    remove_stale_temporaries,
    restore_training_state,
    save_tensors,
    training_state,
    write_json,
)
from lapo.config import config_from_dict
from lapo.errors import UserError


def resolve_device(name: str) -> torch.device:
    """``auto`` -> CUDA when available, else CPU; ``cuda`` -> this process's GPU under
    torchrun; anything else as torch names it (:func:`lapo.distributed.device_for`)."""
    return distributed.device_for(name)


def cpu_flags() -> set[str]:
    """The CPU's feature flags as Linux lists them (empty where ``/proc/cpuinfo`` is absent)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    return {f for line in text.splitlines() if line.startswith("flags") for f in line.split()[2:]}


def resolve_precision(precision: str, device: torch.device, flags: set[str] | None = None) -> str:
    """``fp32`` or ``bf16`` as given; ``auto`` -> ``bf16`` where ``device`` computes bfloat16
    natively (a CUDA GPU that supports it; a CPU with AVX512-BF16 or AMX, per ``flags``,
    default :func:`cpu_flags`), else ``fp32``: emulated bf16 would be slower than float32."""
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    if device.type == "cpu":
        flags = cpu_flags() if flags is None else flags
        return "bf16" if {"avx512_bf16", "amx_bf16"} & flags else "fp32"
    return "fp32"


def _make_folder(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file; name a folder for the run (new or to resume)")
    out.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(out)


def start_run(out: Path, threads: int = 0, device: str = "auto") -> tuple[Path, torch.device]:
    """Join torchrun's process group if started by it, create the run folder ``out`` and
    clear temporaries a killed run left in it (rank 0; the others wait), set torch's CPU
    threads (0 = leave the default) and return ``(out, this rank's device)``."""
    _, device_ = distributed.init(device)
    out = Path(out)
    distributed.on_main(lambda: _make_folder(out))
    if threads > 0:
        torch.set_num_threads(threads)
    return out, device_


class CsvLog:
    """A metrics CSV that survives a resume.

    Opened at ``resume_at`` (the step or update of the checkpoint a run resumes from), it
    drops the rows logged after that point, which the run is about to redo (all rows when
    ``resume_at`` is 0), and writes ``header`` to a new file. A file whose header is a
    prefix of ``header`` (written by a version with fewer columns) gets the new header; its
    old rows stay, shorter. ``write`` flushes each row.
    """

    def __init__(self, path: Path, header: list[str], resume_at: int = 0) -> None:
        path = Path(path)
        self.header = list(header)
        if path.exists():
            lines = path.read_text().splitlines(keepends=True)
            old = lines[0].rstrip("\r\n").split(",") if lines else []
            head = lines[:1]
            if head and old != self.header and old == self.header[: len(old)]:
                head = [",".join(self.header) + "\r\n"]
            kept = head + [r for r in lines[1:] if resume_at and int(r.split(",")[0]) <= resume_at]
            atomic_write_bytes(path, "".join(kept).encode())
        new = not path.exists() or path.stat().st_size == 0
        self.file = open(path, "a", newline="")  # noqa: SIM115 - closed by close()
        self.writer = csv.writer(self.file)
        if new:
            self.writer.writerow(header)

    def write(self, row: list) -> None:
        self.writer.writerow(row)
        self.file.flush()

    def write_dict(self, values: dict[str, Any]) -> None:
        """One row from ``values`` by column name; a column not given is left empty."""
        self.write(["" if values.get(c) is None else values[c] for c in self.header])

    def close(self) -> None:
        self.file.close()


_CONTINUED = [0]  # SIGCONTs this process has received (each ends a suspension)


def _count_sigcont() -> None:
    """Count SIGCONTs from now on (once per process; only the main thread may set handlers,
    and elsewhere nothing is counted), keeping any handler already installed."""
    if getattr(_count_sigcont, "installed", False) or not hasattr(signal, "SIGCONT"):
        return
    if threading.current_thread() is not threading.main_thread():
        return
    previous = signal.getsignal(signal.SIGCONT)

    def handler(signum: int, frame: Any) -> None:
        _CONTINUED[0] += 1
        if callable(previous):
            previous(signum, frame)

    signal.signal(signal.SIGCONT, handler)
    _count_sigcont.installed = True  # type: ignore[attr-defined]


class StepClock:
    """Seconds spent in training steps, carried across resumes (a checkpoint's
    ``train_seconds``): what ``--max-minutes`` budgets and the time-based lr schedule read.

    Wrap each step in ``with clock:``. A step during which the process was suspended (SIGSTOP,
    Ctrl-Z: the SIGCONT that resumed it is counted) is charged the previous step's time
    instead of its wall time, so a pause neither spends the budget nor moves the schedule.
    """

    def __init__(self, seconds: float = 0.0) -> None:
        self.seconds = seconds
        self.last = 0.0  # the last step's charge
        self._t0 = 0.0
        self._continued = 0
        _count_sigcont()

    def __enter__(self) -> StepClock:
        self._continued, self._t0 = _CONTINUED[0], time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        took = time.perf_counter() - self._t0
        if _CONTINUED[0] != self._continued:  # suspended inside this step
            took = self.last
        self.last = took
        self.seconds += took


class Run:
    """One training run's folder and bookkeeping (see the module docstring).

    ``kind`` names the run (``config.json``'s ``kind``); ``cfg`` is the loop's config
    dataclass, saved under ``config.json[kind_key]`` and in every checkpoint, against which
    a resumed run is checked (apart from the fields in ``resumable``; ``compare`` adds other
    settings that must match, such as a network spec). ``columns`` are ``metrics.csv``'s,
    the first being the step counter; ``total`` and ``unit`` drive the progress bar, which
    counts ``per_step`` units per step (a PPO update: ``num_envs * num_steps`` frames).
    ``shared`` names the global sizes the ranks split (flag -> size; default the config's
    ``batch_size``), refused in one line before any file is written unless they divide.
    """

    def __init__(
        self,
        out: Path,
        kind: str,
        cfg: Any,
        *,
        columns: list[str],
        total: int,
        unit: str = "step",
        per_step: int = 1,
        desc: str | None = None,
        resumable: tuple[str, ...] = (),
        compare: dict | None = None,
        progress: bool = True,
        threads: int | None = None,
        device: str | None = None,
        shared: dict[str, int] | None = None,
    ) -> None:
        # torch threads and device: as given, else the config's own (0 / auto if it has none)
        threads = getattr(cfg, "threads", 0) if threads is None else threads
        device = getattr(cfg, "device", "auto") if device is None else device
        self.dist, _ = distributed.init(device)
        if shared is None:
            shared = {"--batch-size": cfg.batch_size} if hasattr(cfg, "batch_size") else {}
        for flag, size in shared.items():  # global sizes: refused before any file is made
            distributed.split(size, flag)
        self.out, self.device = start_run(out, threads, device)
        self.main = self.dist.main
        self.kind, self.cfg = kind, cfg
        # the forward pass's precision on this device (``auto`` resolved), as config.json says
        self.precision = resolve_precision(getattr(cfg, "precision", "fp32"), self.device)
        self.columns, self.total, self.unit, self.per_step = columns, total, unit, per_step
        self.desc = desc or kind
        self.resumable, self.compare = resumable, compare or {}
        self.progress = progress and self.main
        self.ckpt = self.out / "checkpoint.safetensors"
        self.start = 0
        self.meta: dict = {}  # the resumed checkpoint's meta ({} for a fresh run)
        self.writer: Any = None
        self.csv: CsvLog | None = None
        self.bar: Any = None
        self.t0 = time.time()

    # -- before the first step -------------------------------------------------------------
    def settings(self) -> dict:
        """What a resumed run is checked against: the config's fields and ``compare``."""
        return {**dataclasses.asdict(self.cfg), **self.compare}

    def resume(
        self,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        rng: np.random.Generator,
        counter: str = "step",
    ) -> int:
        """Load the checkpoint, if any, into ``model``, ``optimizer``, torch's RNG and ``rng``;
        return the step (or update: ``counter``) to start from, 0 for a fresh run. The
        checkpoint's whole meta is kept in ``self.meta`` for the loop's own counters."""
        found = self.ckpt.exists()
        if not distributed.same_everywhere(found):
            raise UserError(
                f"the processes disagree on whether {self.ckpt} exists: put --out on a filesystem "
                "every machine of the run shares"
            )
        if found:
            tensors, meta = load_tensors(self.ckpt)
            # a setting added to the config after the checkpoint was written counts as its
            # default there, so an upgrade does not strand a run; a setting this config lacks
            # is kept, and refused below as changed
            known = {f.name for f in dataclasses.fields(self.cfg)}
            written = {k: v for k, v in meta["config"].items() if k in known}
            saved = {
                **meta["config"],
                **dataclasses.asdict(config_from_dict(type(self.cfg), written, str(self.ckpt))),
                **{k: meta.get(k) for k in self.compare},
            }
            refuse_changed_settings(self.ckpt, saved, self.settings(), self.resumable)
            restore_training_state(tensors, meta, model, optimizer, rng)
            if "rng/cuda" in tensors and self.device.type == "cuda":
                torch.cuda.set_rng_state(tensors["rng/cuda"], self.device)
            self.start, self.meta = int(meta[counter]), meta
        return self.start

    def write_config(self, config_key: str, **extra: Any) -> dict:
        """Save ``config.json``: the kind, the config under ``config_key`` and ``extra``."""
        config = {"kind": self.kind, **extra, config_key: dataclasses.asdict(self.cfg)}
        if hasattr(self.cfg, "precision"):
            config["precision"] = self.precision  # what `auto` resolved to on this device
        if self.main:
            write_json(self.out / "config.json", config)
        return config

    def baseline(self, measure: Callable[[], dict], name: str = "untrained.json") -> dict:
        """What the untrained model scores, measured once by a fresh run (on every rank
        alike) and read back by a resumed one: the figure training must beat."""
        path = self.out / name
        if self.start == 0:
            measured = measure()
            if self.main:
                write_json(path, measured)
            return measured
        return read_json(path) if path.exists() else {}

    # -- the model, its optimiser and its data: data-parallel, and the fast path ------------
    def prepare(self, model: torch.nn.Module, *compiled: str) -> torch.nn.Module:
        """``model`` on the run's device (cuDNN benchmarking its kernels on CUDA), channels-last
        if the config says so (faster convolutions on CPU and on GPU tensor cores), and with
        ``compile`` its submodules named ``compiled`` (``""``: the whole model) compiled in
        place, so state-dict keys and checkpoints stay as they are."""
        model = model.to(self.device)
        if self.device.type == "cuda":  # a run's shapes are fixed: let cuDNN pick its fastest
            torch.backends.cudnn.benchmark = True
        if getattr(self.cfg, "channels_last", False):
            model = model.to(memory_format=torch.channels_last)
        if getattr(self.cfg, "compile", False):
            for name in compiled:
                model.get_submodule(name).compile()
        return model

    def optimizer(self, cls: type, params: Any, **kw: Any) -> torch.optim.Optimizer:
        """``cls(params, **kw)`` (Adam or AdamW), fused into one kernel on CUDA."""
        return cls(params, fused=True if self.device.type == "cuda" else None, **kw)

    def autocast(self) -> torch.autocast:
        """The forward pass's precision: bf16 autocast with ``precision bf16`` (or ``auto``
        on a device that computes it natively; CUDA and CPU), else float32."""
        bf16 = self.precision == "bf16"
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=bf16)

    @staticmethod
    def local(batch: Any) -> Any:
        """This rank's slice of a global batch (all of it in one process): every rank draws
        the same global batch and trains on its own part."""
        return distributed.local(batch)

    def backward(self, loss: torch.Tensor, model: torch.nn.Module) -> None:
        """``loss.backward()``, then the gradients averaged over the ranks: the gradient of
        the global batch's mean loss."""
        loss.backward()
        distributed.average_gradients(model.parameters())

    def floats(self, values: dict[str, Any]) -> dict[str, float]:
        """Logged scalars (tensors) as floats averaged over the ranks; at log steps only
        (the one host synchronisation of a step)."""
        return distributed.mean_floats(values)

    @staticmethod
    def agree(value: float) -> float:
        """Rank 0's ``value`` on every rank: a clock reading that decides when all stop."""
        return distributed.agree(value)

    def synchronize(self) -> None:
        """Wait for the device's queued work (before reading a clock)."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def open_logs(self) -> None:
        """Open TensorBoard, ``metrics.csv`` (cut back to the resumed step) and the bar."""
        from torch.utils.tensorboard import SummaryWriter
        from tqdm import tqdm

        self.writer = SummaryWriter(str(self.out / "tb"))
        self.csv = CsvLog(self.out / "metrics.csv", self.columns, self.start)
        self.bar = tqdm(
            total=self.total,
            initial=self.start * self.per_step,
            unit=self.unit,
            disable=not self.progress,
            desc=self.desc,
            unit_scale=self.unit == "frame",
        )

    def __enter__(self) -> Run:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- during the loop -------------------------------------------------------------------
    def scalars(self, step: int, values: dict[str, float]) -> None:
        """TensorBoard scalars ``name -> value`` at ``step`` (None values skipped)."""
        if not self.main:
            return
        if self.writer is None:
            self.open_logs()
        for name, v in values.items():
            if v is not None:
                self.writer.add_scalar(name, float(v), step)

    def row(self, values: dict[str, Any]) -> None:
        """One ``metrics.csv`` row by column name."""
        if not self.main:
            return
        if self.csv is None:
            self.open_logs()
        assert self.csv is not None
        self.csv.write_dict(values)

    def advance(self, n: int = 1, **postfix: str) -> None:
        """Move the progress bar by ``n`` (steps or frames), showing ``postfix``."""
        if not self.main:
            return
        if self.bar is None:
            self.open_logs()
        self.bar.update(n)
        if postfix:
            self.bar.set_postfix(**postfix, refresh=False)

    def checkpoint(
        self,
        step: int,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        rng: np.random.Generator,
        counter: str = "step",
        **meta: Any,
    ) -> None:
        """Write the resumable state atomically, with the config and ``compare`` settings
        (rank 0: every rank holds the same state)."""
        if not self.main:
            return
        state = training_state(
            model,
            optimizer,
            rng,
            **{counter: step},
            config=dataclasses.asdict(self.cfg),
            **self.compare,
            **meta,
        )
        if self.device.type == "cuda":  # per-sample draws on the GPU use its generator
            state[0]["rng/cuda"] = torch.cuda.get_rng_state(self.device)
        save_tensors(self.ckpt, *state)

    def save(self, name: str, tensors: dict[str, torch.Tensor], meta: dict | None = None) -> None:
        """Write ``name`` (tensors + JSON meta) in the run folder, atomically (rank 0)."""
        if self.main:
            save_tensors(self.out / name, tensors, meta)

    # -- after the loop --------------------------------------------------------------------
    def wall_seconds(self) -> float:
        return time.time() - self.t0

    def close(self) -> None:
        for thing in (self.bar, self.writer, self.csv):
            if thing is not None:
                thing.close()
        self.bar = self.writer = self.csv = None
