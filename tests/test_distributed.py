"""Data parallel through torchrun on CPU (gloo): two processes train as one process does with
the same global batch, a killed two-process run resumes (with two processes or one), and the
bf16 fast path trains close to float32."""

import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from lapo.checkpoint import load_tensors
from lapo.config import BCConfig, LAMConfig, QuantizerConfig, preset
from lapo.data.collect import collect
from lapo.flags import to_flags
from lapo.models.lam import LatentActionModel
from lapo.runs import resolve_precision
from lapo.stages.bc import train_latent_bc
from lapo.stages.lam import lam_loss, plain_lam_loss, train_lam

# tiny, with every per-sample draw (shifts, lookahead, hidden past) and frequent code restarts
TOY = LAMConfig(
    idm_width=1,
    wm_base=4,
    batch_size=8,
    steps=8,
    warmup_steps=2,
    eval_every=2,
    probe_every=0,
    aug_shift=2,
    idm_lookahead=2,
    wm_mask_past=0.3,
    threads=1,
    quantizer=QuantizerConfig(
        num_codebooks=1,
        latents_per_codebook=2,
        code_dim=4,
        num_entries=8,
        restart_unused_steps=1,
    ),
)
BC_TOY = BCConfig(width=1, batch_size=8, steps=6, warmup_steps=2, eval_every=3, threads=1)


def torchrun(*args: str) -> list[str]:
    """Two gloo processes on this machine (free port), one torch thread each."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node",
            "2", *args]  # fmt: skip


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    out = tmp_path_factory.mktemp("dist") / "coinrun"
    collect("coinrun", "random", 400, out, test_frames=60, num_envs=2, chunk_frames=256,
            progress=False)  # fmt: skip
    return out


@pytest.fixture(scope="module")
def one_process(data, tmp_path_factory):
    """The reference: stage 1 in this process with the global batch."""
    out = tmp_path_factory.mktemp("one") / "lam"
    train_lam(TOY, data, out, progress=False)
    return out


def flat(run: Path, name: str) -> dict[str, torch.Tensor]:
    return load_tensors(run / name)[0]


def assert_same_training(a: dict, b: dict, init: dict) -> None:
    """Integer state (restart counters, batch-norm counts) equal; float state apart by far less
    than training moved it. Adam turns float noise in near-zero gradients (a bias before batch
    norm has none) into whole steps, so exact equality is not the bar: 1% of the update is,
    which a per-rank batch norm (6% in this set-up) already fails."""
    assert a.keys() == b.keys()
    floats = [k for k in a if a[k].is_floating_point()]
    for k in set(a) - set(floats):
        assert torch.equal(a[k], b[k]), k
    A, B, I = (torch.cat([d[k].double().flatten() for k in floats]) for d in (a, b, init))  # noqa: E741
    assert ((A - B).norm() / (A - I).norm()).item() < 0.01


def kill_after_checkpoint(cmd: list[str], checkpoint: Path, at_least: int) -> int:
    """Run ``cmd`` in its own session; SIGKILL all of it (torchrun and its workers) once
    ``checkpoint`` reaches step ``at_least``; return that step."""
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)  # fmt: skip
    try:
        deadline = time.time() + 120
        while time.time() < deadline:
            if checkpoint.exists():
                step = load_tensors(checkpoint)[1]["step"]
                if step >= at_least:
                    return step
            assert proc.poll() is None, "the run ended before it could be killed"
            time.sleep(0.02)
        pytest.fail("no checkpoint within 120 s")
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def test_two_processes_train_stage1_as_one_and_resume_after_a_kill(data, one_process, tmp_path):
    two = tmp_path / "two"
    flags = [*to_flags(TOY, preset(LAMConfig, "cpu")), "--quiet"]
    cmd = torchrun("-m", "lapo", "lam", "train", "--data", str(data), "--out", str(two), *flags)
    assert kill_after_checkpoint(cmd, two / "checkpoint.safetensors", 2) < TOY.steps
    shutil.copytree(two, tmp_path / "two_then_one")
    subprocess.run(cmd, check=True, capture_output=True)  # resumed by two processes
    train_lam(TOY, data, tmp_path / "two_then_one", progress=False)  # ... and by one
    torch.manual_seed(TOY.seed)
    init = LatentActionModel(TOY).state_dict()
    reference = flat(one_process, "lam.safetensors")
    for run in (two, tmp_path / "two_then_one"):
        assert load_tensors(run / "checkpoint.safetensors")[1]["step"] == TOY.steps
        assert_same_training(flat(run, "lam.safetensors"), reference, init)
    rows = (two / "metrics.csv").read_text().splitlines()
    assert [r.split(",")[0] for r in rows[1:]] == ["0", "2", "4", "6", "8"]


RANKS = """
import json, sys, torch
from lapo import distributed
from lapo.checkpoint import save_tensors
from lapo.cli import main
from lapo.config import LAMConfig, config_from_dict
from lapo.models.lam import LatentActionModel
from lapo.stages.lam import lam_loss
torch.set_num_threads(1)
distributed.init("cpu")
cfg = config_from_dict(LAMConfig, json.loads(sys.argv[1]))
torch.manual_seed(0)
model = LatentActionModel(cfg)
frames = torch.rand(8, 4, 3, 64, 64, generator=torch.Generator().manual_seed(1)) - 0.5
torch.manual_seed(2)
loss, _ = lam_loss(model, distributed.local(frames), cfg)
loss.backward()
distributed.average_gradients(model.parameters())
state = {"grad." + n: p.grad for n, p in model.named_parameters()}
state.update(model.state_dict())
if distributed.current().main:
    save_tensors(sys.argv[2], state)
sys.exit(main(sys.argv[3:]))  # then a command in the same process group
"""


@pytest.fixture(scope="module")
def two_ranks(data, one_process, tmp_path_factory):
    """One torchrun launch of two processes: one step of stage 1's loss on each rank's half of
    a fixed batch (``ranks.safetensors``: averaged gradients and the model's state), then
    stage 2 (``bc train``) into ``bc``."""
    tmp = tmp_path_factory.mktemp("two_ranks")
    (tmp / "ranks.py").write_text(RANKS)
    bc = ["bc", "train", "--lam", str(one_process), "--data", str(data), "--out", str(tmp / "bc"),
          *to_flags(BC_TOY, preset(BCConfig, "cpu")), "--quiet"]  # fmt: skip
    values = json.dumps(dataclasses.asdict(TOY))
    cmd = torchrun(str(tmp / "ranks.py"), values, str(tmp / "ranks.safetensors"), *bc)
    subprocess.run(cmd, check=True, capture_output=True)
    return tmp


def one_rank_step(cfg: LAMConfig) -> dict[str, torch.Tensor]:
    """What the script ``RANKS`` computes, in one process on the whole batch."""
    torch.manual_seed(0)
    model = LatentActionModel(cfg)
    frames = torch.rand(8, 4, 3, 64, 64, generator=torch.Generator().manual_seed(1)) - 0.5
    torch.manual_seed(2)
    loss, _ = lam_loss(model, frames, cfg)
    loss.backward()
    return {**{"grad." + n: p.grad for n, p in model.named_parameters()}, **model.state_dict()}


def test_two_ranks_reduce_gradients_codebook_and_batch_norm_to_one_ranks(two_ranks):
    """Averaged gradients, the EMA codebook (counts, sums, restarted codes) and batch-norm
    statistics of two ranks, each with half the batch, equal one rank's on the whole batch."""
    two, one = flat(two_ranks, "ranks.safetensors"), one_rank_step(TOY)
    assert (one["idm.quantizer.steps_unused"] == 0).all()  # codes were restarted ...
    assert (one["idm.quantizer.ema_count"] == 1 / 8).any()  # ... at one use
    for k in one:
        torch.testing.assert_close(two[k], one[k], rtol=1e-4, atol=1e-6, msg=k)


def test_two_processes_train_stage2_as_one(data, one_process, two_ranks, tmp_path):
    train_latent_bc(BC_TOY, one_process, data, tmp_path / "one", progress=False)
    a = flat(two_ranks / "bc", "policy.safetensors")
    b = flat(tmp_path / "one", "policy.safetensors")
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5, msg=k)


def test_bf16_on_cpu_trains_within_tolerance_of_float32(data, tmp_path):
    torch.manual_seed(0)
    model = LatentActionModel(TOY).eval()  # eval: the codebook stays put between the calls
    frames = torch.rand(8, 3, 3, 64, 64) - 0.5
    fp32, _ = plain_lam_loss(model, frames)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        bf16, _ = plain_lam_loss(model, frames)
    assert abs(bf16.item() - fp32.item()) < 5e-4
    cfg = dataclasses.replace(TOY, steps=2, precision="bf16")
    summary = train_lam(cfg, data, tmp_path / "bf16", progress=False)
    assert summary["steps"] == 2 and np.isfinite(summary["test_wm_loss"])
    saved = json.loads((tmp_path / "bf16" / "config.json").read_text())
    assert saved["lam"]["precision"] == "bf16" and saved["precision"] == "bf16"


def test_auto_precision_is_bf16_only_where_the_cpu_computes_it():
    cpu = torch.device("cpu")
    assert resolve_precision("auto", cpu, {"avx2", "avx512f", "avx512bw"}) == "fp32"
    assert resolve_precision("auto", cpu, {"avx512f", "avx512_bf16"}) == "bf16"
    assert resolve_precision("auto", cpu, {"amx_tile", "amx_bf16"}) == "bf16"
    assert resolve_precision("auto", cpu, set()) == "fp32"  # no /proc/cpuinfo (macOS)
    assert resolve_precision("fp32", cpu, {"avx512_bf16"}) == "fp32"  # as given
    assert resolve_precision("bf16", cpu, set()) == "bf16"


PPO_RANKS = """
import json, sys
from pathlib import Path
import numpy as np, torch
from lapo import distributed
from lapo.checkpoint import save_tensors
from lapo.cli import main
from lapo.config import ExpertConfig
from lapo.envs import NUM_ACTIONS
from lapo.models.actor_critic import ActorCritic
from lapo.rl import ppo
torch.set_num_threads(1)
d, device = distributed.init("cpu")
tmp, commands = sys.argv[1], json.loads(sys.argv[2])
# the shared PPO loop: 4 environments, 2 per rank
cfg = ExpertConfig(arch="nature", num_envs=4, num_steps=8, num_minibatches=2, update_epochs=2)
torch.manual_seed(0)
model = ActorCritic(NUM_ACTIONS, "nature", 1)
optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, eps=1e-5)
rng = np.random.default_rng(0)
buf = ppo.RolloutBuffer(cfg.num_steps, 2, device)
with ppo.PPOEnvs("coinrun", cfg, device) as envs:
    for _ in range(2):
        advantages, returns = ppo.collect_rollout(model, envs, buf, cfg)
        ppo.ppo_epochs(model, optimizer, buf.batch(advantages, returns), cfg, rng)
save_tensors(f"{tmp}/rank{d.rank}.safetensors", {**model.state_dict(), "obs": buf.obs})
done = []  # then commands in the same process group: exit code, metrics.csv after
for argv in commands:
    code, csv = main(argv), Path(argv[argv.index("--out") + 1]) / "metrics.csv"
    done.append([code, csv.read_text() if csv.exists() else None])
if d.main:
    (Path(tmp) / "done.json").write_text(json.dumps(done))
"""


def test_two_processes_run_ppo_as_one_and_resume(two_ranks, tmp_path):
    """PPO under torchrun: each rank plays its own half of the environments and the ranks
    keep identical weights; ``expert train`` refuses an env count the ranks cannot split
    before writing anything, writes its folder once and resumes; ``decode online`` runs."""
    (tmp_path / "ppo.py").write_text(PPO_RANKS)
    tiny = ["--arch", "nature", "--num-envs", "4", "--num-steps", "8", "--num-minibatches", "2",
            "--threads", "1", "--device", "cpu", "--quiet"]  # fmt: skip
    expert = ["expert", "train", "--env", "coinrun", "--out", str(tmp_path / "expert"), *tiny]
    online = ["decode", "online", "--policy", str(two_ranks / "bc"), "--env", "coinrun",
              "--out", str(tmp_path / "online"), "--frames", "64", "--num-envs", "4",
              "--num-steps", "8", "--decoder-fit-start", "0", "--threads", "1", "--device",
              "cpu", "--quiet"]  # fmt: skip
    commands = [
        [*expert[:5], str(tmp_path / "odd"), *tiny, "--num-envs", "3", "--frames", "24"],
        [*expert, "--frames", "64"],
        [*expert, "--frames", "128"],  # resumes at update 2
        online,
    ]
    cmd = torchrun(str(tmp_path / "ppo.py"), str(tmp_path), json.dumps(commands))
    done = subprocess.run(cmd, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-4000:]
    done = json.loads((tmp_path / "done.json").read_text())
    assert [code for code, _ in done] == [2, 0, 0, 0]
    assert done[2][1].startswith(done[1][1])  # resumed: the first two updates' rows kept
    assert not (tmp_path / "odd").exists()
    r0, r1 = flat(tmp_path, "rank0.safetensors"), flat(tmp_path, "rank1.safetensors")
    assert not torch.equal(r0.pop("obs"), r1.pop("obs"))  # different levels ...
    for k in r0:  # ... and the same weights
        assert torch.equal(r0[k], r1[k]), k
    rows = (tmp_path / "expert" / "metrics.csv").read_text().splitlines()
    assert [r.split(",")[:2] for r in rows[1:]] == [["1", "32"], ["2", "64"], ["3", "96"],
                                                     ["4", "128"]]  # fmt: skip
    assert json.loads((tmp_path / "expert" / "config.json").read_text())["frames_trained"] == 128
    online_rows = (tmp_path / "online" / "metrics.csv").read_text().splitlines()
    assert [r.split(",")[:2] for r in online_rows[1:]] == [["1", "32"], ["2", "64"]]
    assert (tmp_path / "online" / "policy.safetensors").exists()


EXIT = """
import os, sys, torch
from lapo import distributed

def threads():
    return [open(f"/proc/self/task/{t}/comm").read().strip() for t in os.listdir("/proc/self/task")]

distributed.init("cpu")
torch.optim.Adam([torch.nn.Parameter(torch.ones(2))])  # imports torch._dynamo, as every run does
distributed.all_reduce_(torch.ones(3))
distributed._shutdown()  # what init registered to run at exit
alive = sum(t == "pt_gloo_runloop" for t in threads())
with open(os.path.join(sys.argv[1], "rank" + os.environ["RANK"]), "w") as f:  # own file each
    f.write(str(alive))
"""


@pytest.mark.slow  # two torchrun ranks, each importing torch: 15 s on an AVX2 EPYC
def test_exit_joins_the_process_groups_threads(tmp_path):
    # gloo's worker threads alive into interpreter finalisation abort one exit in five
    # ("terminate called without an active exception"): the group must be gone at exit
    (tmp_path / "exit.py").write_text(EXIT)
    done = subprocess.run(torchrun(str(tmp_path / "exit.py"), str(tmp_path)), capture_output=True,
                          text=True)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    # gloo worker threads still alive after the shutdown, per rank
    assert [(tmp_path / f"rank{r}").read_text() for r in (0, 1)] == ["0", "0"]
