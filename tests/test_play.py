"""``lapo play`` and the latent clusters: k-means pinned by hand, the latent buttons, the
server driven over real HTTP, the "ignores its latent" flag from real predictions, and
``lapo lam plot`` on data without actions."""

from __future__ import annotations

import base64
import io
import json
import shutil
import threading
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
from lam_toy import TOY as LAM_TOY
from PIL import Image

from lapo.checkpoint import read_json, save_tensors, write_json
from lapo.cli import main
from lapo.config import LAMConfig, QuantizerConfig
from lapo.data.collect import collect
from lapo.data.dataset import WindowDataset
from lapo.envs import ACTION_NAMES
from lapo.evaluation.clusters import exact_codes, kmeans, nearest_points
from lapo.models.lam import LatentActionModel
from lapo.models.quantizers import make_quantizer
from lapo.play.server import make_server
from lapo.play.session import (
    SAME_LEVELS,
    Button,
    PlaySession,
    mode_latent,
    open_session,
    spread,
)
from lapo.report.latents import exact_neighbours, latent_sample
from lapo.runkinds import lam_config_from_dict
from lapo.stages.lam import train_lam

# stage 1's toy sizes (tests/lam_toy.py), 4 steps, no probe, and a continuous latent: after 4
# steps a codebook may give one code for every window (the codes' own path is pinned by
# test_exact_codes_remove_the_straight_through_noise)
TOY = {
    **LAM_TOY,
    "steps": 4,
    "probe_every": 0,
    "quantizer": QuantizerConfig(kind="none", continuous_dim=8),
}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    out = tmp_path_factory.mktemp("play") / "coinrun"
    collect("coinrun", "random", 200, out, test_frames=160, num_envs=2, progress=False)
    return out


@pytest.fixture(scope="module")
def plain(data, tmp_path_factory):
    """The same frames without actions or rewards."""
    out = tmp_path_factory.mktemp("play") / "plain"
    shutil.copytree(data, out)
    for name in ("actions.npy", "rewards.npy"):
        for f in out.rglob(name):
            f.unlink()
    manifest = json.loads((out / "manifest.json").read_text())
    manifest.update(has_actions=False, has_rewards=False)
    (out / "manifest.json").write_text(json.dumps(manifest))
    return out


@pytest.fixture(scope="module")
def run(data, tmp_path_factory):
    out = tmp_path_factory.mktemp("play") / "run"
    train_lam(LAMConfig(**TOY), data, out, progress=False)
    torch.set_num_threads(1)
    return out


def serve_in_thread(session):
    server = make_server(session, "127.0.0.1", 0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    return server, f"http://127.0.0.1:{server.server_address[1]}"


def call(url: str, path: str, body: dict | None = None) -> dict:
    data = None if body is None and path == "/api/state" else json.dumps(body or {}).encode()
    with urllib.request.urlopen(url + path, data=data, timeout=30) as r:
        return json.loads(r.read())


def http_error(url: str, path: str, body: dict | None = None) -> tuple[int, dict]:
    with pytest.raises(urllib.error.HTTPError) as e:
        call(url, path, body)
    return e.value.code, json.loads(e.value.read())


def frame(png: str) -> np.ndarray:
    with Image.open(io.BytesIO(base64.b64decode(png))) as img:
        return np.asarray(img)


def test_kmeans_finds_three_blobs_by_hand():
    a = np.array([[0, 0], [1, 0], [0, 1], [-1, 0], [0, -1]], float)  # mean (0, 0)
    b = np.array([[10, 0], [11, 0], [10, 1], [9, -1]], float)  # mean (10, 0)
    c = np.array([[0, 10], [0, 11], [0, 9]], float)  # mean (0, 10)
    x = np.concatenate([c, a, b])
    km = kmeans(x, 3, seed=0)
    # numbered by size: a (5), b (4), c (3)
    np.testing.assert_allclose(km.centres, [[0, 0], [10, 0], [0, 10]], atol=1e-12)
    assert km.labels.tolist() == [2, 2, 2] + [0] * 5 + [1] * 4
    assert km.inertia == pytest.approx(4 * 1 + (1 + 1 + 2) + 2)
    again = kmeans(x, 3, seed=0)
    assert (again.labels == km.labels).all()
    # the nearest real point to each centre
    assert nearest_points(x, km.centres).tolist() == [3, 8, 0]
    # k is capped at the distinct points
    two = kmeans(np.array([[1.0, 1.0]] * 3 + [[5.0, 5.0]] * 2), 8)
    assert len(two.centres) == 2 and two.labels.tolist() == [0, 0, 0, 1, 1]


def test_exact_neighbours_by_hand():
    # four points on a line at 0, 1, 3, 7: each itself first, then the nearest others
    z = np.array([[0.0], [1.0], [3.0], [7.0]])
    idx, dist, index = exact_neighbours(z, 3)
    assert idx.tolist() == [[0, 1, 2], [1, 0, 2], [2, 1, 0], [3, 2, 1]]
    np.testing.assert_allclose(dist, [[0, 1, 3], [0, 1, 2], [0, 2, 3], [0, 4, 6]])
    assert index is None and dist.dtype == np.float32


def test_mode_latent_by_hand():
    z = torch.arange(8.0).reshape(4, 2)  # the latents; their two slots' codes:
    # the whole latent of codes (1, 5) occurs twice, the others once
    codes = torch.tensor([[1, 5], [1, 6], [2, 5], [1, 5]])
    latent, agreement = mode_latent(z, codes)
    assert latent.tolist() == [6.0, 7.0] and agreement == pytest.approx((3 / 4 + 3 / 4) / 2)
    # every whole latent once: the one whose codes are most common slot by slot
    codes = torch.tensor([[1, 6], [1, 5], [2, 5], [3, 7]])
    latent, agreement = mode_latent(z, codes)
    assert latent.tolist() == [2.0, 3.0] and agreement == pytest.approx(0.5)
    # continuous: the mean
    latent, agreement = mode_latent(z, None)
    assert latent.tolist() == [3.0, 4.0] and agreement == 0.0


def test_exact_codes_remove_the_straight_through_noise():
    torch.manual_seed(0)
    for cfg in (
        QuantizerConfig(num_codebooks=2, latents_per_codebook=2, code_dim=3, num_entries=4),
        QuantizerConfig(kind="fsq", fsq_levels="5,4", fsq_groups=3),
    ):
        quantizer = make_quantizer(cfg).eval()
        z = torch.randn(64, cfg.latent_dim).repeat(2, 1) * 3
        z = z + 1e-3 * torch.randn_like(z)  # near-equal latents, the same codes
        exact, codes = exact_codes(quantizer, quantizer(z).z_q)
        assert codes.shape == (128, len(codes[0]))
        same = (codes[:64] == codes[64:]).all(1)
        assert same.all() and (exact[:64] == exact[64:]).all()
        assert torch.allclose(exact, quantizer(z).z_q, atol=1e-5)
    exact, codes = exact_codes(make_quantizer(QuantizerConfig(kind="none")), z)
    assert codes is None and exact is z


def test_play_over_http_with_action_buttons(run, data):
    session = open_session(run, data, windows=200, seed=0)
    batch, *_ = latent_sample(session.model, data, 200, 0)
    present = np.unique(batch["actions"][:, 1])
    server, url = serve_in_thread(session)
    try:
        s = call(url, "/api/state")
        assert s["labels"] and s["game"] == "coinrun" and s["step"] == 0
        assert [b["label"] for b in s["buttons"]] == [ACTION_NAMES[a] for a in present]
        keys = {b["label"]: b["keys"] for b in s["buttons"]}
        assert keys["LEFT"] == ["arrowleft", "a"] and " " in keys["UP"]  # coinrun jumps
        assert frame(s["frame"]).shape == (64, 64, 3)
        assert [h["move"] for h in s["history"]] == ["real", "real"] and not s["can_undo"]
        assert all(frame(b["preview"]).shape == (64, 64, 3) for b in s["buttons"])
        s = call(url, "/api/step", {"button": 1})
        # the new frame is the preview that button showed
        assert s["step"] == 1 and s["history"][-1]["move"] == s["buttons"][1]["label"]
        for _ in range(8):
            s = call(url, "/api/step", {"button": 0})
        assert s["step"] == 9 and len(s["history"]) == 8 and s["can_undo"]
        s = call(url, "/api/undo")
        assert s["step"] == 8
        s = call(url, "/api/reset")
        assert s["step"] == 0 and frame(s["frame"]).shape == (64, 64, 3)
        assert http_error(url, "/api/step", {"button": 99}) == (
            400,
            {"error": f"no button 99: there are {len(present)}"},
        )
        assert http_error(url, "/api/step", {"button": "1"})[0] == 400
        assert http_error(url, "/api/nothing")[0] == 404
        with urllib.request.urlopen(url + "/", timeout=30) as r:
            assert b"<canvas" in r.read()
    finally:
        server.shutdown()
        server.server_close()


def test_play_without_actions_has_one_button_per_cluster(run, plain):
    session = open_session(run, plain, windows=200, clusters=4, seed=0)
    server, url = serve_in_thread(session)
    try:
        s = call(url, "/api/state")
        assert not s["labels"]
        assert [b["label"] for b in s["buttons"]] == [f"cluster {i}" for i in range(1, 5)]
        assert [b["keys"] for b in s["buttons"]] == [["1"], ["2"], ["3"], ["4"]]
        every = len(WindowDataset(plain, "test", k=3))
        assert sum(b["windows"] for b in s["buttons"]) == every
        s = call(url, "/api/step", {"button": 3})
        assert s["step"] == 1 and s["history"][-1]["move"] == "cluster 4"
    finally:
        server.shutdown()
        server.server_close()


def latent_weights(model) -> list[torch.Tensor]:
    """The world model's weights that read the latent: the first convolution's latent channels
    and the first up-block's latent skip channels."""
    wm = model.world_model
    first = wm.down[0].conv.weight[:, wm.down[0].conv.image_channels :]
    up = wm.up[0].net[0].weight  # ConvTranspose2d (in, out, 2, 2): the latent is the last in
    return [first, up[-model.idm.latent_dim :]]


def measured_spread(session) -> dict:
    """The spread of every button's next frame, predicted here without the session."""
    n = len(session.buttons)
    context = torch.stack(session.frames[-2:])[None].expand(n, -1, -1, -1, -1)
    with torch.no_grad():
        return spread(
            session.model.predict(context, torch.stack([b.latent for b in session.buttons]))
        )


def test_ignore_flag_comes_from_the_real_predictions(run, data):
    session = open_session(run, data, windows=200, seed=0)
    # as trained (4 steps: the latents barely differ): the flag follows the measured spread
    assert session.spread == measured_spread(session)
    assert session.ignores_latent == (session.spread["max_levels"] <= SAME_LEVELS)
    # buttons whose latents differ a lot: the same world model's frames differ
    buttons = [Button(f"e{i}", 4 * torch.eye(8)[i], [], 1, 0.0) for i in range(8)]
    session = PlaySession(session.model, session.starts, buttons, session.info)
    assert session.spread == measured_spread(session)
    assert session.ignores_latent is False and session.spread["pixels_apart"] > 0
    with torch.no_grad():
        for w in latent_weights(session.model):
            w.zero_()  # a world model that cannot hear its latent
    session.step(0)
    assert session.ignores_latent is True and session.state()["ignores_latent"] is True
    assert session.spread["max_levels"] == 0 and session.spread["pixels_apart"] == 0


def one_line(capsys) -> str:
    err = capsys.readouterr().err
    assert err.startswith("lapo: error: ") and err.count("\n") == 1, err
    return err


def test_play_refuses_bad_runs_and_data(run, data, tmp_path, capsys):
    assert main(["play", "--run", str(tmp_path / "nothing"), "--no-browser"]) == 2
    assert "config.json" in one_line(capsys)
    args = ["play", "--run", str(run), "--no-browser", "--data"]
    assert main(args + [str(tmp_path / "nothing")]) == 2
    assert "does not exist" in one_line(capsys)
    # the same run with a world model that predicts embeddings (untrained: only its kind counts)
    emb = tmp_path / "emb"
    shutil.copytree(run, emb)
    config = read_json(emb / "config.json")
    config["lam"]["wm_target"] = "embedding"
    write_json(emb / "config.json", config)
    model = LatentActionModel(lam_config_from_dict(config["lam"]))
    save_tensors(emb / "lam.safetensors", model.state_dict())
    assert main(["play", "--run", str(emb), "--no-browser"]) == 2
    assert "predicts embeddings, not frames" in one_line(capsys)


def test_plot_on_action_free_data_draws_clusters(run, plain, tmp_path, capsys):
    out = tmp_path / "plots"
    args = ["lam", "plot", "--run", str(run), "--data", str(plain), "--out", str(out)]
    assert main(args + ["--clusters", "3"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["clusters"] == 3
    files = summary["files"]
    assert set(files) == {"latents", "clusters", "predictions", "rollout"}
    for path in files.values():
        with Image.open(path) as img:
            assert img.size[0] > 100 and img.size[1] > 100
    with Image.open(files["clusters"]) as img:
        assert img.size[1] > img.size[0] * 0.3  # three rows of pictures
    assert Path(files["latents"]).name in ("latent_umap.png", "latent_pca.png")
    # without actions the latent map's colours are the clusters: --clusters 0 cannot be
    assert main(args + ["--clusters", "0"]) == 2
    assert "has no actions" in one_line(capsys)


def test_a_world_model_with_the_previous_latent_gets_the_last_move_played(data):
    cfg = LAMConfig(**{**TOY, "wm_prev_latent": True})
    torch.manual_seed(0)
    model = LatentActionModel(cfg).eval()
    starts = WindowDataset(data, "test", k=2).sample(4, np.random.default_rng(0))["obs"]
    buttons = [Button(f"e{i}", 4 * torch.eye(8)[i], [], 1, 0.0) for i in range(8)]
    session = PlaySession(model, starts, buttons, {})

    def expected(previous: torch.Tensor) -> torch.Tensor:  # (A,) -> (8, 3, 64, 64)
        context = torch.stack(session.frames[-2:])[None].expand(8, -1, -1, -1, -1)
        with torch.no_grad():
            return model.predict(context, session.latents, previous.expand(8, -1))

    # the start is a real frame pair: no move played, so zeros for z[t-1]
    torch.testing.assert_close(session.preview, expected(torch.zeros(8)).clamp(-0.5, 0.5))
    session.step(3)
    torch.testing.assert_close(session.preview, expected(buttons[3].latent).clamp(-0.5, 0.5))
    assert not torch.allclose(expected(buttons[3].latent), expected(torch.zeros(8)))
    session.step(5)
    torch.testing.assert_close(session.preview, expected(buttons[5].latent).clamp(-0.5, 0.5))
    session.undo()
    torch.testing.assert_close(session.preview, expected(buttons[3].latent).clamp(-0.5, 0.5))
    session.reset()
    assert session.played == []
