"""Stage-1 networks: shapes in and out, and the world model's action path pinned to the
plain convolution it replaces."""

import torch
import torch.nn.functional as F

from lapo.config import QuantizerConfig
from lapo.models.idm import IDM
from lapo.models.world_model import TiledActionConv, WorldModel


def test_tiled_action_conv_equals_the_convolution_of_the_concatenation():
    torch.manual_seed(0)
    conv = TiledActionConv(image_channels=6, action_dim=5, out_channels=4).double()
    image = torch.randn(3, 6, 9, 7, dtype=torch.double, requires_grad=True)
    action = torch.randn(3, 5, dtype=torch.double, requires_grad=True)
    tiled = action[:, :, None, None].expand(-1, -1, 9, 7)
    ref = F.conv2d(torch.cat([image, tiled], 1), conv.weight, conv.bias, padding=1)
    out = conv(image, action)
    assert out.shape == (3, 4, 9, 7)
    torch.testing.assert_close(out, ref)
    # same gradients for the image, the action and the weights
    g = torch.randn_like(ref)
    grads = torch.autograd.grad((out * g).sum(), (image, action, conv.weight))
    ref_grads = torch.autograd.grad((ref * g).sum(), (image, action, conv.weight))
    for a, b in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(a, b)


def test_tiled_action_conv_corner_by_hand():
    # one image channel of zeros, one action dim = 1, all weights 1, no bias: each output
    # pixel counts the kernel taps inside the image (4 in a corner, 6 on an edge, 9 inside)
    conv = TiledActionConv(image_channels=1, action_dim=1, out_channels=1)
    with torch.no_grad():
        conv.weight.fill_(1.0)
        conv.bias.zero_()
    out = conv(torch.zeros(1, 1, 4, 4), torch.ones(1, 1))[0, 0]
    assert out.tolist() == [
        [4.0, 6.0, 6.0, 4.0],
        [6.0, 9.0, 9.0, 6.0],
        [6.0, 9.0, 9.0, 6.0],
        [4.0, 6.0, 6.0, 4.0],
    ]


def test_world_model_and_idm_shapes():
    q = QuantizerConfig(num_codebooks=1, latents_per_codebook=2, code_dim=4, num_entries=8)
    idm = IDM(q, frames=3, width=1)
    frames = torch.rand(2, 3, 3, 64, 64) - 0.5
    z, out = idm(frames)
    assert z.shape == (2, 8) and out.z_q.shape == (2, 8)
    wm = WorldModel(action_dim=8, context_frames=2, base=4)
    pred = wm(frames[:, :2], out.z_q)
    assert pred.shape == (2, 3, 64, 64)
    assert pred.abs().max() <= 0.5
    # the prediction depends on the action
    assert not torch.allclose(pred, wm(frames[:, :2], out.z_q + 1.0))


def test_action_everywhere_reaches_every_up_block_and_the_head():
    torch.manual_seed(0)
    context, action = torch.rand(2, 2, 3, 64, 64) - 0.5, torch.randn(2, 8)
    wm = WorldModel(action_dim=8, context_frames=2, base=4, action_everywhere=True)
    pred = wm(context, action)
    assert pred.shape == (2, 3, 64, 64) and pred.abs().max() <= 0.5
    pred.sum().backward()
    # the head's action channels (after the b = 4 feature and 6 frame channels) and each shift
    assert wm.head_action.weight.grad[:, 4 + 6 :].abs().sum() > 0
    assert all(shift.weight.grad.abs().sum() > 0 for shift in wm.up_shift)
    # without the option the parameters are LAPO's, so older checkpoints still load
    plain = WorldModel(action_dim=8, context_frames=2, base=4).state_dict()
    assert "head.0.weight" in plain and not any(k.startswith("up_shift") for k in plain)


def test_space_to_depth_runs_no_layer_at_64x64_and_unfolds_the_head_exactly():
    torch.manual_seed(0)
    context, action = torch.rand(2, 2, 3, 64, 64) - 0.5, torch.randn(2, 8)
    wm = WorldModel(action_dim=8, context_frames=2, base=4, space_to_depth=True)
    sizes = []
    hooks = [m.register_forward_hook(lambda m, i, o: sizes.append(o.shape[-1]))
             for m in wm.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.ConvTranspose2d))]  # fmt: skip
    pred = wm(context, action)
    assert pred.shape == (2, 3, 64, 64) and pred.abs().max() <= 0.5
    assert max(sizes) == 32  # every convolution (transposed ones included) at 32x32 or less
    for h in hooks:
        h.remove()
    # the head's 12 channels at 32x32 are the frame's 2x2 blocks: a last layer that copies
    # o[t]'s folded channels from the head's input unfolds into o[t] itself
    b, c_in = 4, 24  # head input: b features, then the folded state (o[t-1] then o[t])
    pick = torch.zeros(12, b + c_in, 1, 1)
    pick[torch.arange(12), b + 12 + torch.arange(12)] = 1.0  # o[t]'s 12 folded channels
    wm.head = torch.nn.Conv2d(b + c_in, 12, 1, bias=False)
    with torch.no_grad():
        wm.head.weight.copy_(pick)
        out = wm(context, action)  # tanh(o[t]) / 2
    torch.testing.assert_close(out, torch.tanh(context[:, 1]) / 2)


def test_idm_differences_against_the_global_shift_vanish_for_a_rolled_frame():
    from lapo.models.idm import stack_frames

    torch.manual_seed(0)
    a = torch.rand(2, 3, 64, 64) - 0.5
    b = torch.roll(a, (3, -5), dims=(-2, -1))
    c = torch.roll(b, (0, 2), dims=(-2, -1))
    frames = torch.stack([a, b, c], 1)  # (2, 3, 3, 64, 64): the camera moves, nothing else
    plain = stack_frames(frames, differences=True, difference_scale=10.0)
    moved = stack_frames(frames, differences=True, difference_scale=10.0, compensate=True)
    assert plain.shape == moved.shape == (2, 15, 64, 64)
    assert torch.equal(moved[:, :9], plain[:, :9])  # the frames themselves
    assert plain[:, 9:].abs().amax() > 1 and torch.equal(moved[:, 9:], torch.zeros(2, 6, 64, 64))
    # the IDM built with motion_compensate_idm sees the compensated differences
    from lapo.config import LAMConfig
    from lapo.models.idm import build_idm

    cfg = LAMConfig(idm_width=1, idm_differences=True, motion_compensate_idm=True)
    assert build_idm(cfg).compensate and not build_idm(LAMConfig(idm_width=1)).compensate


def test_a_world_model_with_the_previous_latent_takes_both_and_zeros_for_none():
    from lapo.config import LAMConfig
    from lapo.models.lam import LatentActionModel

    q = QuantizerConfig(num_codebooks=1, latents_per_codebook=2, code_dim=4, num_entries=8)
    torch.manual_seed(0)
    model = LatentActionModel(LAMConfig(idm_width=1, wm_base=4, quantizer=q, wm_prev_latent=True))
    assert model.world_model.down[0].conv.weight.shape[1] == 6 + 2 * 8  # frames + (z[t], z[t-1])
    model.eval()
    context, z, z_prev = torch.rand(2, 2, 3, 64, 64) - 0.5, torch.randn(2, 8), torch.randn(2, 8)
    with torch.no_grad():
        pred = model.predict(context, z, z_prev)
        assert pred.shape == (2, 3, 64, 64)
        assert not torch.allclose(pred, model.predict(context, z, z_prev + 1.0))
        assert torch.equal(model.predict(context, z), model.predict(context, z, 0 * z_prev))
    # a world model without the option ignores a previous latent
    plain = LatentActionModel(LAMConfig(idm_width=1, wm_base=4, quantizer=q)).eval()
    with torch.no_grad():
        assert torch.equal(plain.predict(context, z, z_prev), plain.predict(context, z))
