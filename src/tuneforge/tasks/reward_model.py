"""Reward models: a scalar head on a pretrained model, trained on chosen/rejected pairs with the
Bradley-Terry loss, ``-log sigmoid(score(chosen) - score(rejected))`` (Ouyang et al. 2022).

The data are the preference task's (any pair format, ``data/preference.py``), rendered with the
model's chat template as whole conversations (prompt + reply). The model is a plain
``AutoModelForSequenceClassification`` with one output, so the export loads anywhere as that class and
its score is the logit at the last real token; ``tuneforge serve`` serves it as a scoring endpoint and
GRPO (``rewards: [{type: reward_model, path: ...}]``) uses it as a reward.
"""

from __future__ import annotations

from dataclasses import dataclass

from tuneforge.tasks.base import TaskSpec, register


def head_kwargs(names) -> dict:
    return {"num_labels": 1, "id2label": {0: "reward"}, "label2id": {"reward": 0}}


def encode(records: list[dict], tokenizer, recipe, names: list[str] | None):
    """Both conversations of each pair as token ids (the labels are unused: the score is the head's)."""
    from tuneforge.data.preference import PairExample
    from tuneforge.errors import DataError
    from tuneforge.tasks.preference import format_examples, pairs_encoded

    examples = format_examples(records, tokenizer, recipe)
    if any(not isinstance(e, PairExample) for e in examples):
        raise DataError("task reward_model trains on chosen/rejected pairs; the data holds unpaired replies "
                        "(KTO format): see docs/alignment.md for the pair formats")
    return pairs_encoded(examples, RewardObjective())


@dataclass
class RewardOutput:
    per_example: object  # [n, 2]: score of chosen, score of rejected


@dataclass
class RewardObjective:
    def without_reference(self) -> "RewardObjective":
        return self  # a reward model has no reference

    @staticmethod
    def verification_values(per_example):
        return per_example  # the scores of chosen and rejected

    def loss_sum(self, model, batch: dict):
        import torch

        from tuneforge.tasks.preference_losses import bradley_terry_loss

        scores = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, 0].float()
        n = scores.size(0) // 2
        chosen, rejected = scores[:n], scores[n:]
        losses = bradley_terry_loss(chosen, rejected)
        return losses.sum(), RewardOutput(torch.stack([chosen, rejected], dim=-1).detach())


def objective_for(tokenizer, recipe) -> RewardObjective:
    return RewardObjective()


def metrics(preds, records: list[dict], encoded, names: list[str] | None) -> dict:
    """Pairwise accuracy (the chosen reply scored higher), and the scores' means and margin."""
    import torch

    if not preds.outputs:
        return {}
    rows = torch.stack(preds.outputs)
    chosen, rejected = rows[:, 0], rows[:, 1]
    return {"pairwise_accuracy": float((chosen > rejected).float().mean()),
            "chosen_score": float(chosen.mean()), "rejected_score": float(rejected.mean()),
            "score_margin": float((chosen - rejected).mean())}


SPEC = register(TaskSpec(
    name="reward_model", labels="preference", label_kind="pair", auto_class="AutoModelForSequenceClassification",
    peft_task_type="SEQ_CLS", head_kwargs=head_kwargs, encode=encode, metrics=metrics,
    summary=lambda m: f"loss {m['loss']:.4f}, pairwise accuracy {m['pairwise_accuracy']:.4f}, "
                      f"score margin {m['score_margin']:.3f}",
    objective=objective_for,
    selectable={"pairwise_accuracy": "max", "loss": "min", "score_margin": "max"},
    new_head=True, scratch_families=("gpt2", "llama"),
))
