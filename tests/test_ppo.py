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


def test_reward_normalizer_tracks_return_std_and_clips():
    norm = RewardNormalizer(num_envs=1, gamma=0.0, clip=10.0)
    rng = np.random.default_rng(0)
    for _ in range(2000):
        out = norm(rng.normal(0, 3.0, size=1), np.array([False]))
    # with gamma 0 the "return" is the reward itself: its std is ~3
    assert np.sqrt(norm.var) == pytest.approx(3.0, rel=0.1)
    assert abs(out[0]) <= 10.0
    big = norm(np.array([1e6]), np.array([True]))
    assert big[0] == 10.0
    state = norm.state_dict()
    other = RewardNormalizer(1, 0.0)
    other.load_state_dict(state)
    assert other.var == norm.var and other.count == norm.count
