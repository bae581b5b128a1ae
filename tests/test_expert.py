import csv
import sys

import numpy as np
import pytest
import torch

from lapo.checkpoint import load_tensors, read_json
from lapo.cli import main
from lapo.config import ExpertConfig
from lapo.envs import NUM_ACTIONS
from lapo.errors import FieldError
from lapo.evaluation.policies import load_policy
from lapo.models.actor_critic import ActorCritic
from lapo.models.frames import frames_to_input
from lapo.rl.expert import train_expert

TINY = dict(game="coinrun", arch="nature", num_envs=4, num_steps=16, num_minibatches=2, threads=1)


def read_progress(run):
    with open(run / "metrics.csv") as f:
        return list(csv.DictReader(f))


def test_tiny_training_writes_policy_checkpoint_and_logs(tmp_path):
    cfg = ExpertConfig(frames=4 * 16 * 2, checkpoint_every=1, **TINY)
    summary = train_expert(cfg, tmp_path, progress=False)
    assert summary["frames"] == 128
    for name in (
        "policy.safetensors",
        "config.json",
        "checkpoint.safetensors",
        "metrics.csv",
    ):
        assert (tmp_path / name).is_file(), name
    assert list((tmp_path / "tb").iterdir()), "no TensorBoard event file"
    rows = read_progress(tmp_path)
    assert [int(r["update"]) for r in rows] == [1, 2]
    # the saved policy loads into a fresh network and differs from a fresh initialisation
    tensors, _ = load_tensors(tmp_path / "policy.safetensors")
    fresh = ActorCritic(NUM_ACTIONS, "nature")
    fresh.load_state_dict(tensors)
    torch.manual_seed(123)
    other = ActorCritic(NUM_ACTIONS, "nature")
    assert not torch.equal(other.critic.weight, tensors["critic.weight"])


def test_resume_continues_from_checkpoint_with_identical_state(tmp_path):
    cfg = ExpertConfig(frames=4 * 16 * 2, checkpoint_every=1, **TINY)
    train_expert(cfg, tmp_path, progress=False)
    _, meta = load_tensors(tmp_path / "checkpoint.safetensors")
    assert meta["update"] == 2

    # a larger budget continues at update 3 from the saved state
    longer = ExpertConfig(frames=4 * 16 * 3, checkpoint_every=1, **TINY)
    train_expert(longer, tmp_path, progress=False)
    rows = read_progress(tmp_path)
    assert [int(r["update"]) for r in rows] == [1, 2, 3]
    _, meta = load_tensors(tmp_path / "checkpoint.safetensors")
    assert meta["update"] == 3 and meta["frames"] == 192


@pytest.mark.slow
def test_resume_after_kill(tmp_path, kill_after_checkpoint):
    run = tmp_path / "run"
    cmd = [
        sys.executable,
        "-m",
        "lapo.cli",
        "expert",
        "train",
        "--env",
        "coinrun",
        "--out",
        str(run),
        "--arch",
        "nature",
        "--num-envs",
        "4",
        "--num-steps",
        "16",
        "--num-minibatches",
        "2",
        "--threads",
        "1",
        "--checkpoint-every",
        "1",
        "--quiet",
    ]
    kill_after_checkpoint(cmd + ["--frames", "100000"], run / "checkpoint.safetensors", "update", 2)
    # the kill may land mid-write: the visible files are still whole and load
    _, meta = load_tensors(run / "checkpoint.safetensors")
    done = meta["update"]
    load_tensors(run / "policy.safetensors")
    # resume to exactly two more updates
    frames = (done + 2) * 64
    assert main(cmd[3:] + ["--frames", str(frames)]) == 0
    _, meta = load_tensors(run / "checkpoint.safetensors")
    assert meta["update"] == done + 2
    # a temporary file the kill left behind is cleaned up by the resumed run
    assert not [p for p in run.iterdir() if p.name.endswith(".tmp")]
    updates = [int(r["update"]) for r in read_progress(run)]
    # rows logged after the checkpoint before the kill were redone, not duplicated
    assert updates == list(range(1, done + 3))


def test_bad_input_is_one_line(tmp_path, capsys):
    assert main(["expert", "train", "--env", "pong", "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "unknown game 'pong'" in err and "coinrun" in err
    assert (
        main(["expert", "train", "--env", "coinrun", "--frames", "0", "--out", str(tmp_path / "y")])
        == 2
    )
    assert "--frames must be at least 1" in capsys.readouterr().err
    assert not (tmp_path / "y").exists()


def test_resume_into_a_run_of_another_game_is_refused(tmp_path, capsys):
    train_expert(ExpertConfig(frames=64, checkpoint_every=1, **TINY), tmp_path, progress=False)
    before = (tmp_path / "checkpoint.safetensors").read_bytes()
    assert (
        main(
            [
                "expert",
                "train",
                "--env",
                "maze",
                "--out",
                str(tmp_path),
                "--frames",
                "128",
                "--arch",
                "nature",
                "--num-envs",
                "4",
                "--num-steps",
                "16",
            ]
        )
        == 2
    )
    assert "was trained on coinrun, not maze" in capsys.readouterr().err
    assert (tmp_path / "checkpoint.safetensors").read_bytes() == before


@pytest.mark.parametrize(
    "arch,obs_size,grey",
    [
        ("nature", 64, False),
        ("nature", 64, True),
        ("nature", 32, False),
        ("nature_small", 64, False),
        ("nature_small", 32, False),
        ("nature_small", 32, True),
        ("impala", 32, True),
    ],
)
def test_each_network_takes_the_recorded_frames(arch, obs_size, grey):
    model = ActorCritic(NUM_ACTIONS, arch, obs_size=obs_size, grey=grey)
    first = model.encoder.convs[0] if arch != "impala" else model.encoder.stacks[0].conv
    assert first.in_channels == (1 if grey else 3)
    obs = torch.randint(0, 256, (5, 64, 64, 3), dtype=torch.uint8)
    logits, value = model(obs)
    assert logits.shape == (5, NUM_ACTIONS) and value.shape == (5,)


def test_frames_to_input_by_hand():
    obs = torch.zeros(1, 64, 64, 3, dtype=torch.uint8)
    obs[0, 0, 0] = torch.tensor([255, 0, 0], dtype=torch.uint8)  # one red pixel in a 2x2 block
    obs[0, 0, 1] = torch.tensor([255, 255, 255], dtype=torch.uint8)  # and one white
    assert torch.equal(frames_to_input(obs), obs.movedim(-1, 1).float() / 255 - 0.5)
    half = frames_to_input(obs, size=32)
    assert half.shape == (1, 3, 32, 32)
    # the block's mean: red (255 + 255) / 4, green and blue 255 / 4, everything else black
    torch.testing.assert_close(half[0, :, 0, 0], torch.tensor([0.5, 0.25, 0.25]) - 0.5)
    assert half[0, :, 1:].eq(-0.5).all() and half[0, :, :, 1:].eq(-0.5).all()
    grey = frames_to_input(obs, size=64, grey=True)
    assert grey.shape == (1, 1, 64, 64)
    # luma 0.299 R + 0.587 G + 0.114 B: red 0.299, white 1
    torch.testing.assert_close(grey[0, 0, 0, :3], torch.tensor([0.299, 1.0, 0.0]) - 0.5)
    grey_half = frames_to_input(obs, size=32, grey=True)
    torch.testing.assert_close(grey_half[0, 0, 0, 0], torch.tensor((0.299 + 1.0) / 4 - 0.5))


def test_a_saved_cheap_network_loads_and_acts(tmp_path):
    tiny = {**TINY, "arch": "nature_small"}
    cfg = ExpertConfig(frames=64, obs_size=32, grey=True, **tiny)
    train_expert(cfg, tmp_path, progress=False)
    config = read_json(tmp_path / "config.json")
    assert (config["arch"], config["obs_size"], config["grey"]) == ("nature_small", 32, True)
    policy = load_policy(tmp_path, "coinrun")
    assert policy.describe()["obs_size"] == 32 and policy.describe()["grey"]
    obs = np.random.default_rng(0).integers(0, 256, (3, 64, 64, 3), dtype=np.uint8)
    actions = policy.act(obs)
    assert actions.shape == (3,) and ((actions >= 0) & (actions < NUM_ACTIONS)).all()


def test_obs_size_and_arch_are_checked():
    with pytest.raises(FieldError, match="obs_size must be 64 or 32, got 48"):
        ExpertConfig(obs_size=48)
    with pytest.raises(FieldError, match="obs_size must be at least 32"):
        ExpertConfig(obs_size=16)
    with pytest.raises(FieldError, match="arch must be one of impala, nature, nature_small"):
        ExpertConfig(arch="resnet")
