"""Preference alignment: DPO and its family (IPO, conservative and robust DPO, SimPO, ORPO) on chosen /
rejected pairs, and KTO on unpaired replies marked desirable or not.

Every loss here is a function of the log-probabilities of whole replies (``tasks/preference_losses``).
Those come from one shared computation (``tasks.losses.sequence_logps``): the chosen and rejected
sequences of a batch go through ONE forward pass (``collate`` stacks them), and only the reply tokens
are projected to the vocabulary, a chunk at a time, so a 1B model with a 128k vocabulary never builds
its full logits.

The reference model (DPO, IPO, KTO) costs no second copy of the weights:

* ``reference: adapters_off`` (``auto`` with a PEFT method): the reference is the same model with its
  adapters switched off, run without gradients in the same step;
* ``reference: precomputed`` (``auto`` with full fine-tuning, where there is no adapter to switch
  off): the reference log-probs of every training and validation reply are computed once before the
  first step, by the model before it is trained, and travel with the encoded data.

SimPO and ORPO need no reference at all.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, replace
from typing import Literal

from pydantic import Field, model_validator

from tuneforge.errors import DataError
from tuneforge.sections import Section
from tuneforge.tasks.base import ADAPTER_METHODS, TaskSpec, register
from tuneforge.tasks.metrics import METRIC_DIRECTIONS

#: Losses that compare the policy with a reference model.
NEEDS_REFERENCE = ("dpo", "ipo", "robust", "kto")


class PreferenceConfig(Section):
    loss: Literal["dpo", "ipo", "robust", "simpo", "orpo", "kto"] = Field(
        "dpo", description="dpo: sigmoid DPO (Rafailov et al. 2023); with label_smoothing > 0 conservative DPO "
        "(cDPO); robust: robust DPO for noisy labels (Chowdhury et al. 2024); ipo: IPO (Azar et al. 2023), on "
        "per-token mean log-probs; simpo: SimPO (Meng et al. 2024), no reference model; orpo: ORPO (Hong et al. "
        "2024), SFT loss plus an odds-ratio term, no reference model; kto: KTO (Ethayarajh et al. 2024) on "
        "unpaired replies labelled desirable or not."
    )
    beta: float = Field(0.1, gt=0, description="Strength of the preference term: DPO/IPO/KTO's beta (how far "
                        "the policy may move from the reference), SimPO's reward scale, ORPO's lambda (weight of "
                        "the odds-ratio term).")
    label_smoothing: float = Field(0.0, ge=0, lt=0.5, description="dpo and robust: the assumed share of flipped "
                                   "labels (cDPO / robust DPO); simpo: label smoothing of its sigmoid loss.")
    simpo_gamma: float = Field(0.5, ge=0, description="simpo: the target reward margin gamma (TRL's "
                               "simpo_gamma).")
    desirable_weight: float = Field(1.0, gt=0, description="kto: weight of the desirable replies' loss.")
    undesirable_weight: float = Field(1.0, gt=0, description="kto: weight of the undesirable replies' loss.")
    max_prompt_length: int | None = Field(
        None, ge=1, description="Prompt tokens kept (from the end) when prompt and reply exceed model.max_length; "
        "null: half of model.max_length. A reply that still does not fit is rejected with its reason.")
    reference: Literal["auto", "adapters_off", "precomputed"] = Field(
        "auto", description="Where the reference log-probs come from: adapters_off: the model with its PEFT "
        "adapters switched off, in every step (no second copy); precomputed: computed once before training by "
        "the untrained model (full fine-tuning); auto: adapters_off for PEFT methods, else precomputed.")
    compare_with_base: bool = Field(
        True, description="At the final evaluation, score the base model on the same validation pairs "
        "(preference accuracy, log-probs) and write eval/base_vs_tuned.md.")

    @model_validator(mode="after")
    def _check(self) -> "PreferenceConfig":
        if self.label_smoothing and self.loss not in ("dpo", "robust", "simpo"):
            raise ValueError(f"preference.label_smoothing applies to losses dpo, robust and simpo, not {self.loss}")
        return self


# --------------------------------------------------------------------------------------------- data


def _template(tokenizer, recipe):
    from tuneforge.data.templates import resolve_template

    if recipe.data.formatting.template is None and not getattr(tokenizer, "chat_template", None):
        return None  # a base model without a chat template: plain text (data/preference.py)
    return resolve_template(tokenizer, recipe.data.formatting.template)


def max_lengths(recipe) -> tuple[int, int]:
    limit = min(recipe.data.formatting.max_length or recipe.model.max_length, recipe.model.max_length)
    return limit, recipe.preference.max_prompt_length or limit // 2


def format_examples(records: list[dict], tokenizer, recipe) -> list:
    """``format_preference`` over prepared records with the recipe's chat template and lengths; rows that
    cannot be trained on (a reply too long) count against ``data.max_rejected_fraction``."""
    from tuneforge.data.preference import format_preference
    from tuneforge.data.rejects import RejectedRow

    template = _template(tokenizer, recipe)
    limit, prompt_limit = max_lengths(recipe)
    examples, rejected = [], []
    for record in records:
        out = format_preference(record, tokenizer, template=template, max_length=limit,
                                max_prompt_length=prompt_limit, origin=record.get("_origin", ""))
        (rejected if isinstance(out, RejectedRow) else examples).append(out)
    _check_rejected(rejected, len(records), recipe)
    return examples


def pairs_encoded(examples: list, objective):
    """Pairs as ``Encoded`` (label kind ``pair``): the chosen sequences, the rejected ones in ``meta``."""
    from tuneforge.data.batching import Encoded

    return Encoded(input_ids=[e.chosen_ids for e in examples], labels=[e.chosen_labels for e in examples],
                   label_kind="pair", meta={"rejected_ids": [e.rejected_ids for e in examples],
                                            "rejected_labels": [e.rejected_labels for e in examples]},
                   objective=objective)


def encode(records: list[dict], tokenizer, recipe, names: list[str] | None):
    """Pairs (or KTO's unpaired replies) as token ids: prompt + reply, loss labels on the reply only."""
    from tuneforge.data.batching import Encoded
    from tuneforge.data.preference import PairExample

    examples = format_examples(records, tokenizer, recipe)
    unpaired = recipe.preference.loss == "kto"
    kinds = {isinstance(e, PairExample) for e in examples}
    if kinds and kinds != {not unpaired}:
        raise DataError(f"preference.loss {recipe.preference.loss} trains on "
                        f"{'unpaired replies with a desirable/undesirable label' if unpaired else 'chosen/rejected pairs'}"
                        f", but the data holds {'pairs' if True in kinds else 'unpaired replies'}; see docs/alignment.md "
                        "for the formats")
    objective = objective_for(tokenizer, recipe)
    if unpaired:
        return Encoded(input_ids=[e.ids for e in examples], labels=[e.labels for e in examples],
                       label_kind="unpaired", meta={"desirable": [e.desirable for e in examples]},
                       objective=objective)
    return pairs_encoded(examples, objective)


def _check_rejected(rejected: list, total: int, recipe) -> None:
    if rejected and len(rejected) > recipe.data.max_rejected_fraction * total:
        first = rejected[0]
        raise DataError(f"{len(rejected)} of {total} preference rows cannot be trained on after tokenising (more "
                        f"than data.max_rejected_fraction); first: {first.file}:{first.line}: {first.reason}")


# ------------------------------------------------------------------------------------------ the loss


@dataclass
class PreferenceOutput:
    """Per example: [policy chosen, policy rejected, reference chosen, reference rejected, loss, chosen
    tokens, rejected tokens, KL] for pairs; [policy, reference, desirable, loss, tokens, KL] for unpaired
    replies. KL: the mean token-level KL to the reference over the reply tokens (NaN when not measured)."""

    per_example: object


@dataclass
class PreferenceObjective:
    cfg: PreferenceConfig
    #: reference log-probs come from the model with its adapters off when a batch carries none
    live_reference: bool
    #: no reference at all (export verification compares the policy's own log-probs): zeros
    reference_off: bool = False

    @property
    def needs_reference(self) -> bool:
        return self.cfg.loss in NEEDS_REFERENCE and not self.reference_off

    def without_reference(self) -> "PreferenceObjective":
        return replace(self, reference_off=True)

    @staticmethod
    def verification_values(per_example):
        """Per-token mean log-probs of the replies (``per_example`` rows as ``PreferenceOutput`` holds them):
        what an export must reproduce; means, so the tolerance does not grow with the reply length."""
        if per_example.size(-1) == 8:  # pairs: chosen, rejected
            return per_example[:, 0:2] / per_example[:, 5:7].clamp(min=1)
        return per_example[:, 0:1] / per_example[:, 4:5].clamp(min=1)

    def loss_sum(self, model, batch: dict):
        import torch

        from tuneforge.tasks.losses import reply_stats, sequence_logps, unwrap

        ids, mask, labels = batch["input_ids"], batch["attention_mask"], batch["labels"]
        core = unwrap(model)
        if self._measures_kl(core, batch):
            # evaluation with the reference at hand: log-probs of both models and the KL between them, from
            # one forward pass of each
            logps, ref, counts, kl = reply_stats(core, core.disable_adapter, ids, mask, labels)
        else:
            logps, counts = sequence_logps(model, ids, mask, labels)
            ref = self.reference(model, batch) if self.needs_reference else torch.zeros_like(logps)
            kl = torch.full_like(logps, float("nan"))  # not measured: training steps, precomputed references
        if labels.size(0) != batch["index"].size(0):
            return self._paired(logps, ref, counts, kl)
        return self._unpaired(logps, ref, counts, batch["desirable"], kl)

    def _measures_kl(self, core, batch: dict) -> bool:
        """Evaluation (no gradients) with a live reference: adapters to switch off, not switched off already
        (the final evaluation scoring the base model), and no precomputed reference in the batch."""
        import torch

        return (not torch.is_grad_enabled() and self.live_reference and self.needs_reference
                and "ref_logps" not in batch and hasattr(core, "disable_adapter") and not _adapters_disabled(core))

    def reference(self, model, batch: dict):
        """The reference model's summed reply log-probs [rows], no gradient."""
        import torch

        from tuneforge.tasks.losses import sequence_logps, unwrap

        if "ref_logps" in batch:
            return batch["ref_logps"].to(torch.float32)
        core = unwrap(model)
        if not self.live_reference or not hasattr(core, "disable_adapter"):
            raise RuntimeError("preference: this batch has no precomputed reference log-probs and the model has "
                               "no adapters to switch off (set preference.reference: precomputed)")
        # Already inside disable_adapter (the final evaluation scoring the base model): entering it again
        # would switch the adapters back on when the inner block exits.
        off = contextlib.nullcontext() if _adapters_disabled(core) else core.disable_adapter()
        with torch.no_grad(), off:
            ref, _ = sequence_logps(core, batch["input_ids"], batch["attention_mask"], batch["labels"])
        return ref.detach()

    def _paired(self, logps, ref, counts, kl):
        import torch

        from tuneforge.tasks import preference_losses as pl

        cfg, n = self.cfg, logps.size(0) // 2
        pc, pr, rc, rr = logps[:n], logps[n:], ref[:n], ref[n:]
        avg = logps / counts.clamp(min=1)
        if cfg.loss in ("dpo", "robust"):
            losses = pl.dpo_family_loss(cfg.loss, pc, pr, rc, rr, beta=cfg.beta, label_smoothing=cfg.label_smoothing)
        elif cfg.loss == "ipo":
            # IPO's squared loss is on per-token means (as TRL computes it): summed log-probs would make
            # its fixed target margin 1/(2 beta) depend on the reply lengths
            ref_avg = ref / counts.clamp(min=1)
            losses = pl.dpo_family_loss("ipo", avg[:n], avg[n:], ref_avg[:n], ref_avg[n:], beta=cfg.beta)
        elif cfg.loss == "simpo":
            losses = pl.simpo_loss(avg[:n], avg[n:], beta=cfg.beta, gamma=cfg.simpo_gamma,
                                   label_smoothing=cfg.label_smoothing)
        else:  # orpo
            losses, _ = pl.orpo_loss(avg[:n], avg[n:], -avg[:n], lam=cfg.beta)
        per_example = torch.stack([pc, pr, rc, rr, losses, counts[:n].float(), counts[n:].float(),
                                   (kl[:n] + kl[n:]) / 2], dim=-1)
        return losses.sum(), PreferenceOutput(per_example.detach())

    def _unpaired(self, logps, ref, counts, desirable, kl):
        import torch

        from tuneforge.tasks import preference_losses as pl

        cfg = self.cfg
        baseline = pl.kto_kl_estimate(logps, ref)  # KTO's reference point z_ref (in-batch)
        losses = pl.kto_loss(logps, ref, desirable, baseline, beta=cfg.beta, desirable_weight=cfg.desirable_weight,
                             undesirable_weight=cfg.undesirable_weight)
        per_example = torch.stack([logps, ref, desirable.float(), losses, counts.float(), kl], dim=-1)
        return losses.sum(), PreferenceOutput(per_example.detach())


def _adapters_disabled(core) -> bool:
    """Whether PEFT's adapter layers are switched off right now (inside ``disable_adapter()``)."""
    for module in core.modules():
        flag = getattr(module, "disable_adapters", None)
        if isinstance(flag, bool):
            return flag
    return False


def reference_mode(recipe) -> str:
    mode = recipe.preference.reference
    if mode == "auto":
        return "adapters_off" if recipe.method in ADAPTER_METHODS else "precomputed"
    return mode


def objective_for(tokenizer, recipe) -> PreferenceObjective:
    return PreferenceObjective(recipe.preference, live_reference=reference_mode(recipe) == "adapters_off")


def with_reference(model, encoded, recipe, *, device, precision: str, cache=None, batch_size: int = 8):
    """``encoded`` with ``meta["ref_chosen"]`` (and ``ref_rejected``): the reply log-probs under ``model``
    as it is now (before training), computed once without gradients and written to ``cache``; a cache
    made for the same token ids is read back instead (``--resume``: the model is trained by then)."""
    if not encoded.objective.needs_reference or reference_mode(recipe) != "precomputed" or not len(encoded):
        return encoded
    import hashlib

    from tuneforge.atomic import atomic_write_json

    digest = hashlib.sha256(repr((encoded.input_ids, encoded.meta.get("rejected_ids"))).encode()).hexdigest()
    saved = _read_json(cache)
    if saved and saved.get("digest") == digest:
        refs = saved["reference"]
    else:
        refs = _reference_pass(model, encoded, device, precision, batch_size)
        if cache is not None:
            atomic_write_json(cache, {"digest": digest, "reference": refs})
    return replace(encoded, meta={**encoded.meta, **refs})


def _read_json(path):
    import json
    from pathlib import Path

    if path is None or not Path(path).is_file():
        return None
    return json.loads(Path(path).read_text())


def _reference_pass(model, encoded, device, precision: str, batch_size: int) -> dict:
    import torch

    from tuneforge.data.batching import collate, sorted_batches
    from tuneforge.models.precision import autocast
    from tuneforge.tasks.losses import sequence_logps

    pad = 0  # right padding under an attention mask: the pad id is never attended to
    chosen, rejected = [0.0] * len(encoded), [0.0] * len(encoded)
    was_training = model.training
    model.eval()
    with torch.no_grad():
        for idx in sorted_batches(encoded.lengths, batch_size):
            batch = {k: v.to(device) for k, v in collate(encoded, idx, pad).items()}
            with autocast(precision, device.type):
                logps, _ = sequence_logps(model, batch["input_ids"], batch["attention_mask"], batch["labels"])
            logps = logps.float().cpu().tolist()
            for k, i in enumerate(idx):
                chosen[i] = logps[k]
                if encoded.label_kind == "pair":
                    rejected[i] = logps[len(idx) + k]
    model.train(was_training)
    return {"ref_chosen": chosen, **({"ref_rejected": rejected} if encoded.label_kind == "pair" else {})}


# ------------------------------------------------------------------------------------------ metrics


def metrics(preds, records: list[dict], encoded, names: list[str] | None) -> dict:
    """DPO-family: reward accuracy, margin, chosen/rejected rewards and log-probs, KL to the reference,
    and the preference accuracy (chosen more likely than rejected, which also scores a base model)."""
    import torch

    if not preds.outputs:
        return {}
    rows = torch.stack(preds.outputs)
    beta = encoded.objective.cfg.beta
    if encoded.label_kind == "unpaired":
        p, r, desirable = rows[:, 0], rows[:, 1], rows[:, 2].bool()
        reward = beta * (p - r)
        out = {"logratio": float((p - r).mean()), "logps": float(p.mean()), **_kl_metric(rows[:, 5])}
        if desirable.any():
            out["desirable_reward"] = float(reward[desirable].mean())
        if (~desirable).any():
            out["undesirable_reward"] = float(reward[~desirable].mean())
        # a reply counts as classified right when its implicit reward has the sign of its label
        out["reward_accuracy"] = float(((reward > 0) == desirable).float().mean())
        return out
    from tuneforge.tasks.preference_losses import preference_metrics

    pc, pr, rc, rr = rows[:, 0], rows[:, 1], rows[:, 2], rows[:, 3]
    m = preference_metrics(pc, pr, rc, rr, beta=beta)
    out = {"reward_accuracy": m["rewards/accuracy"], "reward_margin": m["rewards/margin"],
           "chosen_reward": m["rewards/chosen"], "rejected_reward": m["rewards/rejected"],
           "chosen_logps": m["logps/chosen"], "rejected_logps": m["logps/rejected"],
           # the data replies' log-ratio (what the implicit rewards are made of): not a divergence
           "logratio": m["logratio"], "preference_accuracy": float((pc > pr).float().mean()), **_kl_metric(rows[:, 7])}
    return out


def _kl_metric(column) -> dict:
    """``kl``: the mean token-level KL(policy || reference) on the validation replies, where measured."""
    import torch

    if not bool(torch.isfinite(column).all()):
        return {}
    return {"kl": float(column.mean())}


def summary(m: dict) -> str:
    parts = [f"loss {m['loss']:.4f}"]
    parts += [f"{k.replace('_', ' ')} {m[k]:.4f}" for k in ("reward_accuracy", "reward_margin", "kl") if k in m]
    return ", ".join(parts)


def check_recipe(recipe) -> None:
    mode = reference_mode(recipe)
    if recipe.preference.loss in NEEDS_REFERENCE and mode == "adapters_off" and recipe.method not in ADAPTER_METHODS:
        raise ValueError(f"preference.reference: adapters_off needs a PEFT method ({', '.join(ADAPTER_METHODS)}); "
                         f"method {recipe.method} changes the model's own weights: use reference: precomputed")


def after_evaluation(final) -> None:
    """Base vs tuned on the validation pairs: the base model's log-probs of chosen and rejected, its
    preference accuracy, next to the tuned model's (eval/base_vs_tuned.md)."""
    from tuneforge.tasks.causal_lm import write_comparison

    recipe = final.recipe
    if not recipe.preference.compare_with_base:
        return
    if recipe.method in ADAPTER_METHODS and hasattr(final.model, "disable_adapter"):
        with final.model.disable_adapter():
            base = final.score(final.model)
    else:
        base = final.score(final.load_base())
    # the base model is the reference: its implicit rewards, their accuracy and its KL are 0 by definition
    keep = ("preference_accuracy", "chosen_logps", "rejected_logps")
    base = {k: v for k, v in base.items() if k in keep and isinstance(v, (int, float))}
    write_comparison(base, final.metrics, final.out_dir, recipe,
                     scope="Reply log-probs and preference accuracy (the chosen reply more likely than the rejected) on "
                           "the whole validation split of pairs; the base model is the reference, so its own implicit "
                           "rewards and KL are 0 by definition.")
    final.metrics["base"] = base
    final.say("base vs tuned: " + ", ".join(f"{k} {base[k]:.4g} -> {final.metrics[k]:.4g}" for k in base
                                            if k in final.metrics))


#: the metrics a run may select on, and which way is better
DIRECTIONS = {k: METRIC_DIRECTIONS[k] for k in ("loss", "reward_accuracy", "reward_margin", "preference_accuracy",
                                                "chosen_logps", "kl")}

_COMMON = dict(
    name="preference", labels="preference", auto_class="AutoModelForCausalLM", peft_task_type="CAUSAL_LM",
    head_kwargs=lambda names: {}, encode=encode, metrics=metrics, summary=summary, objective=objective_for,
    before_training=with_reference, section="preference", check_recipe=check_recipe,
    after_evaluation=after_evaluation,
    unsupported_methods={"head_only": "a causal LM has no new head: preference tuning trains the model itself"},
)

#: KTO: unpaired replies (``preference.loss: kto``); a variant of the task, not registered
KTO_SPEC = TaskSpec(label_kind="unpaired", **_COMMON,
                    selectable={k: DIRECTIONS[k] for k in ("loss", "reward_accuracy")})

SPEC = register(TaskSpec(
    label_kind="pair", **_COMMON, variant=lambda recipe: KTO_SPEC if recipe.preference.loss == "kto" else None,
    selectable={k: DIRECTIONS[k] for k in ("loss", "reward_accuracy", "reward_margin", "preference_accuracy")},
))
