"""The GPU check: the paper preset's stage 1 and stage 2 at full size, timed per fast-path
option, single-process and through torchrun, as one table (``benchmarks/gpu_check.sh``).

    python benchmarks/gpu_check.py [--toy] [--work DIR] [--lam-steps 300] [--bc-steps 600]
        [--frames 30000] [--budget 540]

Each row is one ``lapo lam train`` / ``lapo bc train`` command (a subprocess, as a user runs
it) with ``--preset paper`` and one set of options; its steady rate comes from the run's
``metrics.csv``: training seconds (device work, evaluations excluded) between the first
evaluation row and the last, so start-up and torch.compile's compilation are left out.
The table gives steps/s, the minutes 50,000 stage-1 steps (60,000 stage-2 steps, the paper's
budgets) would take, samples/s and achieved TFLOP/s from FLOPs counted with
``torch.utils.flop_counter`` (forward + backward of the global batch). ``--toy`` runs the
same at toy sizes on a CPU in a few minutes (the torchrun rows then use gloo on the CPU).
Rows past ``--budget`` seconds are skipped, so the table always comes back. Written to
``$OUT/gpu_check.md`` and ``$OUT/gpu_check.json`` when ``OUT`` is set.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from lapo.config import BCConfig, LAMConfig, preset
from lapo.models.lam import LatentActionModel
from lapo.models.policy import build_network
from lapo.runkinds import latent_policy_spec
from lapo.stages.lam import lam_loss

LAM_BUDGET, BC_BUDGET = 50_000, 60_000  # the paper's steps

# (name, options, processes); fused Adam is on whenever the device is CUDA
LAM_ROWS = [
    ("fp32", ["--no-channels-last"], 1),
    ("+ channels-last", ["--channels-last"], 1),
    ("+ bf16", ["--precision", "bf16"], 1),
    ("+ bf16 + data on device", ["--precision", "bf16", "--data-on-device"], 1),
    (
        "+ bf16 + data on device + compile",
        ["--precision", "bf16", "--data-on-device", "--compile"],
        1,
    ),
    ("torchrun x2, bf16 + data on device", ["--precision", "bf16", "--data-on-device"], 2),
]
BC_ROWS = [
    ("fp32", ["--no-channels-last"], 1),
    ("+ channels-last + bf16 + data on device", ["--precision", "bf16", "--data-on-device"], 1),
    ("+ compile", ["--precision", "bf16", "--data-on-device", "--compile"], 1),
    ("torchrun x2, bf16 + data on device", ["--precision", "bf16", "--data-on-device"], 2),
]


def lapo(args: list[str], processes: int = 1) -> list[str]:
    if processes == 1:
        return [sys.executable, "-m", "lapo", *args]
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    return [*launcher, "--nproc-per-node", str(processes), "-m", "lapo", *args]


def lam_flops_per_sample(toy: bool) -> float:
    cfg = preset(LAMConfig, "fast" if toy else "paper")
    model = LatentActionModel(cfg)
    frames = torch.rand(2, 3, 3, 64, 64) - 0.5
    with FlopCounterMode(display=False) as counter:
        loss, _ = lam_loss(model, frames, cfg)
        loss.backward()
    return counter.get_total_flops() / 2


def bc_flops_per_sample(toy: bool) -> float:
    """The policy's forward + backward and the frozen IDM's forward (the target)."""
    size = "fast" if toy else "paper"
    lam_cfg, bc_cfg = preset(LAMConfig, size), preset(BCConfig, size)
    idm = LatentActionModel(lam_cfg).idm.eval()
    policy = build_network(latent_policy_spec(lam_cfg.quantizer.latent_dim, bc_cfg.width))
    obs = torch.randint(0, 256, (2, 64, 64, 3), dtype=torch.uint8)
    with FlopCounterMode(display=False) as counter:
        with torch.no_grad():
            idm(torch.rand(2, 3, 3, 64, 64) - 0.5)
        policy(obs).float().pow(2).mean().backward()
    return counter.get_total_flops() / 2


def steady_rate(run: Path) -> tuple[float, int]:
    """Steps per training second between the first and the last evaluation row after step 0."""
    with open(run / "metrics.csv") as f:
        rows = [r for r in csv.DictReader(f) if r.get("train_seconds")]
    rows = [r for r in rows if int(r["step"]) > 0]
    first, last = rows[0], rows[-1]
    steps = int(last["step"]) - int(first["step"])
    return steps / max(float(last["train_seconds"]) - float(first["train_seconds"]), 1e-9), steps


def measure(name: str, cmd: list[str], out: Path, batch: int, flops: float, budget: int) -> dict:
    t0 = time.time()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    row = {"row": name, "wall_s": round(time.time() - t0, 1)}
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        return {**row, "error": " / ".join(tail)}
    rate, steps = steady_rate(out)
    return {
        **row,
        "steps_timed": steps,
        "steps_per_s": round(rate, 2),
        "minutes_for_budget": round(budget / rate / 60, 1),
        "samples_per_s": round(rate * batch, 1),
        "tflop_per_s": round(rate * batch * flops / 1e12, 2),
    }


def run_rows(stage: str, rows: list, base: list[str], work: Path, args, flops: float) -> list:
    results = []
    steps = args.lam_steps if stage == "lam" else args.bc_steps
    batch, budget = 16 if args.toy else 128, LAM_BUDGET if stage == "lam" else BC_BUDGET
    for i, (name, options, processes) in enumerate(rows):
        if args.toy and "--compile" in options:
            continue  # minutes of C++ compilation on a CPU; the GPU run has it
        if time.time() - args.t0 > args.budget:
            results.append({"row": name, "error": "skipped: over --budget"})
            continue
        out = work / f"{stage}{i}"
        every = max(steps // 3, 1)
        cmd = lapo([stage, "train", *base, "--out", str(out), "--steps", str(steps),
                    "--eval-every", str(every), *options, "--quiet"], processes)  # fmt: skip
        if stage == "lam":
            cmd += ["--probe-every", "0"]
        results.append(
            {
                "stage": stage,
                "processes": processes,
                **measure(name, cmd, out, batch, flops, budget),
            }
        )
        print(json.dumps(results[-1]), flush=True)
    return results


def table(results: list[dict], device: str) -> str:
    lines = [
        f"GPU check on {device}, torch {torch.__version__}",
        "",
        "| stage | row | steps/s | minutes for the paper's steps | samples/s | TFLOP/s |",
        "|---|---|---|---|---|---|",
    ]
    for r in results:
        stage = {"lam": "1 (50k steps)", "bc": "2 (60k steps)"}.get(r.get("stage", ""), "")
        if "error" in r:
            lines.append(f"| {stage} | {r['row']} | {r['error']} | | | |")
            continue
        cells = [r["steps_per_s"], r["minutes_for_budget"], r["samples_per_s"], r["tflop_per_s"]]
        lines.append(f"| {stage} | {r['row']} | " + " | ".join(map(str, cells)) + " |")
    return "\n".join(lines)


def collect_data(work: Path, frames: int) -> Path:
    data = work / "coinrun"
    if not (data / "manifest.json").exists():
        cmd = lapo(["collect", "--env", "coinrun", "--policy", "demonstrator", "--frames",
                    str(frames), "--out", str(data), "--num-envs", "32", "--quiet"])  # fmt: skip
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return data


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument(
        "--toy", action="store_true", default=bool(os.environ.get("LAPO_GPU_CHECK_TOY"))
    )
    ap.add_argument("--work", default="runs/gpu_check", help="folder for the data and the runs")
    ap.add_argument("--lam-steps", type=int, default=None, help="per row (default 300; toy 30)")
    ap.add_argument("--bc-steps", type=int, default=None, help="per row (default 600; toy 30)")
    ap.add_argument(
        "--frames", type=int, default=None, help="demonstrator frames (30,000; toy 2,000)"
    )
    ap.add_argument("--budget", type=float, default=540.0, help="seconds before rows are skipped")
    args = ap.parse_args()
    args.t0 = time.time()
    args.lam_steps = args.lam_steps or (30 if args.toy else 300)
    args.bc_steps = args.bc_steps or (30 if args.toy else 600)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "CPU (no CUDA)"
    print(f"lapo gpu check: {device}, torch {torch.__version__}", flush=True)
    data = collect_data(work, args.frames or (2_000 if args.toy else 30_000))
    print(f"collected {data} in {time.time() - args.t0:.0f} s", flush=True)
    sizes = (
        ["--preset", "fast", "--batch-size", "16", "--threads", "1"]
        if args.toy
        else ["--preset", "paper"]
    )
    results = run_rows("lam", LAM_ROWS, ["--data", str(data), *sizes], work, args,
                       lam_flops_per_sample(args.toy))  # fmt: skip
    lam_run = next((work / f"lam{i}" for i in range(len(LAM_ROWS))
                    if (work / f"lam{i}" / "lam.safetensors").exists()), None)  # fmt: skip
    if lam_run is not None:
        bc_base = ["--lam", str(lam_run), "--data", str(data), *sizes]
        results += run_rows("bc", BC_ROWS, bc_base, work, args, bc_flops_per_sample(args.toy))
    report = table(results, device)
    print(report)
    if os.environ.get("OUT"):
        out = Path(os.environ["OUT"])
        out.mkdir(parents=True, exist_ok=True)
        (out / "gpu_check.md").write_text(report + "\n")
        (out / "gpu_check.json").write_text(
            json.dumps({"device": device, "rows": results}, indent=2)
        )


if __name__ == "__main__":
    main()
