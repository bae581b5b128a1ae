"""Stage-1 training speed (samples/s, achieved FLOP/s) per preset and precision, beside the
reference implementation's figures, and bf16's loss against float32.

    python benchmarks/stage1_speed.py [--presets cpu,cpu+s2d,paper] [--precision fp32,bf16]
        [--batch 128] [--device auto] [--seconds 20] [--threads 0] [--loss-steps 5]
        [--no-channels-last] [--compile]

A step is ``lapo lam train``'s own (:func:`lapo.stages.lam.lam_step` through the run harness:
autocast, channels-last, fused Adam on CUDA, torch.compile as configured): IDM + quantiser +
world model forward, the loss, backward, grad-norm clip and an Adam step, on a fixed batch
(no data loading). FLOPs per sample are counted once with ``torch.utils.flop_counter``
(forward + backward, float32); achieved FLOP/s is that count times the measured samples/s.

bf16 check: from the same weights, ``--loss-steps`` training steps on the same batches in
each precision; the table reports the largest gap between bf16's and float32's loss.

Reference figures (the issue): the reference implementation on a 2-core CPU ran at about 64
samples/s at IDM x1 / world-model base 8 (the ``cpu`` preset's networks) and about 20
samples/s at the paper architecture.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import sys
import tempfile
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from lapo.config import LAMConfig, preset
from lapo.models.lam import LatentActionModel
from lapo.runs import Run, resolve_device
from lapo.stages.lam import lam_loss, lam_step

REFERENCE = {"cpu": 64.0, "paper": 20.0}
"""Samples/s of the reference implementation on a 2-core CPU (the issue's figures)."""

OPTIONS = {"s2d": {"wm_space_to_depth": True}}
"""``PRESET+NAME`` in ``--presets``: the preset with these fields (s2d: the world model at
32x32 on frames folded 2x2 into channels, ``--wm-space-to-depth``)."""


def trainer(cfg, folder: str):
    """``(step(frames) -> loss, run)``: one ``lam train`` step from the seed's weights."""
    run = Run(folder, "lam", cfg, columns=["step"], total=1, progress=False)
    torch.manual_seed(cfg.seed)
    model = run.prepare(LatentActionModel(cfg), "idm.encoder", "world_model")
    optimizer = run.optimizer(torch.optim.Adam, model.parameters(), lr=cfg.learning_rate)

    def step(frames: torch.Tensor) -> torch.Tensor:
        logs, _ = lam_step(model, optimizer, frames, None, cfg, run)
        return logs["wm_loss"]

    return step, run


def count_flops(cfg, batch: int, device: torch.device) -> float:
    """Forward + backward FLOPs of one training step on ``batch`` windows (float32)."""
    torch.manual_seed(0)
    model = LatentActionModel(cfg).to(device)
    frames = torch.rand(batch, 3, 3, 64, 64, device=device) - 0.5
    with FlopCounterMode(display=False) as counter:
        loss, _ = lam_loss(model, frames, cfg)
        loss.backward()
    return float(counter.get_total_flops())


def speed(cfg, frames: torch.Tensor, seconds: float, folder: str) -> float:
    """Steady-state seconds per step (after 3 warm-up steps, compilation included there)."""
    step, run = trainer(cfg, folder)
    for _ in range(3):
        step(frames)
    run.synchronize()
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds or n < 3:
        step(frames)
        n += 1
    run.synchronize()
    return (time.perf_counter() - t0) / n


def loss_gap(cfg, batches: list[torch.Tensor], folder: str) -> float:
    """Largest |bf16 loss - fp32 loss| over training steps on ``batches`` from one init."""
    losses = {}
    for precision in ("fp32", "bf16"):
        step, _ = trainer(dataclasses.replace(cfg, precision=precision), f"{folder}/{precision}")
        losses[precision] = [float(step(f)) for f in batches]
    return max(abs(a - b) for a, b in zip(losses["fp32"], losses["bf16"], strict=True))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--presets", default="cpu,paper", help="comma-separated: PRESET or PRESET+s2d")
    ap.add_argument("--precision", default="fp32,bf16", help="comma-separated: fp32, bf16")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--device", default="auto", help="cpu, cuda or auto")
    ap.add_argument("--seconds", type=float, default=20.0, help="timed seconds per column")
    ap.add_argument("--threads", type=int, default=0, help="torch threads; 0 = all cores")
    ap.add_argument("--loss-steps", type=int, default=5, help="steps of the bf16 loss check")
    ap.add_argument("--no-channels-last", dest="channels_last", action="store_false")
    ap.add_argument("--compile", action="store_true", help="torch.compile the networks")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    precisions = args.precision.split(",")
    results: dict = {"torch": torch.__version__, "batch": args.batch}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.presets.split(","):
            base, _, option = name.partition("+")
            if option and option not in OPTIONS:
                sys.exit(f"unknown option +{option} in --presets: choose from {', '.join(OPTIONS)}")
            cfg = dataclasses.replace(
                preset(LAMConfig, base),
                **OPTIONS.get(option, {}),
                batch_size=args.batch,
                device=args.device,
                threads=args.threads,
                channels_last=args.channels_last,
                compile=args.compile,
            )
            device = resolve_device(args.device)
            results["machine"] = machine(device)
            g = torch.Generator().manual_seed(0)
            batches = [(torch.rand(args.batch, 3, 3, 64, 64, generator=g) - 0.5).to(device)
                       for _ in range(max(args.loss_steps, 1))]  # fmt: skip
            flops = count_flops(cfg, args.batch, device)
            row = {"preset": name, "gflop_per_sample": round(flops / args.batch / 1e9, 2)}
            for p in precisions:
                folder = f"{tmp}/{name}-{p}"
                dt = speed(dataclasses.replace(cfg, precision=p), batches[0], args.seconds, folder)
                row[p] = round(args.batch / dt, 1)
                row[f"{p}_gflop_per_second"] = round(flops / dt / 1e9, 1)
                print(json.dumps({name: {p: row[p]}}), flush=True)
            if args.loss_steps > 0 and "bf16" in precisions:
                row["bf16_loss_gap"] = loss_gap(cfg, batches, f"{tmp}/{name}-gap")
            results[name] = row
            rows.append(row)
    print(json.dumps(results, indent=2))
    print(table(rows, precisions))


def machine(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"


def table(rows: list[dict], precisions: list[str]) -> str:
    """The results as a Markdown table beside the reference implementation's samples/s."""
    head = ["preset", "GFLOP/sample", "reference", *precisions]
    if any("bf16_loss_gap" in r for r in rows):
        head.append("bf16 loss gap")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        reference = REFERENCE.get(r["preset"].partition("+")[0], "-")
        cells = [r["preset"], str(r["gflop_per_sample"]), str(reference)]
        cells += [f"{r[p]} ({r[f'{p}_gflop_per_second']} GFLOP/s)" for p in precisions]
        if "bf16_loss_gap" in r:
            cells.append(f"{r['bf16_loss_gap']:.1e}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
