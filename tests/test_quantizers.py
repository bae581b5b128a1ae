import pytest
import torch

from lapo.models.quantizers import (
    FSQ,
    EMAVectorQuantizer,
    NoQuantizer,
    QuantizerConfig,
    make_quantizer,
    perplexity,
)


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
    vq = tiny_vq(decay=0.5, dead_code_threshold=0.6)
    vq.train()
    z = torch.tensor([[0.1], [0.2], [0.3]])  # all nearest to code 0; code 1 decays to 0.5
    vq(z)
    assert vq.ema_count[0, 1].item() == pytest.approx(0.6)
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
    with pytest.raises(ValueError, match="unknown quantizer"):
        make_quantizer(QuantizerConfig(kind="gumbel"))
