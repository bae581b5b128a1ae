"""Stage-1 training speed (samples/s and achieved FLOP/s) per preset and execution variant.

    python benchmarks/stage1_speed.py [--presets cpu,paper] [--batch 128] [--device auto]
        [--variants ...] [--seconds 20]

One training step is what ``lapo lam train`` does: IDM + quantiser + world model forward, the
loss, backward, grad-norm clip and an Adam step. FLOPs per step are counted once with
``torch.utils.flop_counter`` (forward + backward); the achieved FLOP/s is that count times the
measured steps/s. Each variant also reports its loss on one fixed batch against float32
contiguous from the same weights (``loss_rel_diff``), so a faster variant that changes the
numbers shows it. Variants:

- ``fp32``: float32, contiguous (NCHW) tensors;
- ``channels_last``: float32, channels-last model (what ``lapo lam train`` uses);
- ``bf16``: channels-last + bfloat16 autocast;
- ``fused``: channels-last + bf16 autocast + fused Adam (CUDA only);
- ``compile``: the ``fused`` variant (or ``channels_last`` on CPU) under ``torch.compile``.

Reference figures (the issue): the reference implementation on a 2-core CPU ran at about 64
samples/s at IDM x1 / world-model base 8 and about 20 samples/s at the paper architecture.
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from lapo.config import lam_preset as preset
from lapo.stages.lam import LatentActionModel, lam_loss

CPU_VARIANTS = "fp32,channels_last,bf16"
CUDA_VARIANTS = "fp32,channels_last,bf16,fused,compile"


def build(name: str, variant: str, device: torch.device, seed: int = 0):
    cfg = preset(name)
    torch.manual_seed(seed)
    model = LatentActionModel(cfg).to(device)
    if variant != "fp32":
        model = model.to(memory_format=torch.channels_last)
    fused = variant in ("fused", "compile") and device.type == "cuda"
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.learning_rate, fused=fused or None)
    autocast = variant in ("bf16", "fused", "compile") and (
        device.type == "cuda" or variant == "bf16"
    )
    loss_fn = torch.compile(lam_loss) if variant == "compile" else lam_loss

    def step(frames: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
            loss, _ = loss_fn(model, frames)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        optimizer.step()
        return loss.detach()

    @torch.no_grad()
    def fixed_loss(frames: torch.Tensor) -> float:
        model.eval()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
            loss, _ = lam_loss(model, frames)
        model.train()
        return float(loss)

    return model, step, fixed_loss


def count_flops(name: str, batch: int, device: torch.device) -> float:
    """Forward + backward FLOPs of one training step (float32, as counted by PyTorch)."""
    model = LatentActionModel(preset(name)).to(device)
    frames = torch.rand(batch, 3, 3, 64, 64, device=device) - 0.5
    with FlopCounterMode(display=False) as counter:
        loss, _ = lam_loss(model, frames)
        loss.backward()
    return float(counter.get_total_flops())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--presets", default="cpu,paper")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--device", default="auto", help="cpu, cuda or auto")
    ap.add_argument("--variants", default=None, help=f"default {CPU_VARIANTS} / {CUDA_VARIANTS}")
    ap.add_argument("--seconds", type=float, default=20.0, help="timed seconds per variant")
    ap.add_argument("--threads", type=int, default=0)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    variants = (args.variants or (CUDA_VARIANTS if device.type == "cuda" else CPU_VARIANTS)).split(
        ","
    )
    machine = (
        torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"
    )
    results: dict = {"machine": machine, "torch": torch.__version__, "batch": args.batch}
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    g = torch.Generator().manual_seed(0)
    frames = (torch.rand(args.batch, 3, 3, 64, 64, generator=g) - 0.5).to(device)
    for name in args.presets.split(","):
        flops = count_flops(name, args.batch, device)
        results[name] = {"gflop_per_sample": round(flops / args.batch / 1e9, 3)}
        reference = None
        for variant in variants:
            _, step, fixed_loss = build(name, variant, device)
            loss0 = fixed_loss(frames)
            if variant == "fp32":
                reference = loss0
            for _ in range(3):  # warm-up (and compilation)
                step(frames)
            sync()
            n, t0 = 0, time.perf_counter()
            while time.perf_counter() - t0 < args.seconds or n < 3:
                step(frames)
                n += 1
            sync()
            dt = (time.perf_counter() - t0) / n
            row = {
                "samples_per_second": round(args.batch / dt, 1),
                "gflop_per_second": round(flops / dt / 1e9, 1),
                "loss_rel_diff": None
                if reference is None
                else round(abs(loss0 - reference) / abs(reference), 5),
            }
            if device.type == "cuda" and name == "paper":
                row["minutes_for_50k_steps"] = round(50_000 * dt / 60, 1)
            results[name][variant] = row
            print(json.dumps({name: {variant: row}}), flush=True)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
