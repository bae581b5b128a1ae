"""Stage 1's options beyond the paper (LAOM's, the remedies for momentum, a moving camera and
a dying latent): each trains a few steps on real frames with the stated shapes, and each added
loss term is pinned by hand."""

import dataclasses

import numpy as np
import pytest
import torch
from lam_toy import TOY, collect_toy_coinrun

from lapo.config import LAMConfig, QuantizerConfig
from lapo.models.lam import LatentActionModel
from lapo.stages.lam import lam_loss, train_lam, variance_hinge


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return collect_toy_coinrun(tmp_path_factory.mktemp("lam_options") / "coinrun")


REMEDIES = {
    "lookahead": dict(idm_lookahead=3),
    "shift": dict(aug_shift=4),
    "embedding": dict(wm_target="embedding"),
    "no_ignore": dict(wm_mask_past=1.0, latent_var_floor=0.01),
    "wm_differences": dict(idm_differences=True, idm_difference_scale=10.0, wm_differences=True),
    "wide_continuous": dict(quantizer=QuantizerConfig(kind="none", continuous_dim=512)),
    "action_everywhere": dict(wm_action_everywhere=True),
    "residual": dict(wm_residual=True),
    "prev_latent": dict(wm_prev_latent=True),
    "decorrelation": dict(latent_decorrelation=1.0),
    "motion_compensation": dict(
        changed_pixel_weight=30.0,
        motion_compensation=True,
        idm_differences=True,
        idm_difference_scale=10.0,
        motion_compensate_idm=True,
    ),
    "prev_latent_embedding": dict(wm_prev_latent=True, wm_target="embedding"),
    "linear_features": dict(idm_linear_features=True),
    "camera_shift": dict(wm_camera_shift=True),
    "space_to_depth": dict(wm_space_to_depth=True),
    "space_to_depth_everywhere": dict(
        wm_space_to_depth=True, wm_action_everywhere=True, wm_residual=True
    ),
}


@pytest.mark.parametrize("linear", [False, True])
def test_linear_features_keep_the_latent_alive_where_the_last_relu_is_off(linear):
    # heist's collapse by hand: every pre-activation of the encoder's last layer negative
    cfg = LAMConfig(**TOY, idm_linear_features=linear)
    idm = LatentActionModel(cfg).idm
    with torch.no_grad():
        idm.encoder.fc.bias.fill_(-1e3)
        z, _ = idm(torch.rand(8, 3, 3, 64, 64) - 0.5)  # (8, A)
    spread = z.std(0).max().item()
    if linear:
        assert spread > 1e-3  # windows still get their own latents
    else:
        assert spread == 0.0  # the ReLU is off for every window: one latent for all


@pytest.mark.parametrize("name", list(REMEDIES))
def test_each_remedy_trains_with_the_stated_shapes(name, data, tmp_path):
    cfg = LAMConfig(**{**TOY, "steps": 3, "probe_every": 0, "eval_every": 3, **REMEDIES[name]})
    model = LatentActionModel(cfg)
    P = cfg.previous_frames  # windows from o[t-2] where the previous latent is needed
    T = P + cfg.idm_lookahead + 2
    frames = torch.rand(4, T, 3, 64, 64) - 0.5
    torch.manual_seed(0)
    loss, logs = lam_loss(model, frames, cfg)
    assert loss.shape == () and torch.isfinite(loss)
    loss.backward()
    assert model.idm.encoder.fc.weight.grad.abs().sum() > 0
    with torch.no_grad():  # later stages see LAPO's three frames: (B, 3, 3, 64, 64) -> (B, A)
        z, q = model.idm(frames[:, P : P + 3])
    assert z.shape == q.z_q.shape == (4, cfg.quantizer.latent_dim)
    pred = model.predict(frames[:, P : P + 2], q.z_q)  # z[t-1] (wm_prev_latent): zeros
    assert pred.shape == ((4, 256) if "embedding" in name else (4, 3, 64, 64))
    summary = train_lam(cfg, data, tmp_path / name, progress=False)
    assert summary["steps"] == 3 and np.isfinite(summary["test_wm_loss"])


@pytest.mark.parametrize("threshold", [0.0, 0.2])
def test_changed_pixel_weight_by_hand(threshold):
    # o[t+1] = o[t] but for pixel (2, 3), moved by 0.1, and pixel (5, 7), moved by 0.3
    torch.manual_seed(0)
    frames = torch.rand(2, 3, 3, 64, 64) - 0.5
    frames[:, 2] = frames[:, 1]
    frames[:, 2, 0, 2, 3] += 0.1
    frames[:, 2, 1, 5, 7] -= 0.3
    weighted = LAMConfig(**TOY, changed_pixel_weight=4.0, changed_pixel_threshold=threshold)
    model = LatentActionModel(weighted).eval()  # eval: both losses see the same latents
    plain, _ = lam_loss(model, frames, dataclasses.replace(weighted, changed_pixel_weight=0.0))
    loss, _ = lam_loss(model, frames, weighted)
    with torch.no_grad():
        _, q = model.idm(frames)
        err = model.prediction_error(frames[:, :2], frames[:, 2], q.z_q)  # (2, 3, 64, 64)
    # each changed pixel's error (every channel) counts 1 + 4 times instead of once
    extra = err[:, :, 5, 7].sum() + (err[:, :, 2, 3].sum() if threshold < 0.1 else 0.0)
    assert loss.item() - plain.item() == pytest.approx(4.0 * extra.item() / err.numel(), rel=1e-4)


def test_changed_pixel_threshold_out_of_range_is_refused():
    from lapo.errors import ConfigError

    with pytest.raises(ConfigError, match="changed.pixel.threshold"):
        LAMConfig(changed_pixel_threshold=1.5)


def test_lookahead_shows_the_idm_a_later_frame_and_the_world_model_o_t_plus_1():
    from lapo.models.lam import idm_input

    cfg = LAMConfig(**{**TOY, "idm_lookahead": 4})
    frames = torch.arange(6.0).view(1, 6, 1, 1, 1).expand(64, 6, 3, 8, 8)  # frame i holds i
    torch.manual_seed(0)
    x = idm_input(frames, cfg)
    assert x.shape == (64, 3, 3, 8, 8)
    assert (x[:, 0] == 0).all() and (x[:, 1] == 1).all()
    assert set(x[:, 2, 0, 0, 0].tolist()) == {2.0, 3.0, 4.0, 5.0}  # o[t+k], k = 1..4
    plain = LAMConfig(**TOY)  # no lookahead, no shift (as in evaluation): o[t-1], o[t], o[t+1]
    assert torch.equal(idm_input(frames, plain), frames[:, :3])


def test_random_shift_moves_each_frame_by_its_own_offset():
    from lapo.models.augment import random_shift

    img = torch.zeros(8, 2, 1, 16, 16)
    img[..., 8, 8] = 1.0  # one bright pixel in the middle of every frame
    torch.manual_seed(0)
    out = random_shift(img, 3)
    pos = out.flatten(3).argmax(-1).squeeze(-1)  # (8, 2) flat positions of the pixel
    dy, dx = pos // 16 - 8, pos % 16 - 8
    assert dy.abs().max() <= 3 and dx.abs().max() <= 3
    assert len(set(zip(dy.flatten().tolist(), dx.flatten().tolist(), strict=True))) > 4
    assert torch.equal(random_shift(img, 0), img)


def test_variance_hinge_by_hand():
    # columns (0, 2) and (1, 1): unbiased variances 2 and 0; floor 1.5 -> relu(-0.5) = 0 and
    # relu(1.5) = 1.5, mean 0.75; the gradient pushes only the collapsed column apart
    z = torch.tensor([[0.0, 1.0], [2.0, 1.0]], requires_grad=True)
    loss = variance_hinge(z, 1.5)
    assert loss.item() == pytest.approx(0.75)
    loss.backward()
    assert z.grad[:, 0].abs().sum() == 0  # above the floor: no push
    assert variance_hinge(z, 0.0).item() == 0.0


def test_embedding_target_follows_the_encoder_at_rate_tau():
    # wm_target embedding: the target encoder moves tau of the way to the online one per step
    cfg = LAMConfig(**{**TOY, "wm_target": "embedding", "wm_target_tau": 0.25})
    wm = LatentActionModel(cfg).world_model
    with torch.no_grad():
        for p in wm.encoder.parameters():
            p.add_(1.0)
    before = [t.clone() for t in wm.target_encoder.parameters()]
    wm.update_target(cfg.wm_target_tau)
    for b, t, o in zip(
        before, wm.target_encoder.parameters(), wm.encoder.parameters(), strict=True
    ):
        torch.testing.assert_close(t, b + 0.25 * (o - b))


def test_the_previous_latent_reaches_the_world_model_without_gradient_into_the_idm():
    cfg = LAMConfig(**{**TOY, "wm_prev_latent": True})
    torch.manual_seed(0)
    model = LatentActionModel(cfg)
    A = cfg.quantizer.latent_dim
    frames = torch.rand(4, 4, 3, 64, 64) - 0.5  # o[t-2], o[t-1], o[t], o[t+1]
    seen = []
    real_forward = model.world_model.forward

    def spy(context, latents):  # the world model's latent input (B, 2A): (z[t], z[t-1])
        seen.append(latents)
        return real_forward(context, latents)

    model.world_model.forward = spy
    lam_loss(model, frames, cfg)
    latents = seen[-1]
    assert latents.shape == (4, 2 * A)
    with torch.no_grad():  # the second half is z[t-1], the IDM's latent of o[t-2], o[t-1], o[t]
        _, q_prev = model.idm(frames[:, :3])
    torch.testing.assert_close(latents[:, A:], q_prev.z_q)

    def idm_gradient(half: slice) -> torch.Tensor:
        """The IDM's gradient of a loss that reads only one half of the world model's input."""
        model.zero_grad()
        lam_loss(model, frames, cfg)
        seen[-1][:, half].pow(2).sum().backward()
        grad = model.idm.encoder.fc.weight.grad
        return torch.zeros(()) if grad is None else grad.abs().sum()

    assert idm_gradient(slice(0, A)) > 0  # z[t]: the IDM learns through it
    assert idm_gradient(slice(A, 2 * A)) == 0  # z[t-1]: stop-gradient


def test_the_previous_latent_leaves_the_codebook_as_it_is():
    cfg = LAMConfig(**{**TOY, "wm_prev_latent": True})
    torch.manual_seed(0)
    model = LatentActionModel(cfg)  # training mode: the codebook's EMA moves with each z[t]
    frames = torch.rand(4, 4, 3, 64, 64) - 0.5
    before = {k: v.clone() for k, v in model.idm.quantizer.state_dict().items()}
    model.previous_latent(frames[:, :3])
    after = model.idm.quantizer.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert model.idm.quantizer.training  # its mode is restored


def test_latent_decorrelation_is_the_mean_squared_cross_correlation_by_hand():
    from lapo.stages.lam import latent_decorrelation_loss

    torch.manual_seed(0)
    z, other = torch.randn(256, 6), torch.randn(256, 6)
    corr = torch.corrcoef(torch.cat([z, other], 1).T)[:6, 6:]  # (6, 6): z_i against other_j
    expected = corr.pow(2).mean()
    assert latent_decorrelation_loss(z, other).item() == pytest.approx(expected.item(), rel=1e-4)
    # a latent that repeats the previous one, dimension by dimension: each of the A diagonal
    # pairs correlates fully, so at least 1/A
    assert latent_decorrelation_loss(z, 3 * z + 1).item() >= 1 / 6 - 1e-4


def test_loss_with_the_previous_latent_and_motion_options_is_the_sum_of_its_named_terms():
    from lapo.models.motion import compensated_difference
    from lapo.stages.lam import latent_decorrelation_loss

    cfg = LAMConfig(**TOY, changed_pixel_weight=4.0, motion_compensation=True,
                    wm_prev_latent=True, latent_decorrelation=0.5)  # fmt: skip
    torch.manual_seed(0)
    model = LatentActionModel(cfg).eval()  # eval: the codebook stays put between the calls
    frames = torch.rand(4, 4, 3, 64, 64) - 0.5
    frames[:, 3] = torch.roll(frames[:, 2], (2, -3), dims=(-2, -1))  # the camera moves
    frames[:, 3, :, 10:14, 20:24] = 0.4  # and a sprite appears
    loss, logs = lam_loss(model, frames, cfg)
    with torch.no_grad():
        z_prev, q_prev = model.idm(frames[:, :3])
        z, q = model.idm(frames[:, 1:])
        err = model.prediction_error(frames[:, 1:3], frames[:, 3], q.z_q, q_prev.z_q)
        changed = compensated_difference(frames[:, 2], frames[:, 3]).abs().amax(1, keepdim=True)
        # against the shift only the sprite's 4x4 pixels changed
        assert ((changed > 0).sum((1, 2, 3)) == 16).all()
        prediction = (err * (1 + 4.0 * (changed > 0).float())).mean()
        shared = latent_decorrelation_loss(z, z_prev)
    assert shared > 0 and logs["latent_decorrelation_loss"] == shared
    expected = prediction + q.loss + 0.5 * shared
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    assert logs["wm_loss"].item() == pytest.approx(err.mean().item(), rel=1e-6)


def test_motion_options_that_would_do_nothing_are_refused():
    from lapo.errors import ConfigError

    with pytest.raises(ConfigError, match="changed-pixel-weight"):
        LAMConfig(motion_compensation=True)
    with pytest.raises(ConfigError, match="idm-differences"):
        LAMConfig(motion_compensate_idm=True)
    with pytest.raises(ConfigError, match="wm-target pixels"):
        LAMConfig(wm_space_to_depth=True, wm_target="embedding")
