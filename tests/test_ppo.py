import numpy as np
import pytest
import torch

from lapo.rl.ppo import RewardNormalizer, compute_gae, ppo_loss


def test_gae_by_hand():
    # one env, three steps; obs[2] starts a new episode (dones[2] = 1)
    gamma, lam = 0.9, 0.5
    r = torch.tensor([[1.0], [2.0], [3.0]])
    v = torch.tensor([[0.5], [1.0], [2.0]])
    d = torch.tensor([[0.0], [0.0], [1.0]])
    next_v, next_d = torch.tensor([4.0]), torch.tensor([0.0])
    adv, ret = compute_gae(r, v, d, next_v, next_d, gamma, lam)
    # t=2: delta = 3 + 0.9*4 - 2 = 4.6; A2 = 4.6
    # t=1: episode ends after step 1 (obs[2] is a new episode): delta = 2 - 1 = 1; A1 = 1
    # t=0: delta = 1 + 0.9*1.0 - 0.5 = 1.4; A0 = 1.4 + 0.9*0.5*1 = 1.85
    torch.testing.assert_close(adv, torch.tensor([[1.85], [1.0], [4.6]]))
    torch.testing.assert_close(ret, adv + v)


def test_gae_lambda_one_is_discounted_return_minus_value():
    gamma = 0.99
    r = torch.tensor([[1.0], [0.0], [2.0]])
    v = torch.tensor([[0.3], [0.2], [0.1]])
    d = torch.zeros(3, 1)
    adv, _ = compute_gae(r, v, d, torch.tensor([0.0]), torch.tensor([1.0]), gamma, 1.0)
    mc = torch.tensor([[1 + 0 + gamma**2 * 2], [gamma * 2], [2.0]])
    torch.testing.assert_close(adv, mc - v)


def test_ppo_loss_by_hand():
    # ratio = e^{0.5} ~ 1.6487 > 1.2 with positive advantage -> clipped at 1.2
    new_lp, old_lp = torch.tensor([0.5, 0.0]), torch.tensor([0.0, 0.0])
    adv = torch.tensor([1.0, -1.0])
    loss = ppo_loss(
        new_lp,
        old_lp,
        adv,
        torch.tensor([1.0, 0.0]),
        torch.tensor([0.0, 0.0]),
        torch.tensor([2.0, 2.0]),
        clip_coef=0.2,
        ent_coef=0.01,
        vf_coef=0.5,
        norm_adv=False,
    )
    # sample 0: max(-1*1.6487, -1*1.2) = -1.2; sample 1: max(1*1, 1*1) = 1 -> mean -0.1
    assert loss.policy.item() == pytest.approx(-0.1)
    assert loss.value.item() == pytest.approx(0.25)  # 0.5 * mean([1, 0])
    assert loss.total.item() == pytest.approx(-0.1 - 0.01 * 2.0 + 0.5 * 0.25, abs=1e-6)
    assert loss.clip_frac.item() == pytest.approx(0.5)


def test_reward_normalizer_by_hand():
    # two envs, gamma 0.5, clip 3; env 1's episode ends at step 1. The statistics start from
    # a prior of weight 1e-4 (mean 0, var 1), hence rel=1e-3 below.
    norm = RewardNormalizer(num_envs=2, gamma=0.5, clip=3.0)
    out = norm(np.array([1.0, 2.0]), np.array([False, True]))
    # returns [1, 2]: mean 1.5, var 0.25; rewards / sqrt(0.25) = [2, 4], clipped to [2, 3]
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, [2.0, 3.0], rtol=1e-3)
    assert (norm.mean, norm.var) == (pytest.approx(1.5, rel=1e-3), pytest.approx(0.25, rel=1e-3))
    out = norm(np.array([3.0, -1.0]), np.array([False, False]))
    # returns: env 0 0.5 * 1 + 3 = 3.5, env 1 restarted at 0: -1. The statistics are those of
    # every return so far, [1, 2, 3.5, -1]: mean 1.375, var 18.25 / 4 - 1.375**2 = 2.671875
    assert norm.mean == pytest.approx(1.375, rel=1e-3)
    assert norm.var == pytest.approx(2.671875, rel=1e-3)
    np.testing.assert_allclose(out, np.array([3.0, -1.0]) / np.sqrt(2.671875), rtol=1e-3)
    # a normaliser loaded from the state continues exactly as the original
    other = RewardNormalizer(2, 0.5, clip=3.0)
    other.load_state_dict(norm.state_dict())
    reward, done = np.array([0.5, 2.0]), np.array([True, False])
    np.testing.assert_array_equal(other(reward, done), norm(reward, done))
    assert (other.mean, other.var, other.count) == (norm.mean, norm.var, norm.count)
