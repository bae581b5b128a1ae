"""Stage 1 mechanics at toy sizes on real Procgen frames: shapes, schedule, files, resume,
probes, labels. The options beyond the paper: test_lam_options.py."""

import dataclasses
import functools
import json
import math
import sys

import numpy as np
import pytest
import torch
from cores import TORCH_THREADS
from lam_toy import TOY, collect_toy_coinrun
from margins import accuracy_se, assert_margin

from lapo.checkpoint import load_tensors
from lapo.cli import main
from lapo.config import LAMConfig
from lapo.config import preset as config_preset
from lapo.data.collect import collect
from lapo.data.dataset import WindowDataset
from lapo.models.lam import LatentActionModel
from lapo.schedules import lr_scale
from lapo.stages.lam import (
    lam_loss,
    plain_lam_loss,
    shuffled_latent_loss,
    train_lam,
)
from lapo.stages.lam_probe import probe_lam

preset = functools.partial(config_preset, LAMConfig)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return collect_toy_coinrun(tmp_path_factory.mktemp("lam") / "coinrun")


def test_paper_preset_matches_the_notes():
    cfg = preset("paper")
    assert (cfg.idm_width, cfg.wm_base, cfg.batch_size, cfg.steps) == (4, 24, 128, 50_000)
    assert (cfg.learning_rate, cfg.grad_clip) == (3e-4, 2.0)
    q = cfg.quantizer
    assert (q.num_codebooks, q.latents_per_codebook, q.code_dim, q.num_entries) == (2, 4, 16, 64)
    assert (q.commitment_cost, q.decay, q.latent_dim) == (0.05, 0.999, 128)
    # the reference's quantiser: counts from zero, stored smoothed, no restarts
    assert q.reference_counts and q.restart_unused_steps == 0
    assert (cfg.idm_lookahead, cfg.aug_shift, cfg.wm_target) == (1, 0, "pixels")


def test_cpu_preset_restarts_codes_amplifies_differences_and_weighs_changed_pixels():
    cfg = preset("cpu")
    assert cfg.quantizer.restart_unused_steps == 100
    assert cfg.idm_differences and cfg.idm_difference_scale == 10.0
    assert cfg.changed_pixel_weight == 30.0 and cfg.changed_pixel_threshold == 0.0
    assert cfg.precision == "auto" and preset("paper").precision == "fp32"


def test_lr_schedule_by_hand():
    cfg = LAMConfig(steps=1050, warmup_steps=50, warmup_start=0.1, final_lr_scale=0.01)
    assert lr_scale(0, cfg, cfg.final_lr_scale) == pytest.approx(0.1)
    assert lr_scale(25, cfg, cfg.final_lr_scale) == pytest.approx(0.55)
    assert lr_scale(50, cfg, cfg.final_lr_scale) == pytest.approx(1.0)
    assert lr_scale(550, cfg, cfg.final_lr_scale) == pytest.approx(0.505)
    assert lr_scale(1050, cfg, cfg.final_lr_scale) == pytest.approx(0.01)
    # under a time budget: the clock counts only once it is ahead of the steps (the budget will
    # end the run first); then 40% of the budget stands for 40% of the 1,050 steps
    assert lr_scale(50, cfg, cfg.final_lr_scale, time_fraction=0.04) == pytest.approx(1.0)
    assert lr_scale(550, cfg, cfg.final_lr_scale, time_fraction=0.4) == pytest.approx(0.505)
    assert lr_scale(210, cfg, cfg.final_lr_scale, time_fraction=0.4) == pytest.approx(
        1 - 0.99 * (420 - 50) / 1000
    )
    assert lr_scale(300, cfg, cfg.final_lr_scale, time_fraction=1.2) == pytest.approx(0.01)


def test_shuffled_latent_loss_differs_only_through_the_latent():
    torch.manual_seed(0)
    model = LatentActionModel(LAMConfig(**{**TOY, "threads": 0})).eval()
    frames = torch.rand(4, 3, 3, 64, 64) - 0.5
    same = frames[:1].expand(4, -1, -1, -1, -1).contiguous()
    _, logs = plain_lam_loss(model, same)
    # identical windows have identical latents: shuffling them changes nothing
    assert shuffled_latent_loss(model, same) == pytest.approx(float(logs["wm_loss"]), rel=1e-5)
    _, logs = plain_lam_loss(model, frames)
    assert shuffled_latent_loss(model, frames) != pytest.approx(float(logs["wm_loss"]), rel=1e-7)


def test_loss_shapes_and_gradients_reach_both_models():
    cfg = LAMConfig(**{**TOY, "threads": 0})
    model = LatentActionModel(cfg)
    frames = torch.rand(4, 3, 3, 64, 64) - 0.5
    loss, logs = plain_lam_loss(model, frames)
    assert loss.shape == () and {"wm_loss", "vq_loss", "perplexity"} <= set(logs)
    loss.backward()
    assert model.idm.encoder.fc.weight.grad.abs().sum() > 0, "no gradient through the quantiser"
    assert model.world_model.head[-1].weight.grad.abs().sum() > 0


def test_train_writes_run_and_resumes_with_identical_state(data, tmp_path):
    run = tmp_path / "run"
    cfg = LAMConfig(steps=8, **TOY)
    train_lam(cfg, data, run, progress=False)
    for name in ("config.json", "lam.safetensors", "checkpoint.safetensors", "metrics.csv"):
        assert (run / name).is_file(), name
    assert list((run / "tb").iterdir())
    _, meta = load_tensors(run / "checkpoint.safetensors")
    assert meta["step"] == 8
    untrained = json.loads((run / "untrained.json").read_text())
    baseline = untrained["probe"]
    assert untrained["test_wm_loss"] > 0
    assert baseline["n_train"] == 256 and baseline["n_test"] == 128
    # a longer budget continues from step 8 (restore itself: test_checkpoint.py)
    summary = train_lam(LAMConfig(steps=12, **TOY), data, run, progress=False)
    _, meta = load_tensors(run / "checkpoint.safetensors")
    assert meta["step"] == 12 and summary["steps"] == 12 and summary["stopped_by"] == "steps"
    # the untrained baseline is measured once, at step 0, and reported after a resume too
    assert summary["probe_untrained_accuracy"] == baseline["accuracy"]
    assert summary["test_wm_loss_shuffled_latent"] > 0
    steps = [int(r.split(",")[0]) for r in (run / "metrics.csv").read_text().splitlines()[1:]]
    assert steps == [0, 4, 8, 12]  # step 0: the untrained model


def test_probe_command_reports_json(data, tmp_path, capsys):
    run = tmp_path / "run"
    train_lam(LAMConfig(steps=4, **TOY), data, run, progress=False)
    assert (
        main(
            [
                "lam",
                "probe",
                "--run",
                str(run),
                "--data",
                str(data),
                "--labels",
                "200",
                "--test",
                "100",
            ]
        )
        == 0
    )
    rep = json.loads(capsys.readouterr().out)
    assert rep["labels"] == 200 and rep["n_test"] == 100
    assert rep["chance"] == pytest.approx(1 / 15)
    conf = np.array(rep["confusion"])
    assert conf.shape == (15, 15) and conf.sum() == 100
    assert rep["accuracy"] == pytest.approx(np.trace(conf) / 100)
    # more labels than windows: one line, exit 2
    assert main(["lam", "probe", "--run", str(run), "--data", str(data), "--labels", "999999"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "more than the" in err


def test_probe_target_labels_each_window_with_the_chosen_action(data, tmp_path):
    from lapo.data.dataset import WindowDataset

    run = tmp_path / "run"
    train_lam(LAMConfig(steps=2, **TOY), data, run, progress=False)
    # the same windows as probe_lam draws: train first, then test, from one generator
    train, test = WindowDataset(data, "train", k=3), WindowDataset(data, "test", k=3)
    rng = np.random.default_rng(0)
    rng.choice(train.starts, 200, replace=False)
    actions = test.read(np.sort(rng.choice(test.starts, 100, replace=False)))["actions"]
    for target, name in enumerate(("a[t-1]", "a[t]", "a[t+1]")):
        rep = probe_lam(run, data, labels=200, test_windows=100, seed=0, target=target)
        # the confusion matrix's rows count the true labels: the chosen action of each window
        rows = np.array(rep["confusion"]).sum(1)
        assert rep["target"] == name
        assert np.array_equal(rows, np.bincount(actions[:, target], minlength=15))


def test_cli_overrides_apply_to_the_preset(data, tmp_path, capsys):
    run = tmp_path / "cli"
    args = [
        "lam",
        "train",
        "--data",
        str(data),
        "--out",
        str(run),
        "--preset",
        "cpu",
        "--quiet",
        "--steps",
        "2",
        "--batch-size",
        "4",
        "--eval-every",
        "2",
        "--probe-every",
        "0",
        "--test-windows",
        "64",
        "--wm-base",
        "4",
        "--quantizer.kind",
        "fsq",
        "--threads",
        "1",
    ]
    assert main(args) == 0
    cfg = json.loads((run / "config.json").read_text())["lam"]
    assert cfg["steps"] == 2 and cfg["wm_base"] == 4 and cfg["quantizer"]["kind"] == "fsq"
    assert cfg["idm_width"] == preset("cpu").idm_width  # untouched fields keep the preset's


def test_resume_with_another_model_is_refused(data, tmp_path, capsys):
    run = tmp_path / "run"
    train_lam(LAMConfig(steps=4, **TOY), data, run, progress=False)
    before = (run / "checkpoint.safetensors").read_bytes()
    args = [
        "lam",
        "train",
        "--data",
        str(data),
        "--out",
        str(run),
        "--quiet",
        "--steps",
        "8",
        "--idm-width",
        "2",
    ]
    assert main(args) == 2
    assert "idm_width" in capsys.readouterr().err
    assert (run / "checkpoint.safetensors").read_bytes() == before


def test_plot_writes_every_promised_file(data, tmp_path, capsys):
    run = tmp_path / "run"
    train_lam(LAMConfig(steps=2, **TOY), data, run, progress=False)
    out = tmp_path / "plots"
    assert main(["lam", "plot", "--run", str(run), "--data", str(data), "--out", str(out)]) == 0
    files = json.loads(capsys.readouterr().out)["files"]
    assert set(files) == {"latents", "clusters", "predictions", "rollout"}
    from PIL import Image

    for path in files.values():
        with Image.open(path) as img:
            assert img.size[0] > 100 and img.size[1] > 100
    with Image.open(files["rollout"]) as gif:
        # PIL merges identical consecutive frames into one longer frame: count time instead
        total = 0
        for i in range(gif.n_frames):
            gif.seek(i)
            total += gif.info["duration"]
        assert total == 48 * 100


@pytest.mark.slow
def test_resume_after_kill_gives_the_uninterrupted_result(data, tmp_path, kill_after_checkpoint):
    cmd = [sys.executable, "-m", "lapo.cli", "lam", "train", "--data", str(data), "--quiet"]
    toy = [
        "--idm-width", "1", "--wm-base", "4", "--batch-size", "8", "--steps", "40",
        "--eval-every", "4", "--probe-every", "0", "--threads", "1", "--test-windows", "64",
        "--quantizer.num-codebooks", "1", "--quantizer.num-entries", "8",
    ]  # fmt: skip
    straight = tmp_path / "straight"
    assert main(cmd[3:] + toy + ["--out", str(straight)]) == 0
    run = tmp_path / "killed"
    kill_after_checkpoint(
        cmd + toy + ["--out", str(run)], run / "checkpoint.safetensors", "step", 8
    )
    _, meta = load_tensors(run / "checkpoint.safetensors")
    assert meta["step"] < 40, "the kill came too late to test a resume"
    assert main(cmd[3:] + toy + ["--out", str(run)]) == 0
    # same weights, optimiser and codebooks as the run that was never interrupted
    a, _ = load_tensors(straight / "checkpoint.safetensors")
    b, meta = load_tensors(run / "checkpoint.safetensors")
    assert meta["step"] == 40 and a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    steps = [int(r.split(",")[0]) for r in (run / "metrics.csv").read_text().splitlines()[1:]]
    assert steps == list(range(0, 41, 4))


def test_a_run_written_before_a_setting_existed_resumes_with_its_default(data, tmp_path):
    from lapo.checkpoint import CheckpointError, save_tensors

    cfg = LAMConfig(**{**TOY, "steps": 2, "eval_every": 2, "probe_every": 0})
    train_lam(cfg, data, tmp_path / "run", progress=False)
    # the checkpoint as an older version wrote it: without two settings added since
    ckpt = tmp_path / "run" / "checkpoint.safetensors"
    tensors, meta = load_tensors(ckpt)
    del meta["config"]["wm_action_everywhere"], meta["config"]["quantizer"]["reference_counts"]
    save_tensors(ckpt, tensors, meta)
    longer = dataclasses.replace(cfg, steps=4, eval_every=4)
    assert train_lam(longer, data, tmp_path / "run", progress=False)["steps"] == 4
    # a setting that was written and differs is still refused
    with pytest.raises(CheckpointError, match="learning_rate"):
        train_lam(dataclasses.replace(longer, steps=6, learning_rate=1e-2), data,
                  tmp_path / "run", progress=False)  # fmt: skip


def test_label_settings_bind_a_resume_only_when_stage1_uses_labels(data, tmp_path):
    from lapo.checkpoint import CheckpointError

    short = dict(TOY, steps=2, eval_every=2, probe_every=0)
    # a video-only run written when the default label weight was 0.01 resumes under today's
    train_lam(LAMConfig(**short, label_weight=0.01), data, tmp_path / "video", progress=False)
    longer = dict(short, steps=4, eval_every=4)
    assert train_lam(LAMConfig(**longer), data, tmp_path / "video", progress=False)["steps"] == 4
    # with labels the weight shapes the loss: a changed weight is refused
    train_lam(LAMConfig(**short, labels=16, label_weight=0.01), data, tmp_path / "labels",
              progress=False)  # fmt: skip
    with pytest.raises(CheckpointError, match="label_weight"):
        train_lam(LAMConfig(**longer, labels=16), data, tmp_path / "labels", progress=False)


def test_loss_is_the_sum_of_its_named_terms():
    from lapo.stages.lam import action_head_loss, changed_pixel_weights, variance_hinge

    cfg = LAMConfig(**TOY, changed_pixel_weight=4.0, latent_var_floor=0.5, labels=16)
    cfg = dataclasses.replace(cfg, label_weight=0.5)
    torch.manual_seed(0)
    model = LatentActionModel(cfg).eval()  # eval: the codebook stays put between the calls
    frames = torch.rand(4, 3, 3, 64, 64) - 0.5
    lab = (torch.rand(3, 3, 3, 64, 64) - 0.5, torch.tensor([0, 7, 14]))
    loss, logs = lam_loss(model, frames, cfg, lab)
    with torch.no_grad():
        z, q = model.idm(frames)
        err = model.prediction_error(frames[:, :2], frames[:, 2], q.z_q)  # (4, 3, 64, 64)
        hinge = torch.relu(0.5 - z.var(0)).mean()  # each latent dimension's variance vs 0.5
        ce, _ = action_head_loss(model, model.idm.encode(lab[0]), lab[1])
    assert torch.equal(variance_hinge(z, 0.5), hinge) and hinge > 0
    prediction = (err * changed_pixel_weights(frames, cfg)).mean()
    assert loss.item() == pytest.approx((prediction + q.loss + hinge + 0.5 * ce).item(), rel=1e-6)
    # the logs: the plain prediction error and each added term
    assert logs["wm_loss"].item() == pytest.approx(err.mean().item(), rel=1e-6)
    assert logs["latent_var_loss"].item() == pytest.approx(hinge.item(), rel=1e-6)
    assert logs["label_loss"].item() == pytest.approx(ce.item(), rel=1e-6)


def test_time_budget_stops_training_and_a_rerun_does_not_go_on(data, tmp_path):
    run = tmp_path / "timed"
    cfg = LAMConfig(**{**TOY, "steps": 10_000, "probe_every": 0, "max_minutes": 0.02})
    summary = train_lam(cfg, data, run, progress=False)
    assert 0 < summary["steps"] < 10_000 and summary["train_seconds"] >= 1.2
    assert summary["stopped_by"] == "max_minutes"
    again = train_lam(cfg, data, run, progress=False)
    assert again["steps"] == summary["steps"]
    import csv

    rows = list(csv.DictReader((run / "metrics.csv").open()))
    assert float(rows[-1]["train_seconds"]) >= 1.2


def test_a_step_spent_suspended_is_charged_the_previous_steps_time():
    import os
    import signal
    import time

    from lapo.runs import StepClock

    clock = StepClock(5.0)  # a resumed run: 5 s of steps already spent
    with clock:
        time.sleep(0.05)
    first = clock.seconds - 5.0
    assert 0.05 <= first < 0.5
    # a step during which the process was stopped (SIGSTOP, Ctrl-Z) and continued: the SIGCONT
    # that resumed it marks the step, which then costs what the step before it did
    with clock:
        os.kill(os.getpid(), signal.SIGCONT)
        time.sleep(0.6)
    assert clock.seconds == pytest.approx(5.0 + 2 * first)
    with clock:  # the next step is timed again
        time.sleep(0.01)
    assert 0.01 <= clock.seconds - (5.0 + 2 * first) < 0.3


def test_labelled_and_unlabelled_batches_both_reach_the_gradient():
    from lapo.envs import NUM_ACTIONS

    cfg = LAMConfig(**{**TOY, "labels": 16, "label_weight": 0.5})
    torch.manual_seed(0)
    model = LatentActionModel(cfg).eval()  # eval: the codebook stays put between the calls
    frames = torch.rand(4, 3, 3, 64, 64) - 0.5
    lab = (torch.rand(3, 3, 3, 64, 64) - 0.5, torch.tensor([0, 7, 14]))
    assert NUM_ACTIONS == 15

    def grad(unlabelled: bool, labelled: bool) -> torch.Tensor:
        model.zero_grad()
        if unlabelled:
            loss, _ = lam_loss(model, frames, cfg, lab if labelled else None)
        else:  # the labelled term alone, by hand
            z, _ = model.idm(lab[0])
            loss = 0.5 * torch.nn.functional.cross_entropy(model.action_head(z), lab[1])
        loss.backward()
        return model.idm.encoder.fc.weight.grad.clone()

    both, video, labels = grad(True, True), grad(True, False), grad(False, True)
    assert video.abs().sum() > 0 and labels.abs().sum() > 0
    torch.testing.assert_close(both, video + labels)  # removing either changes the gradient
    _, logs = lam_loss(model, frames, cfg, lab)
    assert 0 <= logs["label_accuracy"] <= 1 and logs["label_loss"] > 0


def test_stage1_with_labels_uses_exactly_the_recorded_windows(data, tmp_path, monkeypatch):
    import lapo.stages.lam_data as lam_data
    from lapo.data.labels import read_labelled

    seen = []
    real = lam_data.labelled_batch

    def spy(ds, starts, cfg, rng, device):
        seen.append(np.asarray(starts).copy())
        x, y = real(ds, starts, cfg, rng, device)
        return x, y

    monkeypatch.setattr(lam_data, "labelled_batch", spy)
    run = tmp_path / "labelled"
    cfg = LAMConfig(**{**TOY, "steps": 3, "probe_every": 0, "labels": 20, "labels_seed": 3})
    train_lam(cfg, data, run, progress=False)
    recorded = read_labelled(run)
    assert len(recorded) == 20 and len(seen) == 3
    assert all(np.array_equal(s, recorded) for s in seen)
    # the draw is decode offline's: the same seed gives the same windows there
    from lapo.data.labels import labelled_starts

    assert np.array_equal(labelled_starts(data, 20, 3), recorded)
    # each labelled batch holds windows from those starts, with their true middle actions
    from lapo.data.dataset import DeviceWindows, WindowDataset

    ds = WindowDataset(data, "train", k=3)
    cpu = torch.device("cpu")
    x, y = real(DeviceWindows(ds, cpu), recorded, cfg, np.random.default_rng(0), cpu)
    assert x.shape == (cfg.batch_size // 4, 3, 3, 64, 64) and y.shape == (cfg.batch_size // 4,)
    assert set(y.tolist()) <= set(ds.arrays["actions"][recorded + 1].tolist())


def test_stage1_labels_bad_input_is_one_line(data, tmp_path, capsys):
    base = ["lam", "train", "--data", str(data), "--quiet", "--steps", "1", "--probe-every", "0"]
    assert main(base + ["--out", str(tmp_path / "a"), "--labels", "999999"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "more than the" in err
    assert main(base + ["--out", str(tmp_path / "b"), "--labels-from", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "labelled_windows.json" in err


@pytest.mark.slow
def test_labels_in_stage1_lift_the_probe_above_the_same_run_without(tmp_path):
    # coinrun: the camera follows the agent, so its move shifts the whole frame; with amplified
    # frame differences a supervised IDM learns it in a few hundred steps (docs/stage1.md)
    data = tmp_path / "coinrun"
    collect("coinrun", "random", 6_000, data, test_frames=8_192, num_envs=8, progress=False)
    base = {
        **TOY,
        "idm_differences": True,
        "idm_difference_scale": 10.0,
        "steps": 200,
        "batch_size": 8,
        "learning_rate": 1e-3,
        "eval_every": 200,
        "probe_every": 0,  # one probe of each run at the end, below (none of the untrained)
        "threads": TORCH_THREADS,
    }
    train_lam(LAMConfig(**base), data, tmp_path / "video", progress=False)
    labels = dict(labels=1_000, label_weight=1.0, label_batch=32)
    train_lam(LAMConfig(**base, **labels), data, tmp_path / "labels", progress=False)
    # the two probes are fit and tested apart: the s.e. of their difference is the root of the
    # sum of squares. Measured (an AMD EPYC with AVX512, float32, the probes during training):
    # 0.163 against 0.108, 10.2 s.e., at two torch threads; 0.165 against 0.108, 10.7 s.e., at
    # one (another path). This form, one thread of an AVX2-only EPYC: 0.159 against 0.097,
    # 11.9 s.e., in 165 s against 256 s for the form with probes during training beside it
    a, b = (probe_lam(tmp_path / r, data, 2_048, 8_192)["accuracy"] for r in ("labels", "video"))
    n = min(8_192, len(WindowDataset(data, "test", k=3)))
    se = math.hypot(accuracy_se(a, n), accuracy_se(b, n))
    assert_margin("probe with labels over without", a, b, se)


def test_head_report_scores_the_action_head_by_hand():
    from lapo.evaluation.probe import head_report, probe_windows

    cfg = LAMConfig(**{**TOY, "labels": 16})
    model = LatentActionModel(cfg)
    with torch.no_grad():  # latent dimension i (of 8) votes for action i
        model.action_head.weight.zero_()
        model.action_head.weight[:8, :8] = torch.eye(8)
        model.action_head.bias.zero_()
    z = torch.eye(8)[[0, 1, 2, 5, 1, 1]]  # the head names actions 0, 1, 2, 5, 1, 1
    rep = head_report(model, z, np.array([0, 1, 2, 3, 0, 0]))
    # right on 3 of 6; recall: action 0 1/3, actions 1 and 2 1/1, action 3 0/1
    assert rep["head_accuracy"] == pytest.approx(0.5)
    assert rep["head_balanced_accuracy"] == pytest.approx((1 / 3 + 1 + 1 + 0) / 4)
    # the probe reports the head beside itself, and only for a model that has one
    rng = np.random.default_rng(0)
    windows = lambda n: {  # noqa: E731
        "obs": rng.integers(0, 256, (n, 3, 64, 64, 3), dtype=np.uint8),
        "actions": rng.integers(0, 15, (n, 3)),
    }
    train, test = windows(32), windows(16)
    cpu = torch.device("cpu")
    assert "head_accuracy" in probe_windows(model, train, test, cpu, epochs=1)
    video = LatentActionModel(LAMConfig(**TOY))
    assert "head_accuracy" not in probe_windows(video, train, test, cpu, epochs=1)


def test_a_metrics_csv_with_fewer_columns_gets_the_new_header_on_resume(tmp_path):
    import csv

    from lapo.runs import CsvLog

    path = tmp_path / "metrics.csv"
    old = CsvLog(path, ["step", "loss"])
    old.write_dict({"step": 10, "loss": 0.5})
    old.write_dict({"step": 20, "loss": 0.4})
    old.close()
    new = CsvLog(path, ["step", "loss", "head_acc"], resume_at=10)
    new.write_dict({"step": 20, "loss": 0.3, "head_acc": 0.2})
    new.close()
    rows = list(csv.DictReader(path.open()))
    assert [r["step"] for r in rows] == ["10", "20"]  # the row after the resume point redone
    assert rows[0]["head_acc"] is None and rows[1]["head_acc"] == "0.2"


def test_probe_pair_reports_both_probes_on_the_same_windows(data, tmp_path, capsys):
    from lapo.data.dataset import WindowDataset

    run = tmp_path / "run"
    train_lam(LAMConfig(steps=2, **TOY), data, run, progress=False)
    args = ["lam", "probe", "--run", str(run), "--data", str(data), "--labels", "200",
            "--test", "100", "--pair"]  # fmt: skip
    assert main(args) == 0
    rep = json.loads(capsys.readouterr().out)
    pair = rep["pair"]
    assert rep["n_test"] == pair["n_test"] == 100 and rep["n_train"] == pair["n_train"] == 200
    # both label the four-frame window o[t-2..t+1] with a[t], the action at o[t]
    train, test = WindowDataset(data, "train", k=4), WindowDataset(data, "test", k=4)
    rng = np.random.default_rng(0)
    rng.choice(train.starts, 200, replace=False)
    actions = test.read(np.sort(rng.choice(test.starts, 100, replace=False)))["actions"]
    rows = np.bincount(actions[:, 2], minlength=15)
    assert np.array_equal(np.array(rep["confusion"]).sum(1), rows)
    assert np.array_equal(np.array(pair["confusion"]).sum(1), rows)
    assert 0 <= pair["accuracy"] <= 1 and "pair" not in pair
