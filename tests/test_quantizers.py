import pytest
import torch

from lapo.config import QuantizerConfig
from lapo.models.quantizers import FSQ, EMAVectorQuantizer, NoQuantizer, make_quantizer, perplexity


def tiny_vq(**kw):
    cfg = QuantizerConfig(num_codebooks=1, latents_per_codebook=1, code_dim=1, num_entries=2, **kw)
    vq = EMAVectorQuantizer(cfg, eps=0.0)
    vq.embedding.copy_(torch.tensor([[[0.0], [1.0]]]))
    vq.ema_weight.copy_(vq.embedding)
    vq.ema_count.fill_(1.0)
    return vq


def test_paper_shape_and_straight_through_gradient():
    cfg = QuantizerConfig()  # paper: 2 codebooks x 4 latents x 16 dims, 64 entries
    assert cfg.latent_dim == 128
    vq = make_quantizer(cfg)
    z = torch.randn(5, 128, requires_grad=True)
    out = vq(z)
    assert out.z_q.shape == (5, 128) and out.indices.shape == (5, 2, 4)
    w = torch.randn(5, 128)
    (out.z_q * w).sum().backward()
    # straight-through: d z_q / d z is the identity; the commitment loss is not in this sum
    torch.testing.assert_close(z.grad, w)


def test_ema_update_by_hand():
    vq = tiny_vq(decay=0.5, commitment_cost=0.25)
    vq.train()
    z = torch.tensor([[0.2], [0.4], [0.9]])
    out = vq(z)
    # nearest codes: 0.2 -> 0, 0.4 -> 0, 0.9 -> 1
    assert out.indices.flatten().tolist() == [0, 0, 1]
    # counts: 0.5*1 + 0.5*2 = 1.5 and 0.5*1 + 0.5*1 = 1.0
    torch.testing.assert_close(vq.ema_count, torch.tensor([[1.5, 1.0]]))
    # weights: 0.5*0 + 0.5*(0.2+0.4) = 0.3 and 0.5*1 + 0.5*0.9 = 0.95
    torch.testing.assert_close(vq.ema_weight, torch.tensor([[[0.3], [0.95]]]))
    torch.testing.assert_close(vq.embedding, torch.tensor([[[0.2], [0.95]]]))
    # commitment: 0.25 * mean((0.2-0)^2, (0.4-0)^2, (0.9-1)^2) with the pre-update codes
    assert out.loss.item() == pytest.approx(0.25 * (0.04 + 0.16 + 0.01) / 3)
    # z_q holds the codes used for this batch (before the update)
    torch.testing.assert_close(out.z_q, torch.tensor([[0.0], [0.0], [1.0]]))


def test_eval_mode_freezes_codebook_and_codes_round_trip():
    vq = make_quantizer(QuantizerConfig())
    vq.eval()
    before = vq.embedding.clone()
    z = torch.randn(7, 128)
    out = vq(z)
    torch.testing.assert_close(vq.embedding, before)
    torch.testing.assert_close(vq.codes(out.indices), out.z_q)
    # quantising a code gives the code back
    torch.testing.assert_close(vq(out.z_q).z_q, out.z_q)


def test_dead_code_restart_moves_unused_code_onto_batch_latent():
    vq = tiny_vq(decay=0.5, restart_unused_steps=1)
    vq.train()
    z = torch.tensor([[0.1], [0.2], [0.3]])  # all nearest to code 0: code 1 unused for a step
    vq(z)
    assert vq.steps_unused.tolist() == [[0, 0]]  # code 1 restarted, its count of idle steps too
    assert min(abs(vq.embedding[0, 1].item() - v) for v in (0.1, 0.2, 0.3)) < 1e-6
    # without restarts the unused code stays where it was
    plain = tiny_vq(decay=0.5)
    plain.train()
    plain(z)
    assert plain.embedding[0, 1].item() == pytest.approx(1.0)


def test_perplexity_by_hand():
    assert perplexity(torch.tensor([[0, 0, 0, 0]]), 4).item() == pytest.approx(1.0)
    assert perplexity(torch.tensor([[0, 1, 2, 3]]), 4).item() == pytest.approx(4.0)
    assert perplexity(torch.tensor([[0, 0, 1, 1]]), 4).item() == pytest.approx(2.0)


def test_fsq_values_and_indices_by_hand():
    # levels (3, 4), one group. 3 levels: tanh(x) rounded, so 0 -> 0, 2 -> 1, -0.3 -> 0, digit
    # = value + 1. 4 levels (even): tanh(x + atanh(1/3)) * 1.5 - 0.5 rounded to {-2..1}, then
    # (r + 0.5) / 1.5: 0 -> r 0 -> 1/3 (digit 2), 3 -> r 1 -> 1 (digit 3), -3 -> r -2 -> -1
    # (digit 0). Index = digit0 + 3 * digit1.
    fsq = make_quantizer(QuantizerConfig(kind="fsq", fsq_levels="3,4", fsq_groups=1))
    out = fsq(torch.tensor([[0.0, 0.0], [2.0, 3.0], [-0.3, -3.0]]))
    torch.testing.assert_close(out.z_q, torch.tensor([[0.0, 1 / 3], [1.0, 1.0], [0.0, -1.0]]))
    assert out.indices.flatten().tolist() == [1 + 3 * 2, 2 + 3 * 3, 1 + 3 * 0]
    assert out.stats["usage"].item() == pytest.approx(3 / 12)


def test_fsq_levels_range_and_gradient():
    cfg = QuantizerConfig(kind="fsq", fsq_levels="8,5,5,5", fsq_groups=2)
    assert cfg.latent_dim == 8
    fsq = make_quantizer(cfg)
    assert isinstance(fsq, FSQ) and fsq.num_codes == 1000
    z = (torch.randn(200, 8) * 3).requires_grad_()
    out = fsq(z)
    assert out.z_q.abs().max() <= 1.0 + 1e-6
    q = out.z_q.detach().reshape(200, 2, 4)
    for k, levels in enumerate((8, 5, 5, 5)):
        assert len(q[:, :, k].unique()) <= levels
    assert out.indices.min() >= 0 and out.indices.max() < 1000
    out.z_q.sum().backward()
    assert z.grad.abs().sum() > 0


def test_no_quantizer_is_identity():
    q = make_quantizer(QuantizerConfig(kind="none", continuous_dim=16))
    assert isinstance(q, NoQuantizer)
    z = torch.randn(3, 16)
    assert torch.equal(q(z).z_q, z)
    with pytest.raises(ValueError, match="ema_vq, fsq, none, got 'gumbel'"):
        make_quantizer(QuantizerConfig(kind="gumbel"))


def four_code_vq(**kw):
    """One codebook of four 2-d codes at the corners of a square, counts as in training."""
    cfg = QuantizerConfig(num_codebooks=1, latents_per_codebook=1, code_dim=2, num_entries=4, **kw)
    vq = EMAVectorQuantizer(cfg)
    corners = torch.tensor([[[-1.0, -1.0], [-1.0, 1.0], [1.0, -1.0], [1.0, 1.0]]])
    vq.embedding.copy_(corners)
    vq.ema_weight.copy_(corners * vq.ema_count.unsqueeze(-1))
    return vq.train(), corners[0]


def batch_near(corners, codes, n=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    pick = torch.tensor(codes)[torch.randint(0, len(codes), (n,), generator=g)]
    return corners[pick] + 0.05 * torch.randn(n, 2, generator=g)


def test_restart_fires_for_a_code_that_stops_being_used_at_decay_0999():
    vq, corners = four_code_vq(decay=0.999, restart_unused_steps=200)
    for s in range(300):  # all four codes in use
        vq(batch_near(corners, [0, 1, 2, 3], seed=s))
    assert int(vq.steps_unused.max()) < 5
    moved_at = None
    for s in range(400):  # code 3 is nobody's nearest any more
        z = batch_near(corners, [0, 1, 2], seed=1000 + s)
        vq(z)
        if moved_at is None and not torch.allclose(vq.embedding[0, 3], corners[3], atol=0.2):
            moved_at = s + 1
            # restarted onto a latent of that batch, near one of the codes still in use
            assert torch.cdist(vq.embedding[0, 3:4], corners[:3]).min() < 0.3
    assert moved_at == 200


def test_usage_reads_what_was_used_recently():
    vq, corners = four_code_vq(decay=0.999)  # no restarts: usage horizon 100 steps
    for s in range(50):
        out = vq(batch_near(corners, [0, 1, 2, 3], seed=s))
    assert out.stats["usage"] == 1.0
    for s in range(101):
        out = vq(batch_near(corners, [0, 1, 2], seed=1000 + s))
    assert out.stats["usage"] == pytest.approx(0.75)


def test_reference_counts_start_at_zero_and_store_the_smoothed_counts():
    cfg = QuantizerConfig(
        num_codebooks=1,
        latents_per_codebook=1,
        code_dim=1,
        num_entries=2,
        decay=0.5,
        reference_counts=True,
    )
    vq = EMAVectorQuantizer(cfg, eps=0.1)
    assert vq.ema_count.sum() == 0
    vq.embedding.copy_(torch.tensor([[[0.0], [1.0]]]))
    vq.train()(torch.tensor([[0.2], [0.4], [0.9]]))  # uses: code 0 twice, code 1 once
    # EMA counts 0.5 * (2, 1) = (1.0, 0.5), n = 1.5, stored as (c + 0.1) / (1.5 + 0.2) * 1.5
    torch.testing.assert_close(vq.ema_count, torch.tensor([[1.1 / 1.7 * 1.5, 0.6 / 1.7 * 1.5]]))


def test_state_dicts_from_before_steps_unused_still_load():
    vq = make_quantizer(QuantizerConfig())
    old = {k: v for k, v in vq.state_dict().items() if k != "steps_unused"}
    fresh = make_quantizer(QuantizerConfig())
    fresh.load_state_dict(old)
    torch.testing.assert_close(fresh.embedding, vq.embedding)  # the codebook came over
    assert int(fresh.steps_unused.sum()) == 0  # and the new counter starts at zero


def test_a_saved_config_with_the_retired_threshold_off_loads_and_on_is_refused():
    from lapo.config import config_from_dict
    from lapo.errors import ConfigError

    q = config_from_dict(QuantizerConfig, {"decay": 0.99, "dead_code_threshold": 0.0})
    assert q.decay == 0.99
    with pytest.raises(ConfigError, match="dead_code_threshold = 0.01 was removed"):
        config_from_dict(QuantizerConfig, {"dead_code_threshold": 0.01}, "run/config.json")
