"""What stage 1 learns on real frames at the `cpu` preset, in float32 on one thread: a test of
its own file, so that under pytest-xdist (whole files per worker) it runs beside test_lam.py's
other learning test rather than after it."""

import dataclasses

import numpy as np
import pytest
import torch
from margins import assert_margin, paired_se

from lapo.config import LAMConfig, preset
from lapo.data.collect import collect
from lapo.data.dataset import WindowDataset
from lapo.models.frames import frames_to_float
from lapo.models.lam import LatentActionModel
from lapo.runkinds import load_lam
from lapo.stages.lam import train_lam


@pytest.fixture(scope="module")
def random_bigfish(tmp_path_factory):
    out = tmp_path_factory.mktemp("learn") / "bigfish"
    collect("bigfish", "random", 16384, out, test_frames=8192, num_envs=16, progress=False)
    return out


def own_and_shuffled_errors(model: LatentActionModel, data, n: int) -> tuple[np.ndarray, ...]:
    """Per test window, the world model's MSE with the window's own latent and with another
    window's, on ``n`` test windows drawn by seed 0 (or all). Each batch of 256 is a random
    draw, rolled by one for "another": a neighbour in time would carry nearly the same latent
    (sorted windows gave a gap of 1.4 s.e. where random pairs gave 8.7, seed 1)."""
    ds = WindowDataset(data, "test", k=3)
    n = min(n, len(ds.starts))
    starts = np.random.default_rng(0).choice(ds.starts, n, replace=False)
    own, shuffled = [], []
    with torch.no_grad():
        for i in range(0, n, 256):
            batch = np.sort(starts[i : i + 256])  # random windows, read in file order
            f = frames_to_float(torch.from_numpy(ds.read(batch)["obs"]))
            _, q = model.idm(f[:, :3])  # (B, A)
            for z, out in ((q.z_q, own), (q.z_q.roll(1, dims=0), shuffled)):
                out.append(model.prediction_error(f[:, :2], f[:, 2], z).flatten(1).mean(1))
    return torch.cat(own).numpy(), torch.cat(shuffled).numpy()


@pytest.mark.slow
def test_cpu_preset_learns_a_latent_its_world_model_relies_on(random_bigfish, tmp_path):
    # The `cpu` preset on real random-policy bigfish frames, float32 on one thread, 300 steps.
    # What stage 1 learns robustly at this budget: a world model far better than untrained, and
    # a latent it relies on (each window's own latent predicts o[t+1] better than another
    # window's; an untrained model shows no gap, a model that ignores its latent none either).
    # Whether the latent carries the *action* is not asserted here: on bigfish the probe lifts
    # only after ~1,000-3,000 steps, at a step that moves with the CPU's rounding (measured on
    # an AVX512 EPYC, seed 0: probe 0.077 untrained, 0.073 at 600 steps); the ablation measures
    # it (docs/results/stage1.md), and test_labels_in_stage1_lift... checks it with labels.
    # Measured (an AMD EPYC with AVX2 only, float32, one thread, 8,022 test windows, 300 steps,
    # 2026-12-07): the gap was 16.9 s.e. at seed 0 (the test's), 8.7 at seed 1 and 19.2 at
    # seed 2 (another CPU's rounding takes another path, as another seed does); world-model MSE
    # 0.0054-0.0057 against 0.108-0.159 untrained. On 4,096 windows 11.8 and 5.9 (seeds 0, 1);
    # at 400 steps on 4,096 windows 15.0 and 7.9; at 500 steps (an AVX512 EPYC) 22.1, 12.0 and
    # 25.5, in about 1.4 times the time.
    cfg = dataclasses.replace(
        preset(LAMConfig, "cpu"),
        steps=300,
        max_minutes=0.0,  # the steps end the run, and set the lr, whatever the CPU's speed
        eval_every=300,
        probe_every=0,
        precision="fp32",
        threads=1,
    )
    summary = train_lam(cfg, random_bigfish, tmp_path / "run", progress=False)
    # the world model learns: its test MSE falls below a tenth of the untrained model's (~1/30)
    assert summary["test_wm_loss"] < 0.1 * summary["test_wm_loss_untrained"], summary
    model, _ = load_lam(tmp_path / "run")
    own, shuffled = own_and_shuffled_errors(model.eval(), random_bigfish, 8192)
    gap = shuffled - own  # (n,) paired per window
    assert_margin("world model's error, another window's latent over its own", gap.mean(), 0.0,
                  paired_se(gap))  # fmt: skip
