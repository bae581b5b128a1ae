"""Stages 2 and 3 and the baselines at small sizes on real Procgen data.

One module-scoped pipeline on the shipped coinrun demonstrator's data: a tiny stage 1, a tiny
stage 2 and an offline decoding, shared by the tests below; each test checks one promise
(losses fall, the decoder beats chance, the decoded policy beats random in the game, online
decoding updates only what its schedule allows, the baselines run, bad input is one line).
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from cores import TORCH_THREADS
from margins import accuracy_se, assert_margin, paired_se
from torch.distributions import Categorical

from lapo.checkpoint import CheckpointError, load_tensors, read_json, write_json
from lapo.cli import main
from lapo.config import BCConfig, LAMConfig, OfflineConfig, OnlineConfig, SupervisedIDMConfig
from lapo.config import preset as config_preset
from lapo.data.collect import collect
from lapo.data.dataset import DeviceWindows, WindowDataset
from lapo.data.format import DatasetWriter, new_manifest, open_dataset
from lapo.data.labels import choose_labelled, labelled_starts, read_labelled
from lapo.envs import ProcgenVecEnv
from lapo.evaluation.episodes import run_episodes
from lapo.evaluation.policies import load_policy
from lapo.models.frames import frames_to_float
from lapo.models.idm import stack_frames
from lapo.models.policy import ActionDecoder, OnlineAgent
from lapo.rl.ppo import compute_gae
from lapo.runkinds import load_lam, load_stage2
from lapo.schedules import lr_scale
from lapo.stages.baselines import IDMActionTargets, supervised_idm
from lapo.stages.bc import ActionTargets, action_bc_loss, latent_head_loss, train_latent_bc
from lapo.stages.decode import fit_decoder
from lapo.stages.decode.offline import decode_offline
from lapo.stages.decode.online import (
    GROUP_SCHEDULES,
    decode_online,
    decoder_fit_due,
    group_lr,
    make_optimizer,
    ppo_update,
)
from lapo.stages.lam import train_lam

GAME = "coinrun"
LABELS = 1000  # K labelled train windows for offline decoding
CHANCE = 1 / 15

# stage 2 at a small, fast size (cpu preset otherwise)
BC = dataclasses.replace(
    config_preset(BCConfig, "cpu"),
    batch_size=16,
    steps=250,
    warmup_steps=60,
    eval_every=125,
    threads=TORCH_THREADS,
)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """Real frames of the shipped coinrun demonstrator, with its actions."""
    out = tmp_path_factory.mktemp("stages23") / "coinrun"
    collect(GAME, "demonstrator", 4000, out, test_frames=600, num_envs=8, progress=False)
    return out


@pytest.fixture(scope="module")
def lam_run(data, tmp_path_factory):
    out = tmp_path_factory.mktemp("lam") / "run"
    cfg = dataclasses.replace(
        config_preset(LAMConfig, "cpu"),
        batch_size=16,
        steps=100,
        eval_every=100,
        probe_every=0,
        threads=TORCH_THREADS,
    )
    train_lam(cfg, data, out, progress=False)
    return out


@pytest.fixture(scope="module")
def stage2(lam_run, data, tmp_path_factory):
    """``(run folder, summary)`` of a small stage-2 run."""
    out = tmp_path_factory.mktemp("bc") / "run"
    summary = train_latent_bc(BC, lam_run, data, out, progress=False)
    return out, summary


@pytest.fixture(scope="module")
def decoded(stage2, data, tmp_path_factory):
    """An offline decoding of the stage-2 run on K labels."""
    out = tmp_path_factory.mktemp("decoded") / "k"
    decode_offline(stage2[0], data, out, OfflineConfig(labels=LABELS, steps=500))
    return out


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def real_obs(n: int = 4) -> np.ndarray:
    env = ProcgenVecEnv(GAME, n, seed=7)
    obs, _ = env.reset()
    env.close()
    return obs


def assert_acts(policy_dir: Path) -> None:
    actions = load_policy(policy_dir, GAME).act(real_obs())
    assert actions.shape == (4,) and ((actions >= 0) & (actions < 15)).all()


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err
    assert err.startswith("lapo: error: ") and err.count("\n") == 1, err
    assert "Traceback" not in err
    return err


# ---------------------------------------------------------------------------------------------
# Stage 2


def test_lr_scale_by_hand():
    cfg = BCConfig(steps=1100, warmup_steps=100, warmup_start=0.01)
    assert lr_scale(0, cfg) == pytest.approx(0.01)
    assert lr_scale(50, cfg) == pytest.approx(0.505)
    assert lr_scale(100, cfg) == pytest.approx(1.0)
    assert lr_scale(600, cfg) == pytest.approx(0.5)
    assert lr_scale(1099, cfg) == pytest.approx(0.001)
    assert lr_scale(1100, cfg) == 0.0
    assert lr_scale(5000, cfg) == 0.0  # never negative past the end


def test_action_bc_loss_with_label_smoothing_by_hand():
    # two actions of 15: logits 2 on action 0 and 0 elsewhere, targets 0 and 3
    logits = torch.zeros(2, 15)
    logits[:, 0] = 2.0
    log_z = np.log(np.exp(2.0) + 14)  # log of the softmax's normaliser
    log_p0, log_p_other = 2.0 - log_z, -log_z
    mean_log_p = (log_p0 + 14 * log_p_other) / 15  # what the smoothed mass sees
    eps = 0.05
    on_0 = -(1 - eps) * log_p0 - eps * mean_log_p
    on_3 = -(1 - eps) * log_p_other - eps * mean_log_p
    y = torch.tensor([0, 3])
    assert action_bc_loss(logits, y, eps).item() == pytest.approx((on_0 + on_3) / 2, rel=1e-6)
    assert action_bc_loss(logits, y).item() == pytest.approx(-(log_p0 + log_p_other) / 2, rel=1e-6)
    # the baselines train with the preset's smoothing and report the plain test loss
    targets = ActionTargets(torch.device("cpu"), config_preset(BCConfig, "cpu").label_smoothing)
    assert targets.loss(logits, y).item() == pytest.approx((on_0 + on_3) / 2, rel=1e-6)
    assert targets.test_loss(logits, y).item() == pytest.approx(-(log_p0 + log_p_other) / 2)


def test_presets():
    paper, cpu = config_preset(BCConfig, "paper"), config_preset(BCConfig, "cpu")
    assert (paper.width, paper.learning_rate, paper.warmup_steps) == (4, 2e-4, 1_000)
    assert (paper.batch_size, paper.steps) == (128, 60_000)
    assert (cpu.width, cpu.learning_rate, cpu.warmup_steps) == (1, 1e-3, 100)
    assert (cpu.batch_size, cpu.steps) == (32, 2_000)
    cpu.steps = 1
    assert config_preset(BCConfig, "cpu").steps == 2_000  # a copy, not the table's entry
    with pytest.raises(ValueError, match="unknown preset"):
        config_preset(BCConfig, "gpu")


def test_stage2_lowers_its_test_loss_on_real_data(stage2, lam_run):
    run, summary = stage2
    # better than the untrained network, and than the best constant (the mean latent)
    assert summary["test_loss"] < summary["untrained_test_loss"]
    assert summary["test_loss"] < summary["untrained_test_loss_mean_prediction"]
    for name in ("config.json", "policy.safetensors", "idm.safetensors", "metrics.csv"):
        assert (run / name).is_file(), name
    assert list((run / "tb").iterdir())
    config = read_json(run / "config.json")
    lam_config = read_json(lam_run / "config.json")
    assert config["kind"] == "latent-policy" and config["game"] == GAME
    assert config["latent_dim"] == lam_config["latent_dim"]
    assert config["network"] == {
        "class": "latent-policy",
        "latent_dim": lam_config["latent_dim"],
        "width": 1,
    }
    # the IDM beside the policy is stage 1's, unchanged: stage 2 trains only the policy
    _, idm, _ = load_stage2(run)
    lam, _ = load_lam(lam_run)
    for k, v in lam.idm.state_dict().items():
        assert torch.equal(idm.state_dict()[k], v), k
    rows = read_csv(run / "metrics.csv")
    assert [int(r["step"]) for r in rows] == [0, 125, 250]
    assert float(rows[0]["test_loss"]) == pytest.approx(summary["untrained_test_loss"])
    assert float(rows[-1]["test_loss"]) == pytest.approx(summary["test_loss"])
    # the logged rate is the schedule's at the last step taken
    assert float(rows[-1]["lr"]) == pytest.approx(BC.learning_rate * lr_scale(BC.steps - 1, BC))


# ---------------------------------------------------------------------------------------------
# Offline decoding


def test_offline_decoder_beats_chance_on_held_out_labels(decoded, data):
    report = read_json(decoded / "decode.json")
    n = report["test_windows"]
    assert n == len(WindowDataset(data, "test", k=3))  # fewer than 4096: all of them
    accuracy = report["decoder_accuracy_on_idm_latents"]
    # measured (AMD EPYC with AVX512, float32): 0.284 against 1/15, 20.7 s.e.
    assert_margin("offline decoder over chance", accuracy, CHANCE, accuracy_se(CHANCE, n))
    assert report["chance"] == pytest.approx(CHANCE)
    assert sum(report["labelled_action_counts"]) == LABELS
    config = read_json(decoded / "config.json")
    assert config["kind"] == "decoded-policy" and config["game"] == GAME
    assert_acts(decoded)


def test_labelled_windows_are_k_distinct_starts_chosen_by_seed(decoded, data):
    starts = read_labelled(decoded)
    train = WindowDataset(data, "train", k=3)
    assert len(starts) == LABELS and len(np.unique(starts)) == LABELS
    assert np.isin(starts, train.starts).all()
    # the same seed draws the same windows, another seed others
    assert np.array_equal(choose_labelled(train, LABELS, 0, data), starts)
    other = choose_labelled(train, LABELS, 1, data)
    assert len(np.intersect1d(other, starts)) < LABELS
    # the baselines draw them as decoding does, or read them from the decoding run
    assert np.array_equal(labelled_starts(data, LABELS, 0), starts)
    assert np.array_equal(labelled_starts(data, 64, 5, labels_from=decoded), starts)


def test_decoded_policy_beats_random_in_the_game(decoded):
    # both play from the same env seed: env i's j-th episode is on the same level for both,
    # so the returns pair up episode by episode (the level's difficulty cancels)
    # 160 episodes: the decoded policy led random play by 4.6 s.e. over 64 (4.53 against 2.03),
    # by 6.9 over 160 (5.00 against 2.69; AMD EPYC with AVX512, float32)
    episodes, seed = 160, 100
    dec = run_episodes(load_policy(decoded, GAME, seed=seed), GAME, episodes, seed=seed)
    rnd = run_episodes(load_policy("random", GAME, seed=seed), GAME, episodes, seed=seed)
    assert len(dec) == len(rnd) == episodes
    assert_margin("decoded policy over random", dec.mean(), rnd.mean(), paired_se(dec - rnd))


# ---------------------------------------------------------------------------------------------
# Online decoding


def test_group_lr_by_hand():
    cfg = OnlineConfig(learning_rate=1e-2, lr_decay_frames=4_000_000)
    expected = {
        # frames: (value_head, rl_head, rl_fc)
        0: (0.0, 0.0, 0.0),
        30_000: (1e-2 / 4 * 0.2 * 0.9925, 0.0, 0.0),
        40_000: (1e-2 / 4 * 0.6 * 0.99, 1e-2 / 4 / 3 * 0.99, 0.0),
        50_000: (1e-2 / 4 * 0.9875, 1e-2 / 4 * 0.9875, 0.0),
        125_000: (1e-2 / 4 * 0.96875, 1e-2 / 4 * 0.96875, 1e-2 / 10 * 0.5 * 0.96875),
        200_000: (1e-2 / 4 * 0.95, 1e-2 / 4 * 0.95, 1e-2 / 10 * 0.95),
        4_000_000: (0.0, 0.0, 0.0),
        5_000_000: (0.0, 0.0, 0.0),
    }
    for frames, rates in expected.items():
        got = tuple(group_lr(g, frames, cfg) for g in ("value_head", "rl_head", "rl_fc"))
        assert got == pytest.approx(rates, abs=1e-12), frames
    assert set(GROUP_SCHEDULES) == {"value_head", "rl_head", "rl_fc"}


def test_decoder_fit_due_by_hand():
    cfg = OnlineConfig()  # fits from 10k to 400k frames; every update to 50k, then every 20th
    assert not decoder_fit_due(1, 4_096, cfg)
    assert decoder_fit_due(3, 10_000, cfg)
    assert decoder_fit_due(7, 50_000, cfg)
    assert not decoder_fit_due(13, 53_248, cfg)
    assert decoder_fit_due(20, 81_920, cfg)
    assert decoder_fit_due(100, 400_000, cfg)
    assert not decoder_fit_due(120, 491_520, cfg)


def rollout(agent: OnlineAgent, cfg: OnlineConfig) -> dict[str, torch.Tensor]:
    """A real rollout of ``agent`` in coinrun, as :func:`decode_online` collects one."""
    T, N = cfg.num_steps, cfg.num_envs
    env = ProcgenVecEnv(GAME, N, seed=3)
    obs = torch.from_numpy(env.reset()[0])
    done = torch.zeros(N)
    buf: dict[str, list] = {k: [] for k in ("feats", "actions", "logprobs", "values", "rewards")}
    dones = []
    for _ in range(T):
        f = agent.trunk_features(obs)
        with torch.no_grad():
            logits, value = agent.heads(f)
        dist = Categorical(logits=logits)
        action = dist.sample()
        obs_np, reward, term, trunc, _ = env.step(action.numpy())
        dones.append(done)
        step = (f, action, dist.log_prob(action), value, torch.from_numpy(reward))
        for k, v in zip(buf, step, strict=True):
            buf[k].append(v)
        obs, done = torch.from_numpy(obs_np), torch.from_numpy((term | trunc).astype(np.float32))
    env.close()
    out = {k: torch.stack(v) for k, v in buf.items()}
    with torch.no_grad():
        _, next_value = agent.heads(agent.trunk_features(obs))
    adv, ret = compute_gae(
        out["rewards"], out["values"], torch.stack(dones), next_value, done, 0.999, 0.95
    )
    return {
        "feats": out["feats"].reshape(T * N, -1),
        "actions": out["actions"].reshape(-1),
        "logprobs": out["logprobs"].reshape(-1),
        "advantages": adv.reshape(-1),
        "returns": ret.reshape(-1),
    }


@pytest.mark.parametrize(
    "frames, moved",
    [(0, set()), (40_000, {"value_head", "rl_head"})],
)
def test_one_ppo_update_moves_only_the_scheduled_groups(stage2, frames, moved):
    policy, _, _ = load_stage2(stage2[0])
    torch.manual_seed(0)
    agent = OnlineAgent.from_latent_policy(policy)
    cfg = OnlineConfig(num_envs=4, num_steps=8, num_minibatches=2, update_epochs=2)
    batch = rollout(agent, cfg)
    before = {k: v.clone() for k, v in agent.state_dict().items()}
    optimizer = make_optimizer(agent)
    agent.train()
    ppo_update(agent, optimizer, **batch, frames=frames, cfg=cfg, rng=np.random.default_rng(0))
    assert {g["name"]: g["lr"] for g in optimizer.param_groups} == {
        g: group_lr(g, frames, cfg) for g in GROUP_SCHEDULES
    }
    after = agent.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    # every tensor of a group with a non-zero rate moved; all others are bit-identical
    assert changed == {k for k in before if k.split(".")[0] in moved}


@pytest.mark.slow
def test_decode_online_end_to_end(stage2, tmp_path):
    out = tmp_path / "online"
    cfg = OnlineConfig(
        frames=64, num_envs=4, num_steps=8, decoder_fit_start=0, threads=1, device="cpu"
    )
    summary = decode_online(cfg, stage2[0], GAME, out, progress=False)
    assert summary["decoder_fits"] == 2 and summary["frames"] == 64
    rows = read_csv(out / "metrics.csv")
    assert [(int(r["update"]), int(r["frames"])) for r in rows] == [(1, 32), (2, 64)]
    assert [int(r["decoder_fits"]) for r in rows] == [1, 2]
    pairs = [int(r["decoder_pairs"]) for r in rows]
    # each rollout of 8 steps x 4 envs gives at most 6 x 4 in-episode triples
    assert 0 < pairs[0] <= 24 and pairs[0] < pairs[1] <= 48
    config = read_json(out / "config.json")
    assert config["kind"] == "online-agent" and config["game"] == GAME
    assert config["frames_trained"] == 64
    # below 25k frames every PPO rate is 0: the trunk and latent path are the stage-2
    # policy's, the RL head still zero; only the decoder was re-fit
    agent, _ = load_tensors(out / "policy.safetensors")
    policy, _, _ = load_stage2(stage2[0])
    for k, v in policy.encoder.stacks.state_dict().items():
        assert torch.equal(agent[f"trunk.{k}"], v), k
    for k, v in policy.head.state_dict().items():
        assert torch.equal(agent[f"latent_head.{k}"], v), k
    assert not agent["rl_head.weight"].any() and not agent["rl_head.bias"].any()
    fresh = ActionDecoder(policy.latent_dim)
    assert not torch.equal(agent["decoder.z_mean"], fresh.z_mean)
    assert_acts(out)


# ---------------------------------------------------------------------------------------------
# Baselines


def first_chunks(src: Path, dst: Path, actions: bool) -> Path:
    """A small dataset of real frames: the first chunk of each split of ``src``, with or
    without its actions and rewards."""
    info = open_dataset(src)
    m = info.manifest
    manifest = new_manifest(GAME, m["env"], m["policy"], actions, m["chunk_frames"], 0, {})
    writer = DatasetWriter(dst, manifest)
    dst.mkdir(parents=True)
    writer.write_manifest()
    names = ["obs", "dones", "episode_ids", "level_seeds"] + ["actions", "rewards"] * actions
    for split in ("train", "test"):
        chunk = info.chunks[split][0]
        w = writer.new_chunk(split)
        w.append(**{k: np.load(chunk.path / f"{k}.npy") for k in names})
        writer.commit(split, w, [])
    return dst


BASELINE_TOY = [
    "--steps", "20", "--batch-size", "8", "--threads", "1", "--eval-every", "10",
    "--test-windows", "64", "--width", "1", "--quiet",
]  # fmt: skip


def test_bc_baseline_runs_and_reuses_the_decoders_windows(data, decoded, tmp_path, capsys):
    out = tmp_path / "bc"
    args = ["baseline", "bc", "--data", str(data), "--labels", "64", "--out", str(out)]
    assert main(args + ["--labels-from", str(decoded)] + BASELINE_TOY) == 0
    summary = json.loads(capsys.readouterr().out)
    assert "test_accuracy" in summary
    config = read_json(out / "config.json")
    assert config["kind"] == "action-policy" and config["baseline"] == "bc-on-labels"
    # --labels-from wins over --labels: the decoder's K windows
    assert config["labels"] == LABELS and config["train_windows"] == LABELS
    assert [int(r["step"]) for r in read_csv(out / "metrics.csv")] == [0, 10, 20]
    assert_acts(out)


def test_idm_bc_baseline_runs_and_keeps_the_true_labels(data, decoded, tmp_path, capsys):
    # the supervised IDM labels every train window: a small dataset keeps that quick
    small = first_chunks(data, tmp_path / "small", actions=True)
    out = tmp_path / "idm-bc"
    args = ["baseline", "idm-bc", "--data", str(small), "--labels", "64", "--out", str(out)]
    assert main(args + ["--idm-steps", "10"] + BASELINE_TOY) == 0
    summary = json.loads(capsys.readouterr().out)
    assert 0 <= summary["idm_test_accuracy"] <= 1
    config = read_json(out / "config.json")
    assert config["baseline"] == "idm-labels-bc" and config["labels"] == 64
    # BC's targets: the K labelled windows keep their true action, the others get the
    # saved supervised IDM's
    tensors, report = load_tensors(out / "supervised_idm.safetensors")
    idm_cfg = SupervisedIDMConfig(**report["idm"])
    idm = supervised_idm(idm_cfg)
    idm.load_state_dict(tensors)
    train = WindowDataset(small, "train", k=3)
    starts = labelled_starts(small, 64, 0)
    targets = IDMActionTargets(idm, idm_cfg, starts, torch.device("cpu"))
    others = np.setdiff1d(train.starts, starts)[:64]
    batch = DeviceWindows(train, torch.device("cpu"))(np.concatenate([starts, others]))
    y = targets(batch).numpy()
    assert np.array_equal(y[:64], train.arrays["actions"][starts + 1])
    x = stack_frames(frames_to_float(batch["obs"][64:]), idm_cfg.differences,
                     idm_cfg.difference_scale)  # fmt: skip
    with torch.no_grad():
        assert np.array_equal(y[64:], idm.eval()(x).argmax(-1).numpy())
    assert_acts(out)
    # another dataset's decoding run: refused, whether or not its window starts exist here
    args = ["baseline", "idm-bc", "--data", str(small), "--labels-from", str(decoded)]
    assert main(args + ["--out", str(tmp_path / "other"), "--quiet"]) == 2
    assert "were drawn from" in one_line_error(capsys)


# ---------------------------------------------------------------------------------------------
# Bad input: one line on stderr, exit status 2


def test_bc_train_refuses_data_of_another_game(lam_run, tmp_path, capsys):
    bigfish = tmp_path / "bigfish"
    collect("bigfish", "random", 300, bigfish, test_frames=60, num_envs=2, progress=False)
    out = tmp_path / "bc"
    args = ["bc", "train", "--lam", str(lam_run), "--data", str(bigfish), "--out", str(out)]
    assert main(args + ["--quiet"]) == 2
    err = one_line_error(capsys)
    assert "coinrun" in err and "bigfish" in err
    assert not out.exists()


def test_decode_offline_refuses_more_labels_than_train_windows(stage2, data, tmp_path, capsys):
    args = ["decode", "offline", "--policy", str(stage2[0]), "--data", str(data)]
    assert main(args + ["--out", str(tmp_path / "d"), "--labels", "999999"]) == 2
    err = one_line_error(capsys)
    assert "more than the" in err and str(len(WindowDataset(data, "train", k=3))) in err


def test_decode_online_refuses_another_game(stage2, tmp_path, capsys):
    args = ["decode", "online", "--policy", str(stage2[0]), "--env", "jumper"]
    assert main(args + ["--out", str(tmp_path / "o"), "--quiet"]) == 2
    assert "--env coinrun" in one_line_error(capsys)
    assert not (tmp_path / "o").exists()


def test_action_free_data_cannot_be_decoded(stage2, data, tmp_path, capsys):
    plain = first_chunks(data, tmp_path / "plain", actions=False)
    assert not open_dataset(plain).has_actions
    args = ["decode", "offline", "--policy", str(stage2[0]), "--data", str(plain)]
    assert main(args + ["--out", str(tmp_path / "d")]) == 2
    assert "has no actions" in one_line_error(capsys)
    assert not (tmp_path / "d").exists()
    # nor can the baselines train on it
    args = ["baseline", "bc", "--data", str(plain), "--out", str(tmp_path / "b"), "--quiet"]
    assert main(args) == 2
    assert "has no actions" in one_line_error(capsys)


def test_eval_refuses_a_latent_policy(stage2, capsys):
    assert main(["eval", "--policy", str(stage2[0]), "--episodes", "1"]) == 2
    err = one_line_error(capsys)
    assert "latent" in err and "lapo decode offline" in err


def test_each_run_kind_has_one_network_spec_and_a_checked_config(tmp_path):
    from lapo.models.policy import ActionPolicy, DecodedPolicy, LatentPolicy, build_network
    from lapo.runkinds import (
        LATENT_POLICY,
        action_policy_spec,
        decoded_policy_spec,
        latent_policy_spec,
        online_agent_spec,
        read_run_config,
    )

    for spec, cls in [
        (latent_policy_spec(8, 1), LatentPolicy),
        (decoded_policy_spec(8, 1), DecodedPolicy),
        (action_policy_spec(1), ActionPolicy),
        (online_agent_spec(8, 1), OnlineAgent),
    ]:
        assert type(build_network(spec)) is cls
    # a spec written before the encoder was a choice (no "arch") still builds the IMPALA-CNN
    assert "arch" not in latent_policy_spec(8, 1)
    assert latent_policy_spec(8, 1, "nature")["arch"] == "nature"
    with pytest.raises(CheckpointError, match="has no config.json"):
        read_run_config(tmp_path, (LATENT_POLICY,))
    write_json(tmp_path / "config.json", {"kind": "lam"})
    with pytest.raises(CheckpointError, match="is a 'lam' run; this needs a latent-policy run"):
        read_run_config(tmp_path, (LATENT_POLICY,))


@pytest.mark.parametrize("arch", ["impala", "nature"])
def test_policies_of_either_encoder_map_frames_to_their_outputs(arch):
    from lapo.models.impala import ImpalaCNN, NatureCNN
    from lapo.models.policy import ActionPolicy, DecodedPolicy, LatentPolicy

    obs = torch.randint(0, 256, (5, 64, 64, 3), dtype=torch.uint8)
    policy = LatentPolicy(8, 1, arch)
    assert isinstance(policy.encoder, {"impala": ImpalaCNN, "nature": NatureCNN}[arch])
    assert policy(obs).shape == (5, 8)
    assert DecodedPolicy(8, 1, arch=arch)(obs).shape == (5, 15)
    assert ActionPolicy(1, arch=arch)(obs).shape == (5, 15)
    # online decoding starts as the latent policy: trunk and latent path copied, so the
    # agent's latent path reads what the policy does
    agent = OnlineAgent.from_latent_policy(policy)
    torch.testing.assert_close(agent.latent(agent.trunk_features(obs)), policy(obs))
    logits, value = agent.heads(agent.trunk_features(obs))
    assert logits.shape == (5, 15) and value.shape == (5,)


def test_decoder_started_from_the_stage1_head_predicts_what_the_head_does():
    g = torch.Generator().manual_seed(0)
    z, w, b = torch.randn(64, 8, generator=g), torch.randn(15, 8, generator=g), torch.randn(15)
    y = torch.randint(0, 15, (64,), generator=g)
    decoder = fit_decoder(z, y, steps=0, head=(w, b))
    torch.testing.assert_close(decoder(z), z @ w.T + b)  # before any step: the head itself
    fitted = fit_decoder(z, y, steps=50, head=(w, b))
    assert not torch.allclose(fitted(z), z @ w.T + b)  # and the fit moves it from there


@pytest.mark.slow
def test_decode_offline_from_the_stage1_head(data, tmp_path, capsys):
    """Stage 1 with labels -> stage 2 keeps its action head -> offline decoding starts there;
    a stage-2 run whose stage 1 had no labels is refused in one line."""
    lam_cfg = dataclasses.replace(
        config_preset(LAMConfig, "fast"),
        steps=2,
        batch_size=8,
        eval_every=2,
        probe_every=0,
        labels=32,
        test_windows=16,
        threads=1,
    )
    train_lam(lam_cfg, data, tmp_path / "lam", progress=False)
    bc = dataclasses.replace(BC, steps=2, eval_every=2, warmup_steps=1, test_windows=16)
    train_latent_bc(bc, tmp_path / "lam", data, tmp_path / "bc", progress=False)
    # the head in stage 2's loss too: it trains with the same shapes
    head_bc = dataclasses.replace(bc, head_weight=1.0)
    summary = train_latent_bc(head_bc, tmp_path / "lam", data, tmp_path / "hbc", progress=False)
    assert math.isfinite(summary["test_loss"])
    cfg = OfflineConfig(labels=32, steps=2, test_windows=64, decoder_init="stage1-head")
    decode_offline(tmp_path / "bc", data, tmp_path / "dec", cfg)
    assert read_json(tmp_path / "dec" / "config.json")["network"]["decoder_skip"] is True
    policy = load_policy(tmp_path / "dec")  # what lapo eval plays
    assert policy.act(real_obs(2)).shape == (2,)
    tensors, _ = load_tensors(tmp_path / "bc" / "action_head.safetensors")
    lam_head = load_lam(tmp_path / "lam")[0].action_head
    torch.testing.assert_close(tensors["weight"], lam_head.weight)


def test_stage2_head_loss_by_hand():
    """Latent MSE + weight x cross-entropy of the frozen head on the policy's latent against
    the head's argmax on the IDM's latent; the gradient reaches the policy, never the head."""
    head = torch.nn.Linear(2, 3)
    with torch.no_grad():
        head.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, -1.0]]))
        head.bias.zero_()
    z = torch.tensor([[2.0, 0.0], [0.0, 0.0]])  # head(z): [2, 0, -2] -> 0; [0, 0, 0] -> 0
    pred = torch.tensor([[1.0, 1.0], [0.0, 2.0]], requires_grad=True)
    loss = latent_head_loss(pred, z, head, weight=0.5)
    mse = ((1 + 1) + (0 + 4)) / 4  # mean of the squared differences
    # logits of pred: [1, 1, -2] and [0, 2, -2]; both against action 0
    ce1 = -1 + math.log(2 * math.e + math.exp(-2))
    ce2 = -0 + math.log(1 + math.exp(2) + math.exp(-2))
    assert loss.item() == pytest.approx(mse + 0.5 * (ce1 + ce2) / 2, rel=1e-6)
    loss.backward()
    assert pred.grad.abs().sum() > 0 and head.weight.grad is None and head.bias.grad is None


def test_stage2_head_weight_needs_a_stage1_head(lam_run, data, tmp_path, capsys):
    args = ["bc", "train", "--lam", str(lam_run), "--data", str(data), "--preset", "cpu"]
    assert main(args + ["--out", str(tmp_path / "bc"), "--head-weight", "1"]) == 2
    err = one_line_error(capsys)
    assert "--head-weight" in err and "--labels" in err and not (tmp_path / "bc").exists()


def test_decode_offline_from_the_stage1_head_needs_one(stage2, data, tmp_path, capsys):
    args = ["decode", "offline", "--policy", str(stage2[0]), "--data", str(data)]
    assert main(args + ["--out", str(tmp_path / "d"), "--decoder-init", "stage1-head"]) == 2
    assert "--labels" in one_line_error(capsys) and not (tmp_path / "d").exists()
    assert main(args + ["--out", str(tmp_path / "d"), "--decoder-init", "head"]) == 2
    assert "--decoder-init must be one of" in one_line_error(capsys)
