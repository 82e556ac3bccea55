"""The pure loss functions of preference alignment: DPO and its variants, SimPO, ORPO, KTO, the
Bradley-Terry reward-model loss and GRPO, plus the metrics a DPO-family trainer logs.

Every function takes fp32 tensors of *sequence-level* log-probabilities (or scores, or rewards) that
the caller has already computed, and returns tensors; nothing here runs a model, reads a recipe or
knows about batching. Losses are returned per example, unreduced (shape ``[B]``), because tuneforge
never averages inside a micro-batch: exact gradient accumulation sums the per-example losses of every
micro-batch and divides once by the step's example count (see ``tuneforge.train.steps``).

How the sequence log-probabilities are aggregated over tokens (summed, averaged, ...) is the caller's
choice and differs between methods and between the papers and TRL; each docstring says which one the
method expects. The formulas follow TRL 1.16 where TRL has the method; ``file:line`` references are to
that version's package (``trl/...``), and every place where we differ from it says why.

Import-light: torch is imported inside the functions, like the rest of ``tuneforge.tasks``.
"""

from __future__ import annotations

import math

#: The losses ``dpo_family_loss`` knows, in the order its error message lists them.
DPO_LOSSES = ("dpo", "robust", "ipo")

#: ORPO's ``log(1 - p)`` is evaluated at average log-probs of at most this value. fp32 log-softmax is
#: only accurate to about an ulp of the logits (1e-6 at logits of magnitude 10), so an average
#: log-prob closer to 0 than this is rounding noise, and exactly 0 (a saturated model) would give
#: ``log(0) = -inf`` and a NaN gradient (TRL's ``log1mexp`` does, ``trl/experimental/orpo/orpo_trainer.py:91``).
#: Clamped here, ``log(1 - p)`` is at least ``log(1e-6) = -13.8`` and its derivative at most 1e6.
ORPO_MAX_AVG_LOGP = -1e-6

#: TRL's GRPO adds this to the group std before dividing (``trl/trainer/grpo_trainer.py:2787``).
GRPO_STD_EPS = 1e-4


def _check_same_shape(**tensors) -> None:
    shapes = {name: tuple(t.shape) for name, t in tensors.items() if t is not None}
    if len(set(shapes.values())) > 1:
        listed = ", ".join(f"{name} {list(shape)}" for name, shape in shapes.items())
        raise ValueError(f"the tensors must have the same shape; got {listed}")


def _check_beta(beta: float, name: str = "beta") -> None:
    # beta scales every implicit reward; IPO and SimPO also divide by it
    if not beta > 0:
        raise ValueError(f"{name} must be > 0; got {beta}")


def dpo_family_loss(loss: str, policy_chosen, policy_rejected, ref_chosen, ref_rejected, *, beta: float,
                    label_smoothing: float = 0.0):
    r"""Per-example ``[B]`` loss of a DPO-family method from sequence log-probs of the policy and the
    frozen reference on the chosen (c) and rejected (r) completion of each pair.

    With the log-ratio margin ``h = (policy_chosen - ref_chosen) - (policy_rejected - ref_rejected)``
    and ``eps = label_smoothing``:

    - ``"dpo"``: DPO (Rafailov et al. 2023, "Direct Preference Optimization: Your Language Model is
      Secretly a Reward Model", Eq. 7): ``-log sigmoid(beta h)``. With ``eps > 0`` it is conservative
      DPO (cDPO, Mitchell 2023, "A note on DPO with noisy preferences"), the expected DPO loss when each
      label is flipped with probability eps:
      ``-(1 - eps) log sigmoid(beta h) - eps log sigmoid(-beta h)``; it no longer pushes ``h`` to
      infinity but towards ``log((1 - eps) / eps) / beta``. Requires ``0 <= eps < 0.5``.
      TRL 1.16's DPO ``"sigmoid"`` is the ``eps = 0`` case and ignores ``label_smoothing``
      (``trl/trainer/dpo_trainer.py:1387-1388``); the cDPO form is the one TRL's CPO ``"sigmoid"``
      (``trl/experimental/cpo/cpo_trainer.py:723-727``) and DPO ``"aot"`` (``dpo_trainer.py:1453-1456``)
      use, and the one older TRL versions used for DPO ``"sigmoid"``.
    - ``"robust"``: robust DPO (Chowdhury et al. 2024, "Provably Robust DPO: Aligning Language Models
      with Noisy Feedback"), an unbiased estimate of the clean-label loss under label flips with
      probability eps: ``(-(1 - eps) log sigmoid(beta h) + eps log sigmoid(-beta h)) / (1 - 2 eps)``,
      as TRL's ``"robust"`` (``trl/trainer/dpo_trainer.py:1428-1431``). Requires ``0 <= eps < 0.5``
      (TRL only warns, ``dpo_trainer.py:824-828``; at 0.5 it divides by zero). Unlike cDPO it is
      unbounded below: unbiasedness costs the lower bound of 0.
    - ``"ipo"``: IPO (Azar et al. 2023, "A General Theoretical Paradigm to Understand Learning from
      Human Preferences", Eq. 17): ``(h - 1 / (2 beta))^2``, beta being the paper's tau; it regresses
      the margin to a finite target instead of pushing it to infinity. ``label_smoothing`` must be 0.
      TRL's ``"ipo"`` divides each log-ratio by its completion's token count before taking the margin
      (``trl/trainer/dpo_trainer.py:1393-1404``: per-token averages, which its authors confirmed the paper's
      results used); this function is pure, so pass per-token averages to match TRL, sums to match the
      paper's equation as written.

    DPO and robust DPO expect summed token log-probs (TRL sums them, ``dpo_trainer.py:1304``).
    """
    import torch.nn.functional as F

    if loss not in DPO_LOSSES:
        allowed = ", ".join(repr(name) for name in DPO_LOSSES)
        raise ValueError(f"unknown DPO-family loss {loss!r}; allowed: {allowed}")
    _check_beta(beta)
    _check_same_shape(policy_chosen=policy_chosen, policy_rejected=policy_rejected, ref_chosen=ref_chosen,
                      ref_rejected=ref_rejected)
    eps = float(label_smoothing)
    if loss in ("dpo", "robust") and not 0.0 <= eps < 0.5:
        raise ValueError(f"{loss}: label_smoothing (the probability that a preference label is flipped) must "
                         f"lie in [0, 0.5); got {eps}")
    if loss == "ipo" and eps != 0.0:
        # TRL's DPO trainer silently ignores it for IPO; a setting that does nothing is an error here
        raise ValueError(f"ipo: label_smoothing is not defined for IPO; got {eps}, use 0")

    # grouped as (chosen log-ratio) - (rejected log-ratio), like TRL (dpo_trainer.py:1350-1351, 1383)
    h = (policy_chosen - ref_chosen) - (policy_rejected - ref_rejected)
    if loss == "ipo":
        return (h - 1.0 / (2.0 * beta)) ** 2
    # F.logsigmoid is -softplus(-x): stable for large |x|, unlike log(sigmoid(x)) which gives log(0)
    clean = -F.logsigmoid(beta * h)
    if eps == 0.0:
        return clean  # both forms reduce to DPO; skipping the second term keeps its exact value
    flipped = -F.logsigmoid(-beta * h)  # the loss if this pair's label were the other way round
    if loss == "dpo":
        return (1.0 - eps) * clean + eps * flipped
    return ((1.0 - eps) * clean - eps * flipped) / (1.0 - 2.0 * eps)


def simpo_loss(chosen_avg_logps, rejected_avg_logps, *, beta: float, gamma: float, label_smoothing: float = 0.0):
    r"""Per-example ``[B]`` SimPO loss (Meng et al. 2024, "SimPO: Simple Preference Optimization with a
    Reference-Free Reward", Eq. 6), as TRL's CPOTrainer ``loss_type="simpo"``
    (``trl/experimental/cpo/cpo_trainer.py:715-721``).

    Reference-free: the implicit reward is ``beta`` times the *average* per-token log-prob of a
    completion (TRL averages for SimPO, ``cpo_trainer.py:850``), which removes DPO's preference for
    long completions. With ``z = (chosen_avg_logps - rejected_avg_logps) - gamma / beta`` and
    ``eps = label_smoothing``::

        loss = -(1 - eps) log sigmoid(beta z) - eps log sigmoid(-beta z)

    ``beta z = beta (chosen_avg - rejected_avg) - gamma``: ``gamma`` is the paper's target reward
    margin, in reward units, and the same number as TRL's ``CPOConfig.simpo_gamma`` (default 0.5),
    which TRL divides by beta before multiplying by beta again (``cpo_trainer.py:716-717``). The SimPO
    authors' own code takes ``gamma_beta_ratio`` instead: pass ``gamma = gamma_beta_ratio * beta``.
    ``eps > 0`` is the conservative (label-smoothed) form, as in cDPO. TRL's CPO adds a behaviour-cloning
    NLL term by default (``cpo_alpha=1.0``); pure SimPO, as here, is ``cpo_alpha=0``.
    """
    import torch.nn.functional as F

    _check_beta(beta)
    _check_same_shape(chosen_avg_logps=chosen_avg_logps, rejected_avg_logps=rejected_avg_logps)
    eps = float(label_smoothing)
    if not 0.0 <= eps < 0.5:
        raise ValueError(f"simpo: label_smoothing must lie in [0, 0.5); got {eps}")
    z = (chosen_avg_logps - rejected_avg_logps) - gamma / beta
    losses = -F.logsigmoid(beta * z)
    if eps:
        losses = (1.0 - eps) * losses - eps * F.logsigmoid(-beta * z)
    return losses


def _log1mexp(x):
    """``log(1 - exp(x))`` for ``x <= ORPO_MAX_AVG_LOGP``, accurate over the whole range.

    Mächler 2012 ("Accurately Computing log(1 - exp(-|a|))"), as TRL's ``log1mexp``
    (``trl/experimental/orpo/orpo_trainer.py:87-91``): below -ln 2, ``exp(x) < 1/2`` and
    ``log1p(-exp(x))`` is accurate; above it ``1 - exp(x)`` cancels (at x = -1e-6 the fp32
    ``1 - exp(x)`` is 1.3% off) and ``log(-expm1(x))`` is accurate. Both branches are
    evaluated by ``torch.where``, so both must stay finite for the gradient: the clamp sees to that."""
    import torch

    x = x.clamp(max=ORPO_MAX_AVG_LOGP)
    return torch.where(x < -math.log(2.0), torch.log1p(-torch.exp(x)), torch.log(-torch.expm1(x)))


def orpo_loss(chosen_avg_logps, rejected_avg_logps, chosen_nll, *, lam: float):
    r"""ORPO (Hong et al. 2024, "ORPO: Monolithic Preference Optimization without Reference Model",
    Eqs. 6-7) per example: ``(total [B], odds-ratio part [B])``, as TRL's ORPOTrainer
    (``trl/experimental/orpo/orpo_trainer.py:670-702`` and ``:848``).

    The odds of a completion are ``p / (1 - p)`` with ``p = exp(avg log-prob)`` (TRL averages over
    tokens, ``orpo_trainer.py:805``)::

        log_odds = (c - r) - (log(1 - exp(c)) - log(1 - exp(r)))
        or_loss  = -log sigmoid(log_odds)
        total    = chosen_nll + lam * or_loss

    ``lam`` is the paper's lambda and TRL's ``ORPOConfig.beta`` (TRL: ``loss = nll - mean(beta *
    logsigmoid(log_odds))``). ``chosen_nll`` is the supervised loss on the chosen completion per
    example, whatever aggregation the caller uses (TRL: a token mean over the chosen batch,
    ``orpo_trainer.py:779-800``; per example, ``-chosen_avg_logps`` is that on the same tokens).

    ``log(1 - exp(x))`` is computed as ``_log1mexp``: two branches for accuracy, and average log-probs
    clamped at ``ORPO_MAX_AVG_LOGP`` so that a completion the model already predicts with probability 1
    (an average log-prob of exactly 0 in fp32) gives a finite loss and gradient instead of NaN.
    """
    import torch.nn.functional as F

    _check_same_shape(chosen_avg_logps=chosen_avg_logps, rejected_avg_logps=rejected_avg_logps,
                      chosen_nll=chosen_nll)
    if lam < 0:
        raise ValueError(f"orpo: lam must be >= 0; got {lam}")
    log_odds = (chosen_avg_logps - rejected_avg_logps) - (_log1mexp(chosen_avg_logps)
                                                          - _log1mexp(rejected_avg_logps))
    or_loss = -F.logsigmoid(log_odds)
    return chosen_nll + lam * or_loss, or_loss


def kto_kl_estimate(policy_logps, ref_logps):
    r"""KTO's reference point ``z0``: the batch mean of ``policy_logps - ref_logps``, detached and
    clamped at 0 (a KL divergence is never negative), as TRL (``trl/trainer/kto_trainer.py:1442-1446``).

    TRL estimates it on *mismatched* pairs, prompt i with the completion of example i - 1
    (``kto_trainer.py:393-395``, ``:1141-1146``), which costs a third and fourth forward pass (policy
    and reference) per batch, as the paper (Ethayarajh et al. 2024) describes. This function
    takes whatever log-probs it is given: passed the batch's own (matched) pairs it is the cheaper
    in-batch estimate, which needs no extra forward but measures drift on the very completions being
    trained (their log-ratio is what the loss moves), so it is biased towards the desirable examples'
    rewards; passed the mismatched pairs it is TRL's estimator. Either way it is detached: KTO treats
    ``z0`` as a constant (no gradient flows through the reference point). Across processes, average the
    per-process values before use, as TRL gathers them. An empty batch gives 0.
    """
    import torch

    _check_same_shape(policy_logps=policy_logps, ref_logps=ref_logps)
    diff = (policy_logps - ref_logps).detach()
    if diff.numel() == 0:
        return torch.zeros((), dtype=diff.dtype, device=diff.device)
    return diff.mean().clamp(min=0)


def kto_loss(policy_logps, ref_logps, desirable, kl, *, beta: float, desirable_weight: float = 1.0,
             undesirable_weight: float = 1.0):
    r"""Per-example ``[B]`` KTO loss (Ethayarajh et al. 2024, "KTO: Model Alignment as Prospect
    Theoretic Optimization", Eq. 7), as TRL's KTOTrainer ``loss_type="kto"``
    (``trl/trainer/kto_trainer.py:1452-1453``, ``:1469-1470``, ``:1479-1482``).

    Unpaired: each example is one completion labelled desirable or not. With ``z = policy_logps -
    ref_logps`` (summed token log-probs, as TRL) and the reference point ``kl`` (``kto_kl_estimate``)::

        desirable:   desirable_weight   * (1 - sigmoid(beta (z - kl)))
        undesirable: undesirable_weight * (1 - sigmoid(beta (kl - z)))

    ``kl`` is detached here whatever the caller passes (KTO treats it as a constant). Losses stay in
    batch order (TRL concatenates the desirable ones first; its mean is the same). The weights
    compensate for imbalance: the paper recommends ``desirable_weight * n_desirable /
    (undesirable_weight * n_undesirable)`` in [1, 4/3].
    """
    import torch

    _check_beta(beta)
    _check_same_shape(policy_logps=policy_logps, ref_logps=ref_logps, desirable=desirable)
    if desirable.dtype != torch.bool:
        raise ValueError(f"kto: desirable must be a bool tensor; got {desirable.dtype}")
    z = policy_logps - ref_logps
    kl = kl.detach()
    chosen = desirable_weight * (1.0 - torch.sigmoid(beta * (z - kl)))
    rejected = undesirable_weight * (1.0 - torch.sigmoid(beta * (kl - z)))
    return torch.where(desirable, chosen, rejected)


def bradley_terry_loss(chosen_scores, rejected_scores, *, margin=None, center_coefficient: float | None = None):
    r"""Per-example ``[B]`` reward-model loss under the Bradley-Terry model (Bradley & Terry 1952; used
    for RLHF reward models by Ouyang et al. 2022, Eq. 1), as TRL's RewardTrainer
    (``trl/trainer/reward_trainer.py:788-795``)::

        -log sigmoid(chosen - rejected - margin) + center_coefficient * (chosen + rejected)^2

    ``margin`` (``[B]`` or a number; Llama 2, Touvron et al. 2023, Eq. 2) asks for a larger score gap
    on pairs rated far apart. ``center_coefficient`` (TRL's ``RewardConfig.center_rewards_coefficient``,
    recommended 0.01; Eisenstein et al. 2023, Eq. 2) pulls the scores towards mean zero, which the
    Bradley-Terry loss alone leaves undetermined (it only sees differences). TRL adds
    ``coef * mean((chosen + rejected)^2)`` to the batch mean; per example this is the same term, so the
    batch mean of this function's output is exactly TRL's loss.
    """
    import torch.nn.functional as F

    _check_same_shape(chosen_scores=chosen_scores, rejected_scores=rejected_scores)
    diff = chosen_scores - rejected_scores
    if margin is not None:
        diff = diff - margin
    losses = -F.logsigmoid(diff)
    if center_coefficient is not None:
        losses = losses + center_coefficient * (chosen_scores + rejected_scores) ** 2
    return losses


def grpo_advantages(rewards, *, scale: bool = True, eps: float = GRPO_STD_EPS):
    r"""GRPO's group-relative advantages (Shao et al. 2024, "DeepSeekMath", Sec. 4.1.2, outcome
    supervision): ``rewards`` is ``[P, G]``, G completions of each of P prompts; each reward minus its
    group's mean, divided by the group's std plus ``eps`` when ``scale``, as TRL's
    ``scale_rewards="group"`` (the default; ``scale=False`` is ``"none"``, Dr. GRPO's choice)
    (``trl/trainer/grpo_trainer.py:2765-2787``).

    The std is the *unbiased* one (Bessel's correction, divided by G - 1), as TRL's ``nanstd``
    (``trl/trainer/utils.py:1021-1043``). A group whose rewards are all equal carries no signal and
    gets zeros (0 / eps), not NaN; so does a single completion (G = 1), for which TRL also uses std 0
    (``grpo_trainer.py:2769-2773``). A NaN reward (an unscorable completion) is left out of its
    group's mean and std and gets advantage 0, as TRL (``grpo_trainer.py:2758-2759``, ``:2810``).
    """
    import torch

    if rewards.dim() != 2:
        raise ValueError(f"grpo_advantages: rewards must be [prompts, generations]; got shape {list(rewards.shape)}")
    valid = ~torch.isnan(rewards)
    count = valid.sum(dim=1, keepdim=True)
    filled = torch.where(valid, rewards, torch.zeros_like(rewards))
    mean = filled.sum(dim=1, keepdim=True) / count.clamp(min=1)
    centred = torch.where(valid, rewards - mean, torch.zeros_like(rewards))
    if not scale:
        return centred
    variance = (centred**2).sum(dim=1, keepdim=True) / (count - 1).clamp(min=1)
    std = torch.where(count > 1, variance.sqrt(), torch.zeros_like(variance))
    return centred / (std + eps)


def kl_k3(logps, ref_logps):
    r"""Per-token estimate of ``KL(policy || ref)`` from samples of the policy: Schulman's k3
    (J. Schulman 2020, "Approximating KL Divergence"), as GRPO (Shao et al. 2024, Eq. 4) and TRL
    (``trl/trainer/grpo_trainer.py:3100-3102``)::

        d = ref_logps - logps;   k3 = exp(d) - d - 1

    Unbiased for samples of the policy, with lower variance than ``-d``, and never negative
    (``exp(d) >= 1 + d``). Computed as ``expm1(d) - d``, the same function: ``exp(d) - 1`` in fp32
    cancels for small ``|d|`` and returns small *negative* values (for |d| < 1e-3, about 2% of them),
    ``expm1`` keeps every value >= 0.
    """
    import torch

    _check_same_shape(logps=logps, ref_logps=ref_logps)
    d = ref_logps - logps
    return torch.expm1(d) - d


def grpo_token_loss(logps, old_logps, ref_logps, advantages, mask, *, epsilon_low: float = 0.2,
                    epsilon_high: float = 0.2, beta: float = 0.0):
    r"""GRPO's clipped surrogate loss (Shao et al. 2024, Eq. 3), per sequence: ``(loss [N], stats)``.

    ``logps``, ``old_logps`` (the policy that sampled, detached) and ``ref_logps`` are per-token
    log-probs ``[N, T]`` of N completions; ``advantages`` is ``[N]`` (``grpo_advantages`` flattened);
    ``mask`` ``[N, T]`` marks completion tokens. Per token, as TRL (``trl/trainer/grpo_trainer.py:3112-3119``,
    ``:3153-3154``)::

        ratio = exp(logps - old_logps)
        loss  = -min(ratio A, clamp(ratio, 1 - epsilon_low, 1 + epsilon_high) A) + beta k3(logps, ref_logps)

    (``epsilon_high > epsilon_low`` is DAPO's clip-higher, Yu et al. 2025.) ``beta > 0`` needs
    ``ref_logps``; with ``beta == 0`` a given ``ref_logps`` is only measured, not added.

    Each sequence's loss is the mean over its masked tokens: the original GRPO normalisation (TRL's
    ``loss_type="grpo"``, ``grpo_trainer.py:3153-3154``). TRL's default is ``"dapo"``
    (``trl/trainer/grpo_config.py:801-802``): every token of the generation batch summed and divided by the
    batch's token count, so a long completion weighs more than a short one (``"bnpo"`` does that per
    micro-batch, ``"dr_grpo"`` divides by ``N * max_completion_length``). We keep per-sequence means
    because tuneforge sums per-example losses and divides by the examples in the step: every completion
    weighs one example, every prompt G of them, whatever their lengths, and the result does not depend on
    how a step is split into micro-batches. The known cost (Liu et al. 2025, "Understanding R1-Zero-Like
    Training", Dr. GRPO) is a length bias: a long wrong completion is penalised less per token than a
    short one.

    Masked positions are zeroed *before* ``exp``, so padding holding any value (even inf) changes
    neither the loss nor the gradient. A sequence with no masked token has loss 0.

    ``stats`` (plain floats, over masked tokens): ``"clip_fraction"``, the share of tokens whose gradient
    the clipping removed, i.e. TRL's ``clip_ratio/region_mean`` (``grpo_trainer.py:3274-3276``: ratio
    below ``1 - epsilon_low`` with A < 0, or above ``1 + epsilon_high`` with A > 0); and, when
    ``ref_logps`` is given, ``"kl"``, the mean k3.
    """
    import torch

    _check_same_shape(logps=logps, old_logps=old_logps, ref_logps=ref_logps, mask=mask)
    if logps.dim() != 2 or tuple(advantages.shape) != (logps.size(0),):
        raise ValueError(f"grpo_token_loss: logps must be [N, T] and advantages [N]; got {list(logps.shape)} and "
                         f"{list(advantages.shape)}")
    if beta < 0:
        raise ValueError(f"grpo_token_loss: beta must be >= 0; got {beta}")
    if beta > 0 and ref_logps is None:
        raise ValueError(f"grpo_token_loss: beta={beta} needs ref_logps (the KL penalty's reference)")
    mask = mask.bool()
    zero = torch.zeros((), dtype=logps.dtype, device=logps.device)
    # torch.where before exp, not a multiplication after: 0 * exp(inf) is NaN, in the backward pass too
    log_ratio = torch.where(mask, logps - old_logps, zero)
    ratio = torch.exp(log_ratio)
    adv = advantages.unsqueeze(1)
    clipped = torch.clamp(ratio, 1.0 - epsilon_low, 1.0 + epsilon_high)
    per_token = -torch.min(ratio * adv, clipped * adv)
    kl = None
    if ref_logps is not None:
        kl = kl_k3(torch.where(mask, logps, zero), torch.where(mask, ref_logps, zero))
        if beta > 0:
            per_token = per_token + beta * kl
    per_token = torch.where(mask, per_token, zero)
    counts = mask.sum(dim=1)
    per_sequence = per_token.sum(dim=1) / counts.clamp(min=1)

    with torch.no_grad():
        total = counts.sum().clamp(min=1)
        region = ((ratio < 1.0 - epsilon_low) & (adv < 0)) | ((ratio > 1.0 + epsilon_high) & (adv > 0))
        stats = {"clip_fraction": ((region & mask).sum() / total).item()}
        if kl is not None:
            stats["kl"] = (torch.where(mask, kl, zero).sum() / total).item()
    return per_sequence, stats


def preference_metrics(policy_chosen, policy_rejected, ref_chosen, ref_rejected, *, beta: float) -> dict[str, float]:
    r"""The metrics every DPO-family trainer logs, as plain floats averaged over the batch (TRL's DPO:
    ``trl/trainer/dpo_trainer.py:1581-1601``, whose keys are plural: ``rewards/accuracies``,
    ``rewards/margins``):

    - ``rewards/chosen``, ``rewards/rejected``: the implicit rewards ``beta (policy - ref)``;
    - ``rewards/accuracy``: the share of pairs whose chosen reward is *strictly* above the rejected one
      (a tie, as at the start of training where policy == ref, counts as wrong);
    - ``rewards/margin``: the mean of chosen minus rejected reward;
    - ``logps/chosen``, ``logps/rejected``: the policy's sequence log-probs (a falling
      ``logps/chosen`` while the margin grows is DPO's known likelihood displacement);
    - ``logratio``: the mean over chosen and rejected completions of ``policy - ref`` log-prob. On policy
      samples this would be the sequence-level estimate of ``KL(policy || ref)``; on preference data
      (not sampled from the policy) it measures how far the policy has moved from the reference on
      this data, and can be negative: it is not a divergence (the task measures the token-level KL
      itself, ``tasks.losses.reply_stats``).

    Reference-free losses (SimPO, ORPO) pass zeros as ``ref_chosen`` / ``ref_rejected``; the rewards
    are then ``beta * logps``, TRL's convention for CPO/SimPO (``trl/experimental/cpo/cpo_trainer.py:746-747``),
    and ``logratio`` is just the mean log-prob: ignore it there.
    """
    import torch

    _check_beta(beta)
    _check_same_shape(policy_chosen=policy_chosen, policy_rejected=policy_rejected, ref_chosen=ref_chosen,
                      ref_rejected=ref_rejected)
    with torch.no_grad():
        chosen_ratio = (policy_chosen - ref_chosen).float()
        rejected_ratio = (policy_rejected - ref_rejected).float()
        chosen_rewards = beta * chosen_ratio
        rejected_rewards = beta * rejected_ratio
        return {
            "rewards/chosen": chosen_rewards.mean().item(),
            "rewards/rejected": rejected_rewards.mean().item(),
            "rewards/accuracy": (chosen_rewards > rejected_rewards).float().mean().item(),
            "rewards/margin": (chosen_rewards - rejected_rewards).mean().item(),
            "logps/chosen": policy_chosen.float().mean().item(),
            "logps/rejected": policy_rejected.float().mean().item(),
            "logratio": torch.cat([chosen_ratio.reshape(-1), rejected_ratio.reshape(-1)]).mean().item(),
        }
