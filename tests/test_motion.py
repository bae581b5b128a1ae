"""The global shift between frames (phase correlation) on real Procgen frames, and differences
measured against it."""

import numpy as np
import pytest
import torch

from lapo.data.collect import collect
from lapo.data.dataset import WindowDataset
from lapo.models.frames import frames_to_float
from lapo.models.motion import compensated_difference, global_shift, roll_each


@pytest.fixture(scope="module")
def windows(tmp_path_factory):
    """Float windows ``(64, 2, 3, 64, 64)`` of consecutive real coinrun frames."""
    out = tmp_path_factory.mktemp("motion") / "coinrun"
    collect("coinrun", "random", 400, out, test_frames=0, num_envs=2, progress=False)
    ds = WindowDataset(out, "train", k=2)
    return frames_to_float(torch.from_numpy(ds.sample(64, np.random.default_rng(0))["obs"]))


@pytest.mark.parametrize("shift", [(3, -5), (0, 0), (-7, 12), (31, -32)])
def test_global_shift_recovers_a_known_roll_of_a_real_frame_exactly(windows, shift):
    frames = windows[:, 0]  # (64, 3, 64, 64)
    rolled = torch.roll(frames, shift, dims=(-2, -1))
    found = global_shift(frames, rolled)  # (64, 2)
    assert found.shape == (64, 2) and found.dtype == torch.int64
    assert (found == torch.tensor(shift)).all()
    # the other way round: the opposite shift (-32 wraps to itself)
    back = [(-s + 32) % 64 - 32 for s in shift]
    assert (global_shift(rolled, frames) == torch.tensor(back)).all()


def test_roll_each_rolls_each_image_by_its_own_shift(windows):
    frames = windows[:4, 0]
    shifts = torch.tensor([[3, -5], [0, 0], [-1, 7], [20, 20]])
    out = roll_each(frames, shifts)
    for b in range(4):
        assert torch.equal(out[b], torch.roll(frames[b], tuple(shifts[b].tolist()), (-2, -1)))


def test_a_rolled_frame_has_no_compensated_change(windows):
    frames = windows[:, 0]
    rolled = torch.roll(frames, (3, -5), dims=(-2, -1))
    assert (rolled - frames).abs().amax() > 0.1  # the plain difference is large
    assert torch.equal(compensated_difference(frames, rolled), torch.zeros_like(frames))


def test_against_the_shift_fewer_pixels_change_where_the_camera_moved(windows):
    # coinrun's camera follows the agent: where a shift is found between real consecutive
    # frames, fewer pixels differ from the shifted frame than from the frame itself
    a, b = windows[:, 0], windows[:, 1]
    moved = (global_shift(a, b) != 0).any(1)  # (64,)
    assert moved.sum() >= 3, "too few windows where the camera moved"
    plain = ((b - a).abs().amax(1) > 0).float().mean((-2, -1))  # (64,) share changed
    compensated = (compensated_difference(a, b).abs().amax(1) > 0).float().mean((-2, -1))
    assert compensated[moved].mean() < plain[moved].mean()
    # where it found no shift the two are the same
    assert torch.equal(compensated[~moved], plain[~moved])


def test_camera_shift_hands_the_world_model_o_t_moved_to_o_t_plus_1(windows):
    from lapo.config import LAMConfig
    from lapo.models.lam import LatentActionModel, camera_context

    # a camera that moved (3, -5) between o[t] and o[t+1], and (1, 2) between o[t-1] and o[t]
    o_t = windows[:8, 1]  # (8, 3, 64, 64)
    target = torch.roll(o_t, (3, -5), dims=(-2, -1))
    context = torch.stack([torch.roll(o_t, (-1, -2), dims=(-2, -1)), o_t], 1)  # (8, 2, 3, 64, 64)
    # without o[t+1], the shift from o[t-1] to o[t] stands in; given the shift, it is used
    guess = camera_context(context)  # (8, 3, 3, 64, 64)
    assert guess.shape == (8, 3, 3, 64, 64) and torch.equal(guess[:, 1:], context)
    assert torch.equal(guess[:, 0], torch.roll(o_t, (1, 2), dims=(-2, -1)))
    shift = torch.tensor([[3, -5]] * 8)  # (8, 2)
    given = camera_context(context, shift)
    assert torch.equal(given[:, 0], target)
    # the model measures the shift on the true next frame: its world model's first image is the
    # target itself here, so the prediction error differs from one given the stand-in shift
    cfg = LAMConfig(idm_width=1, wm_base=4, wm_camera_shift=True)
    model = LatentActionModel(cfg).eval()
    z = torch.zeros(8, cfg.quantizer.latent_dim)
    with torch.no_grad():
        err = model.prediction_error(context, target, z)  # (8, 3, 64, 64)
        assert torch.equal(err, (model.predict(context, z, shift=shift) - target) ** 2)
        assert not torch.equal(err, (model.predict(context, z) - target) ** 2)

    # with the world model's frame difference too, the difference is still o[t] - o[t-1]
    cfg = LAMConfig(idm_width=1, wm_base=4, wm_camera_shift=True, wm_differences=True)
    model = LatentActionModel(cfg).eval()
    diff = (context[:, 1] - context[:, 0]) * cfg.idm_difference_scale  # (8, 3, 64, 64)
    with torch.no_grad():
        expected = model.world_model(torch.cat([diff[:, None], given], 1), z)
        assert torch.equal(model.predict(context, z, shift=shift), expected)
