import numpy as np
import pytest
import torch

from lapo.checkpoint import (
    CheckpointError,
    load_tensors,
    optimizer_from_flat,
    optimizer_to_flat,
    read_json,
    remove_stale_temporaries,
    restore_training_state,
    save_tensors,
    training_state,
    write_json,
)


def test_tensors_and_meta_round_trip(tmp_path):
    t = {"a": torch.arange(6.0).reshape(2, 3), "b": torch.tensor([1, 2], dtype=torch.uint8)}
    save_tensors(tmp_path / "x.safetensors", t, {"step": 3, "cfg": {"lr": 0.1}})
    back, meta = load_tensors(tmp_path / "x.safetensors")
    assert meta == {"step": 3, "cfg": {"lr": 0.1}}
    torch.testing.assert_close(back["a"], t["a"])
    torch.testing.assert_close(back["b"], t["b"])
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "temporary files left"


def test_corrupt_checkpoint_is_a_clear_error(tmp_path):
    p = tmp_path / "bad.safetensors"
    p.write_bytes(b"\x10\x00\x00\x00garbage")
    with pytest.raises(CheckpointError, match="not a readable safetensors"):
        load_tensors(p)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_tensors(tmp_path / "missing.safetensors")
    (tmp_path / "c.json").write_text("{oops")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        read_json(tmp_path / "c.json")


def test_optimizer_state_round_trip(tmp_path):
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(3):
        opt.zero_grad()
        model(torch.randn(4, 3)).sum().backward()
        opt.step()
    tensors, meta = optimizer_to_flat(opt)
    save_tensors(tmp_path / "o.safetensors", tensors, meta)
    t2, m2 = load_tensors(tmp_path / "o.safetensors")
    opt2 = torch.optim.Adam(model.parameters(), lr=1.0)
    optimizer_from_flat(opt2, t2, m2)
    s1, s2 = opt.state_dict(), opt2.state_dict()
    assert s2["param_groups"][0]["lr"] == 1e-2
    for pid in s1["state"]:
        for k in ("exp_avg", "exp_avg_sq", "step"):
            torch.testing.assert_close(s1["state"][pid][k], s2["state"][pid][k])


def test_write_json_replaces_atomically(tmp_path):
    p = tmp_path / "m.json"
    write_json(p, {"v": 1})
    write_json(p, {"v": 2})
    assert read_json(p) == {"v": 2}


def test_training_state_restores_model_optimizer_and_both_rngs(tmp_path):
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    rng = np.random.default_rng(5)
    for _ in range(2):
        opt.zero_grad()
        model(torch.randn(4, 3)).sum().backward()
        opt.step()
    rng.random(3)
    save_tensors(tmp_path / "s.safetensors", *training_state(model, opt, rng, step=7))
    # what each would produce next, had training gone on without a restart
    torch_next, np_next = torch.rand(3), rng.random(3)

    torch.manual_seed(99)
    model2 = torch.nn.Linear(3, 2)
    opt2 = torch.optim.Adam(model2.parameters(), lr=1.0)
    rng2 = np.random.default_rng(0)
    tensors, meta = load_tensors(tmp_path / "s.safetensors")
    assert meta["step"] == 7
    restore_training_state(tensors, meta, model2, opt2, rng2)
    for a, b in zip(model.parameters(), model2.parameters(), strict=True):
        torch.testing.assert_close(a, b)
    torch.testing.assert_close(
        opt2.state_dict()["state"][0]["exp_avg"], opt.state_dict()["state"][0]["exp_avg"]
    )
    torch.testing.assert_close(torch.rand(3), torch_next)
    np.testing.assert_array_equal(rng2.random(3), np_next)


def test_stale_temporaries_are_removed_and_nothing_else(tmp_path):
    (tmp_path / ".policy.safetensors.abc123.tmp").write_bytes(b"half")
    (tmp_path / "policy.safetensors").write_bytes(b"whole")
    (tmp_path / "notes.tmp").write_bytes(b"a user's file, not ours")
    removed = remove_stale_temporaries(tmp_path)
    assert [p.name for p in removed] == [".policy.safetensors.abc123.tmp"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.tmp", "policy.safetensors"]


def test_refuse_changed_settings_names_what_changed(tmp_path):
    from lapo.checkpoint import refuse_changed_settings

    ckpt = tmp_path / "checkpoint.safetensors"
    saved = {"lr": 1e-3, "steps": 100, "width": 1}
    # the budget may change on resume; nothing else
    refuse_changed_settings(ckpt, saved, {**saved, "steps": 500}, ("steps",))
    with pytest.raises(CheckpointError, match=r"\(lr, new\)"):
        refuse_changed_settings(ckpt, saved, {**saved, "lr": 3e-4, "new": 1}, ("steps",))
