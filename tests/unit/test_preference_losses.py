"""The pure preference-alignment losses (tuneforge.tasks.preference_losses): every loss's value on
log-probs worked out by hand (math.log/math.exp here, never the function under test), against TRL's own
code where it can be called without a model (ORPO's odds-ratio loss, CPO's SimPO loss, GRPO's nanstd)
and against TRL's source lines re-typed with their file:line where the loss sits inside a trainer's
compute_loss; gradient directions, GRPO's advantages, k3 and masking, and the exact error messages.
"""

from __future__ import annotations

import math
import types
import warnings

import pytest

torch = pytest.importorskip("torch")
F = torch.nn.functional

from tuneforge.tasks.preference_losses import (  # noqa: E402
    bradley_terry_loss,
    dpo_family_loss,
    grpo_advantages,
    grpo_token_loss,
    kl_k3,
    kto_kl_estimate,
    kto_loss,
    orpo_loss,
    preference_metrics,
    simpo_loss,
)

pytestmark = pytest.mark.usefixtures("one_thread")

LN2 = math.log(2.0)


def t(*values):
    return torch.tensor(values, dtype=torch.float32)


def softplus(x: float) -> float:
    """-log sigmoid(-x) = log(1 + e^x), by hand."""
    return math.log1p(math.exp(x))


def random_pairs(n=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [-(torch.rand(n, generator=g) * 40 + 1) for _ in range(4)]  # summed log-probs in [-41, -1]


# --- DPO family -------------------------------------------------------------------------------------


def test_dpo_at_policy_equal_to_reference_is_ln2():
    logps = t(-12.5, -3.0, -40.0)
    out = dpo_family_loss("dpo", logps, logps - 1.0, logps, logps - 1.0, beta=0.1)
    assert out.shape == (3,)
    assert torch.allclose(out, torch.full((3,), LN2), atol=1e-7)
    assert abs(out[0].item() - 0.6931471805599453) < 1e-6


def test_dpo_cdpo_and_robust_by_hand():
    # h = (pc - rc) - (pr - rr) = (-10 + 11) - (-12 + 11) = 2; beta h = 0.2
    pc, pr, rc, rr = t(-10.0), t(-12.0), t(-11.0), t(-11.0)
    clean = softplus(-0.2)  # -log sigmoid(0.2)
    flipped = softplus(0.2)  # -log sigmoid(-0.2)
    assert dpo_family_loss("dpo", pc, pr, rc, rr, beta=0.1).item() == pytest.approx(clean, abs=1e-6)
    assert dpo_family_loss("dpo", pc, pr, rc, rr, beta=0.1, label_smoothing=0.1).item() == pytest.approx(
        0.9 * clean + 0.1 * flipped, abs=1e-6)
    assert dpo_family_loss("robust", pc, pr, rc, rr, beta=0.1, label_smoothing=0.1).item() == pytest.approx(
        (0.9 * clean - 0.1 * flipped) / 0.8, abs=1e-6)
    # robust with eps = 0 is DPO
    assert dpo_family_loss("robust", pc, pr, rc, rr, beta=0.1).item() == pytest.approx(clean, abs=1e-6)


def test_cdpo_is_minimised_at_the_finite_margin_it_promises():
    eps, beta = 0.1, 0.5
    best_h = math.log((1 - eps) / eps) / beta
    h = torch.tensor([best_h], requires_grad=True)
    zero = torch.zeros(1)
    dpo_family_loss("dpo", h, zero, zero, zero, beta=beta, label_smoothing=eps).sum().backward()
    assert abs(h.grad.item()) < 1e-6


def test_ipo_by_hand():
    zero = torch.zeros(2)
    for beta in (0.1, 0.5):
        out = dpo_family_loss("ipo", zero, zero, zero, zero, beta=beta)  # h = 0
        assert torch.allclose(out, torch.full((2,), 1 / (4 * beta**2)), rtol=1e-6)
    # h = 2, beta = 0.1: (2 - 5)^2 = 9
    assert dpo_family_loss("ipo", t(-10.0), t(-12.0), t(-11.0), t(-11.0), beta=0.1).item() == pytest.approx(9.0)


def test_dpo_family_matches_trl_source_lines():
    """TRL 1.16 computes these inside DPOTrainer._compute_loss (no model-free entry), re-typed here."""
    pc, pr, rc, rr = random_pairs()
    beta, eps = 0.3, 0.2
    delta_score = (pc - rc) - (pr - rr)  # trl/trainer/dpo_trainer.py:1350-1351, 1383
    sigmoid = -F.logsigmoid(beta * delta_score)  # dpo_trainer.py:1388
    clean_loss_term = -(1 - eps) * F.logsigmoid(beta * delta_score)  # dpo_trainer.py:1429-1431
    flipped_loss_term = -eps * F.logsigmoid(-beta * delta_score)
    robust = (clean_loss_term - flipped_loss_term) / (1 - 2 * eps)
    ipo = (delta_score - 1 / (2 * beta)) ** 2  # dpo_trainer.py:1404 (on per-token averages there)
    cdpo = -F.logsigmoid(beta * delta_score) * (1 - eps) - F.logsigmoid(-beta * delta_score) * eps  # :1453-1456
    assert torch.allclose(dpo_family_loss("dpo", pc, pr, rc, rr, beta=beta), sigmoid, atol=1e-6)
    assert torch.allclose(dpo_family_loss("robust", pc, pr, rc, rr, beta=beta, label_smoothing=eps), robust,
                          atol=1e-5)
    assert torch.allclose(dpo_family_loss("ipo", pc, pr, rc, rr, beta=beta), ipo, rtol=1e-5)
    assert torch.allclose(dpo_family_loss("dpo", pc, pr, rc, rr, beta=beta, label_smoothing=eps), cdpo, atol=1e-6)


def test_dpo_gradient_raises_chosen_and_lowers_rejected():
    pc, pr = t(-10.0, -5.0).requires_grad_(), t(-9.0, -7.0).requires_grad_()
    rc, rr = t(-10.0, -6.0), t(-9.0, -6.0)
    beta = 0.1
    dpo_family_loss("dpo", pc, pr, rc, rr, beta=beta).sum().backward()
    # gradient descent moves against the gradient: chosen up (negative gradient), rejected down (positive)
    assert (pc.grad < 0).all() and (pr.grad > 0).all()
    # dL/dpc = -beta sigmoid(-beta h); h = [0, 2]
    expected = [-beta / (1 + math.exp(beta * h)) for h in (0.0, 2.0)]
    assert pc.grad.tolist() == pytest.approx(expected, abs=1e-7)
    assert pr.grad.tolist() == pytest.approx([-g for g in expected], abs=1e-7)


def test_dpo_is_finite_at_extreme_margins():
    pc, pr, rc, rr = t(0.0, -1e4), t(-1e4, 0.0), t(-1e4, 0.0), t(0.0, -1e4)
    out = dpo_family_loss("dpo", pc, pr, rc, rr, beta=1.0)
    assert out[0].item() == 0.0 and out[1].item() == pytest.approx(2e4)


def test_dpo_family_bad_arguments_give_the_exact_message():
    x = t(-1.0)
    with pytest.raises(ValueError) as err:
        dpo_family_loss("sigmoid", x, x, x, x, beta=0.1)
    assert str(err.value) == "unknown DPO-family loss 'sigmoid'; allowed: 'dpo', 'robust', 'ipo'"
    with pytest.raises(ValueError) as err:
        dpo_family_loss("robust", x, x, x, x, beta=0.1, label_smoothing=0.5)
    assert str(err.value) == ("robust: label_smoothing (the probability that a preference label is flipped) "
                              "must lie in [0, 0.5); got 0.5")
    with pytest.raises(ValueError) as err:
        dpo_family_loss("dpo", x, x, x, x, beta=0.1, label_smoothing=-0.1)
    assert str(err.value) == ("dpo: label_smoothing (the probability that a preference label is flipped) "
                              "must lie in [0, 0.5); got -0.1")
    with pytest.raises(ValueError) as err:
        dpo_family_loss("ipo", x, x, x, x, beta=0.1, label_smoothing=0.1)
    assert str(err.value) == "ipo: label_smoothing is not defined for IPO; got 0.1, use 0"
    with pytest.raises(ValueError) as err:
        dpo_family_loss("ipo", x, x, x, x, beta=0.0)
    assert str(err.value) == "beta must be > 0; got 0.0"
    with pytest.raises(ValueError) as err:
        dpo_family_loss("dpo", t(-1.0, -2.0), x, x, x, beta=0.1)
    assert str(err.value) == ("the tensors must have the same shape; got policy_chosen [2], policy_rejected [1], "
                              "ref_chosen [1], ref_rejected [1]")


# --- SimPO, ORPO --------------------------------------------------------------------------------------


def test_simpo_by_hand():
    # (c - r) - gamma / beta = 0.5 - 0.25 = 0.25; beta * that = 0.5 = beta (c - r) - gamma
    c, r = t(-0.5), t(-1.0)
    assert simpo_loss(c, r, beta=2.0, gamma=0.5).item() == pytest.approx(softplus(-0.5), abs=1e-6)
    assert simpo_loss(c, r, beta=2.0, gamma=0.5, label_smoothing=0.2).item() == pytest.approx(
        0.8 * softplus(-0.5) + 0.2 * softplus(0.5), abs=1e-6)
    # gamma = 0, equal averages: ln 2
    assert simpo_loss(c, c, beta=2.0, gamma=0.0).item() == pytest.approx(LN2, abs=1e-7)


def test_orpo_by_hand():
    c, r, lam = -0.5, -1.5, 0.1
    log_odds = (c - r) - (math.log1p(-math.exp(c)) - math.log1p(-math.exp(r)))
    or_by_hand = math.log1p(math.exp(-log_odds))  # -log sigmoid(log_odds)
    total, part = orpo_loss(t(c), t(r), t(-c), lam=lam)
    assert part.item() == pytest.approx(or_by_hand, abs=1e-6)
    assert total.item() == pytest.approx(0.5 + lam * or_by_hand, abs=1e-6)
    # equal averages: odds ratio 1, -log sigmoid(0) = ln 2
    _, part = orpo_loss(t(-0.7), t(-0.7), t(0.7), lam=1.0)
    assert part.item() == pytest.approx(LN2, abs=1e-7)


def test_orpo_is_accurate_and_finite_near_zero():
    # average log-probs near 0 (a confident model): log(1 - e^x) must not cancel, 0 must not give NaN
    c = torch.tensor([-1e-5, -0.01, 0.0, -2e-6], requires_grad=True)
    r = torch.tensor([-2e-5, -3.0, -1e-3, 0.0], requires_grad=True)
    total, part = orpo_loss(c, r, -c, lam=1.0)
    total.sum().backward()
    assert torch.isfinite(total).all() and torch.isfinite(c.grad).all() and torch.isfinite(r.grad).all()
    cc, rr = -1e-5, -2e-5
    log_odds = (cc - rr) - (math.log(-math.expm1(cc)) - math.log(-math.expm1(rr)))
    assert part[0].item() == pytest.approx(math.log1p(math.exp(-log_odds)), rel=1e-4)


# --- KTO ----------------------------------------------------------------------------------------------


def test_kto_by_hand_desirable_and_undesirable():
    # z = p - r = 1, kl = 0.3, beta = 0.5
    p, r, kl, beta = t(-5.0, -5.0), t(-6.0, -6.0), torch.tensor(0.3), 0.5
    desirable = torch.tensor([True, False])
    out = kto_loss(p, r, desirable, kl, beta=beta, desirable_weight=1.5, undesirable_weight=2.0)
    sig = lambda x: 1 / (1 + math.exp(-x))  # noqa: E731
    assert out[0].item() == pytest.approx(1.5 * (1 - sig(0.5 * (1 - 0.3))), abs=1e-6)
    assert out[1].item() == pytest.approx(2.0 * (1 - sig(0.5 * (0.3 - 1))), abs=1e-6)


def test_kto_matches_trl_source_lines_and_kl_gets_no_gradient():
    p, r, _, _ = random_pairs(32, seed=1)
    p = (p / 4).requires_grad_()
    desirable = torch.arange(32) % 3 != 0
    beta, w_d, w_u = 0.1, 1.0, 1.33
    kl = kto_kl_estimate(p, r)
    # trl/trainer/kto_trainer.py:1443-1444 (on mismatched pairs there), :1453, :1470, :1479-1482
    kl_trl = (p - r).mean().detach().clamp(min=0)
    logratios = p - r
    chosen = 1 - F.sigmoid(beta * (logratios[desirable] - kl_trl))
    rejected = 1 - F.sigmoid(beta * (kl_trl - logratios[~desirable]))
    trl = torch.cat((w_d * chosen, w_u * rejected), 0)
    ours = kto_loss(p, r, desirable, kl, beta=beta, desirable_weight=w_d, undesirable_weight=w_u)
    assert kl.item() == pytest.approx(kl_trl.item()) and not kl.requires_grad
    assert torch.allclose(torch.cat((ours[desirable], ours[~desirable])), trl, atol=1e-7)
    # a kl that does carry a gradient is detached inside: only z moves
    live_kl = (p - r).mean()
    kto_loss(p, r, desirable, live_kl, beta=beta).sum().backward()
    assert (p.grad[desirable] < 0).all() and (p.grad[~desirable] > 0).all()


def test_kto_kl_estimate_clamps_at_zero():
    assert kto_kl_estimate(t(-3.0, -4.0), t(-2.0, -2.0)).item() == 0.0  # mean -1.5 -> 0
    assert kto_kl_estimate(t(-1.0, -2.0), t(-2.0, -2.0)).item() == pytest.approx(0.5)
    assert kto_kl_estimate(torch.zeros(0), torch.zeros(0)).item() == 0.0


def test_kto_needs_a_bool_mask():
    x = t(-1.0)
    with pytest.raises(ValueError) as err:
        kto_loss(x, x, torch.tensor([1]), torch.tensor(0.0), beta=0.1)
    assert str(err.value) == "kto: desirable must be a bool tensor; got torch.int64"


# --- Bradley-Terry ------------------------------------------------------------------------------------


def test_bradley_terry_by_hand_and_as_trl():
    sc, sr = t(1.5, -0.2), t(0.5, 0.3)
    assert bradley_terry_loss(sc, sr)[0].item() == pytest.approx(softplus(-1.0), abs=1e-6)
    margin = t(0.25, 1.0)
    assert bradley_terry_loss(sc, sr, margin=margin)[0].item() == pytest.approx(softplus(-0.75), abs=1e-6)
    centred = bradley_terry_loss(sc, sr, margin=margin, center_coefficient=0.01)
    assert centred[0].item() == pytest.approx(softplus(-0.75) + 0.01 * 2.0**2, abs=1e-6)
    # the batch mean is TRL's loss, trl/trainer/reward_trainer.py:789-795
    trl = -F.logsigmoid(sc - sr - margin).mean() + 0.01 * torch.mean((sc + sr) ** 2)
    assert centred.mean().item() == pytest.approx(trl.item(), abs=1e-7)


# --- GRPO ---------------------------------------------------------------------------------------------


def test_grpo_advantages_per_group():
    rewards = torch.tensor([[1.0, 2.0, 3.0, 4.0], [0.5, 0.5, 0.5, 0.5], [1.0, 0.0, 1.0, 0.0]])
    adv = grpo_advantages(rewards)
    assert torch.isfinite(adv).all()
    assert torch.allclose(adv.mean(dim=1), torch.zeros(3), atol=1e-6)
    assert adv[1].tolist() == [0.0, 0.0, 0.0, 0.0]  # equal rewards: no signal, no NaN
    # unit (unbiased) std in groups that vary; eps = 1e-4 keeps it just under 1
    assert adv[0].std().item() == pytest.approx(1.0, abs=1e-3) and adv[2].std().item() == pytest.approx(1.0, abs=1e-3)
    # by hand: group 3 has mean 0.5, unbiased std sqrt(4 * 0.25 / 3)
    std = math.sqrt(1 / 3)
    assert adv[2].tolist() == pytest.approx([0.5 / (std + 1e-4), -0.5 / (std + 1e-4)] * 2, abs=1e-6)
    # scale=False: centred only
    assert grpo_advantages(rewards, scale=False)[0].tolist() == [-1.5, -0.5, 0.5, 1.5]


def test_grpo_advantages_single_generation_and_nan_rewards():
    assert grpo_advantages(torch.tensor([[3.0], [-1.0]])).tolist() == [[0.0], [0.0]]
    # a NaN (unscorable) reward leaves its group's statistics and gets 0, like TRL
    adv = grpo_advantages(torch.tensor([[1.0, float("nan"), 3.0]]))
    std = math.sqrt(2.0)  # unbiased std of [1, 3]
    assert adv[0].tolist() == pytest.approx([-1 / (std + 1e-4), 0.0, 1 / (std + 1e-4)], abs=1e-6)
    with pytest.raises(ValueError) as err:
        grpo_advantages(torch.zeros(4))
    assert str(err.value) == "grpo_advantages: rewards must be [prompts, generations]; got shape [4]"


def test_grpo_advantages_match_trl_source_lines():
    g = torch.Generator().manual_seed(2)
    rewards = torch.randn(6, 8, generator=g)
    # trl/trainer/grpo_trainer.py:2765-2787 with nanstd (trl/trainer/utils.py:1021-1043: Bessel-corrected)
    flat = rewards.view(-1)
    mean = flat.view(-1, 8).mean(dim=1).repeat_interleave(8)
    std = flat.view(-1, 8).std(dim=1, unbiased=True).repeat_interleave(8)
    trl = ((flat - mean) / (std + 1e-4)).view(6, 8)
    assert torch.allclose(grpo_advantages(rewards), trl, atol=1e-6)


def test_kl_k3():
    a = t(-1.0, -2.5, -0.3)
    assert kl_k3(a, a).tolist() == [0.0, 0.0, 0.0]
    ref = t(-1.5, -2.0, -0.3001)
    k3 = kl_k3(a, ref)
    assert (k3 > 0).all()
    for got, d in zip(k3.tolist(), (-0.5, 0.5)):
        assert got == pytest.approx(math.exp(d) - d - 1, rel=1e-5)
    # TRL's form, trl/trainer/grpo_trainer.py:3100-3102, on ordinary differences
    logps, ref_logps = random_pairs(50, seed=3)[:2]
    logps, ref_logps = logps / 20, ref_logps / 20
    trl = torch.exp(ref_logps - logps) - (ref_logps - logps) - 1
    assert torch.allclose(kl_k3(logps, ref_logps), trl, rtol=1e-5, atol=1e-6)
    # never negative, also where exp(d) - d - 1 cancels in fp32
    d = torch.linspace(-1e-3, 1e-3, 2001)
    assert (kl_k3(torch.zeros_like(d), d) >= 0).all()


def test_grpo_token_loss_at_ratio_one_is_minus_advantage_plus_beta_kl():
    g = torch.Generator().manual_seed(4)
    logps = -torch.rand(3, 5, generator=g) * 3
    ref = logps + 0.1 * torch.randn(3, 5, generator=g)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0], [1, 0, 0, 0, 0]], dtype=torch.bool)
    adv = t(1.5, -0.5, 0.0)
    beta = 0.04
    loss, stats = grpo_token_loss(logps, logps.detach(), ref, adv, mask, beta=beta)
    k3 = kl_k3(logps, ref)
    seq_kl = torch.stack([k3[i][mask[i]].mean() for i in range(3)])
    assert torch.allclose(loss, -adv + beta * seq_kl, atol=1e-6)
    assert stats["clip_fraction"] == 0.0
    assert stats["kl"] == pytest.approx(k3[mask].mean().item(), rel=1e-5)
    # no reference, beta 0: exactly -A per sequence, and no "kl" key
    loss, stats = grpo_token_loss(logps, logps.detach(), None, adv, mask)
    assert loss.tolist() == pytest.approx([-1.5, 0.5, 0.0], abs=1e-7) and set(stats) == {"clip_fraction"}


def test_grpo_token_loss_masked_tokens_do_not_contribute():
    logps = torch.tensor([[-1.0, -2.0, -3.0], [-0.5, -0.5, -0.5]], requires_grad=True)
    old = torch.tensor([[-1.1, -2.0, float("inf")], [-0.4, float("nan"), -1e30]])
    ref = torch.tensor([[-1.0, -1.5, float("-inf")], [-0.5, 1e30, float("nan")]])
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])  # ints work too
    adv = t(1.0, -1.0)
    loss, stats = grpo_token_loss(logps, old, ref, adv, mask, beta=0.1)
    loss.sum().backward()
    assert torch.isfinite(loss).all() and torch.isfinite(logps.grad).all()
    assert logps.grad[0, 2].item() == 0.0 and logps.grad[1, 1:].tolist() == [0.0, 0.0]
    # by hand: sequence 0: ratios e^0.1 (clipped? 1.105 < 1.2: no) and 1; sequence 1: ratio e^-0.1
    k3 = lambda d: math.exp(d) - d - 1  # noqa: E731
    seq0 = (-(math.exp(0.1)) + 0.1 * k3(0.0) - 1.0 + 0.1 * k3(-1.5 + 2.0)) / 2
    seq1 = math.exp(-0.1) * 1.0 + 0.1 * k3(0.0)
    assert loss.tolist() == pytest.approx([seq0, seq1], abs=1e-6)
    assert stats["clip_fraction"] == 0.0 and math.isfinite(stats["kl"])


def test_grpo_token_loss_clipping():
    # ratios 1.5, 0.5, 1.5, 0.5 against advantages +1, +1, -1, -1 (one sequence each)
    logps = torch.log(torch.tensor([[1.5], [0.5], [1.5], [0.5]])).requires_grad_()
    old = torch.zeros(4, 1)
    adv = t(1.0, 1.0, -1.0, -1.0)
    mask = torch.ones(4, 1, dtype=torch.bool)
    loss, stats = grpo_token_loss(logps, old, None, adv, mask, epsilon_low=0.2, epsilon_high=0.28)
    loss.sum().backward()
    # A > 0, ratio 1.5: clipped at 1.28 (no gradient); A > 0, ratio 0.5: min is 0.5 (unclipped, gradient)
    # A < 0, ratio 1.5: -min(-1.5, -1.28) = 1.5 (unclipped); A < 0, ratio 0.5: clipped at 0.8 (no gradient)
    assert loss.tolist() == pytest.approx([-1.28, -0.5, 1.5, -0.8 * -1.0], abs=1e-6)
    assert logps.grad.view(-1).tolist() == pytest.approx([0.0, -0.5, 1.5, 0.0], abs=1e-6)
    assert stats["clip_fraction"] == 0.5  # TRL's clip_ratio/region_mean: the two gradient-free tokens


def test_grpo_token_loss_bad_arguments():
    x = torch.zeros(2, 3)
    with pytest.raises(ValueError) as err:
        grpo_token_loss(x, x, None, torch.zeros(2), x, beta=0.04)
    assert str(err.value) == "grpo_token_loss: beta=0.04 needs ref_logps (the KL penalty's reference)"
    with pytest.raises(ValueError) as err:
        grpo_token_loss(x, x, None, torch.zeros(3), x)
    assert str(err.value) == "grpo_token_loss: logps must be [N, T] and advantages [N]; got [2, 3] and [3]"


# --- metrics ------------------------------------------------------------------------------------------


def test_preference_metrics_by_hand():
    pc, pr = t(-10.0, -20.0), t(-12.0, -18.0)
    rc, rr = t(-11.0, -20.0), t(-11.0, -19.0)
    m = preference_metrics(pc, pr, rc, rr, beta=0.5)
    # chosen ratios [1, 0] -> rewards [0.5, 0]; rejected ratios [-1, 1] -> rewards [-0.5, 0.5]
    assert m == pytest.approx({
        "rewards/chosen": 0.25, "rewards/rejected": 0.0, "rewards/accuracy": 0.5, "rewards/margin": 0.25,
        "logps/chosen": -15.0, "logps/rejected": -15.0, "logratio": (1 + 0 - 1 + 1) / 4,
    })
    assert all(type(v) is float for v in m.values())
    # a tie (policy == reference) is not a correct ranking
    assert preference_metrics(pc, pr, pc, pr, beta=0.5)["rewards/accuracy"] == 0.0
    # reference-free (zeros): rewards are beta * logps
    zeros = torch.zeros(2)
    m = preference_metrics(pc, pr, zeros, zeros, beta=0.5)
    assert m["rewards/chosen"] == -7.5 and m["rewards/rejected"] == -7.5 and m["rewards/accuracy"] == 0.5


# --- TRL's own functions, where they can be called without a model ------------------------------------


@pytest.fixture(scope="module")
def trl_parts():
    pytest.importorskip("trl")  # not a tuneforge dependency: these checks run where it is installed
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from trl.experimental.cpo.cpo_trainer import CPOTrainer
        from trl.experimental.orpo.orpo_trainer import ORPOTrainer, log1mexp
        from trl.trainer.utils import nanstd
    return types.SimpleNamespace(CPOTrainer=CPOTrainer, ORPOTrainer=ORPOTrainer, log1mexp=log1mexp, nanstd=nanstd)


def fake_trainer(**attributes):
    """What TRL's loss methods read from ``self``: their settings and the accelerator's device."""
    return types.SimpleNamespace(accelerator=types.SimpleNamespace(device=torch.device("cpu")), **attributes)


def test_orpo_equals_trl_odds_ratio_loss(trl_parts):
    g = torch.Generator().manual_seed(5)
    c = -torch.rand(64, generator=g) * 3 - 1e-4
    r = -torch.rand(64, generator=g) * 3 - 1e-4
    lam = 0.25
    losses, *_ = trl_parts.ORPOTrainer.odds_ratio_loss(fake_trainer(beta=lam), c, r)  # beta * logsigmoid(log_odds)
    nll = -c
    total, part = orpo_loss(c, r, nll, lam=lam)
    assert torch.allclose(part, -losses / lam, atol=1e-6)
    # trl/experimental/orpo/orpo_trainer.py:848: loss = nll - losses.mean()
    assert total.mean().item() == pytest.approx((nll.mean() - losses.mean()).item(), abs=1e-6)
    x = torch.tensor([-1e-5, -0.1, -0.69, -0.7, -5.0, -80.0])
    from tuneforge.tasks.preference_losses import _log1mexp

    assert torch.allclose(_log1mexp(x), trl_parts.log1mexp(x), rtol=1e-6)


@pytest.mark.parametrize("eps", [0.0, 0.15])
def test_simpo_equals_trl_cpo_loss(trl_parts, eps):
    g = torch.Generator().manual_seed(6)
    c, r = -torch.rand(64, generator=g) * 2, -torch.rand(64, generator=g) * 2
    trainer = fake_trainer(alpha=0.0, beta=2.0, simpo_gamma=0.5, loss_type="simpo", label_smoothing=eps)
    losses, chosen_rewards, rejected_rewards = trl_parts.CPOTrainer.cpo_loss(trainer, c, r)
    assert torch.allclose(simpo_loss(c, r, beta=2.0, gamma=0.5, label_smoothing=eps), losses, atol=1e-6)
    # and the metrics' reference-free rewards are TRL's CPO rewards (cpo_trainer.py:746-747)
    m = preference_metrics(c, r, torch.zeros(64), torch.zeros(64), beta=2.0)
    assert m["rewards/chosen"] == pytest.approx(chosen_rewards.mean().item(), abs=1e-6)
    assert m["rewards/rejected"] == pytest.approx(rejected_rewards.mean().item(), abs=1e-6)


def test_grpo_std_is_trl_nanstd(trl_parts):
    g = torch.Generator().manual_seed(7)
    rewards = torch.randn(5, 6, generator=g)
    std = trl_parts.nanstd(rewards, dim=1).unsqueeze(1)
    trl = (rewards - rewards.mean(dim=1, keepdim=True)) / (std + 1e-4)
    assert torch.allclose(grpo_advantages(rewards), trl, atol=1e-6)
