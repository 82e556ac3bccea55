"""Sequence to sequence (translation, summarisation) with encoder-decoder models.

Training is teacher-forced: the encoder reads the (prefixed) source, the decoder is trained on the
target token by token (label kind ``target``). Teacher-forced loss says little about what the model
writes when it has to continue from its own tokens, so evaluation also *generates* from the
validation sources (``TaskSpec.generate_metrics``) and scores the outputs against the targets with
BLEU, chrF and ROUGE. ``metrics`` (no model needed) adds the teacher-forced token accuracy.

Data are ``pair`` rows (``data.sources`` with ``format: parallel``); they carry no label to check.
The settings live in the recipe's ``seq2seq:`` section (``Seq2SeqConfig``). Importing this
module stays cheap (pydantic only): the recipe embeds the config and must validate without torch.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field

from tuneforge.models.generation import GenerationConfig
from tuneforge.sections import Section
from tuneforge.tasks.base import TaskSpec, register

#: Validation examples whose source, reference and generated output go into the metrics (and so into
#: eval.json): a score is much easier to judge next to a few outputs.
SAMPLE_OUTPUTS = 5


class Seq2SeqConfig(Section):
    """Settings of task seq2seq (recipe section ``seq2seq:``)."""

    source_prefix: str = Field(
        "", description="Text put before every source, in training and generation, e.g. T5's task prefix "
        "'translate English to German: ' or 'summarize: '. Empty for models trained without one (BART, Marian)."
    )
    max_target_length: int = Field(
        128, ge=2, le=8192, description="Truncate targets to this many tokens (end-of-sequence token included). "
        "model.max_length truncates the sources."
    )
    generation: GenerationConfig = Field(
        default_factory=GenerationConfig,
        description="How validation outputs are generated for BLEU, chrF and ROUGE (greedy by default). Sampling "
        "without generation.seed uses the recipe seed, so every evaluation draws its outputs the same way.",
    )
    eval_generation_examples: int | None = Field(
        None, ge=1, description="Generate for only the first N validation examples at each evaluation, the final "
        "one included (generation is much slower than the loss); null: all of them."
    )


def encode(records: list[dict], tokenizer: Any, recipe: Any, names: list[str] | None):
    """Source ids (prefixed, cut at ``model.max_length``) and target ids as labels (ending in eos)."""
    from tuneforge.data.batching import Encoded

    cfg = recipe.seq2seq
    sources = [cfg.source_prefix + r["source"] for r in records]
    ids = tokenizer(sources, truncation=True, max_length=recipe.model.max_length)["input_ids"]
    # text_target: tokenizers with a separate target vocabulary (Marian) switch to it.
    targets = tokenizer(text_target=[r["target"] for r in records], truncation=True,
                        max_length=cfg.max_target_length)["input_ids"]
    eos = getattr(tokenizer, "eos_token_id", None)
    labels = [with_eos(t, eos, cfg.max_target_length) for t in targets]
    return Encoded(input_ids=[list(x) for x in ids], labels=labels, label_kind="target")


def with_eos(ids: list[int], eos: int | None, max_length: int) -> list[int]:
    """``ids`` ending in ``eos``. T5, BART and Marian tokenizers add it themselves; one that does not would
    teach the model never to stop, and generation would run to max_new_tokens every time."""
    ids = list(ids)
    if eos is None or (ids and ids[-1] == eos):
        return ids
    return ids[: max_length - 1] + [eos]


def metrics(preds: Any, records: list[dict], encoded: Any, names: list[str] | None) -> dict:
    """Teacher-forced token accuracy: the share of target tokens predicted right given the true prefix.

    ``predict`` keeps (top logit, top token id) per target token for this label kind, not the
    vocabulary-wide logits."""
    from tuneforge.data.batching import IGNORE

    right = total = 0
    for top, labels in zip(preds.outputs, encoded.labels):
        guess = top[:, 1].long().tolist()
        pairs = [(g, t) for g, t in zip(guess, labels) if t != IGNORE]
        right += sum(g == t for g, t in pairs)
        total += len(pairs)
    return {"token_accuracy": right / total if total else 0.0}


def generate_metrics(model: Any, tokenizer: Any, records: list[dict], recipe: Any) -> dict:
    """Generate outputs for the validation ``records`` and score them (BLEU, chrF, ROUGE-1/2/L, 0-100)."""
    from tuneforge.tasks.metrics.task_metrics import generation_metrics
    from tuneforge.models.generation import generate
    from tuneforge.tasks.metrics.examples import generation_records

    cfg = recipe.seq2seq
    if cfg.eval_generation_examples is not None:
        records = records[: cfg.eval_generation_examples]
    gen = cfg.generation
    if gen.do_sample and gen.seed is None:
        # Unseeded sampling would score different outputs at every evaluation: the best checkpoint
        # would be picked partly by luck.
        gen = gen.model_copy(update={"seed": recipe.seed})
    outputs = generate(model, tokenizer, [cfg.source_prefix + r["source"] for r in records], gen,
                       progress=f"generating {len(records)} validation outputs")
    references = [r.get("references") or r["target"] for r in records]  # several references when the data has them
    out = generation_metrics(outputs, references)
    out["generated_examples"] = len(outputs)
    out["samples"] = [{"source": r["source"], "reference": ref, "prediction": pred}
                      for r, ref, pred in zip(records[:SAMPLE_OUTPUTS], references, outputs)]
    out["generations"] = generation_records([r["source"] for r in records], references, outputs, "text")
    return out


def summary(m: dict) -> str:
    return (f"BLEU {m['bleu']:.2f}, chrF {m['chrf']:.2f}, ROUGE-L {m['rougeL']:.2f} "
            f"({m['generated_examples']} generated)")


SPEC = register(TaskSpec(
    name="seq2seq", labels="none", label_kind="target", auto_class="AutoModelForSeq2SeqLM",
    peft_task_type="SEQ_2_SEQ_LM", head_kwargs=lambda names: {}, encode=encode, metrics=metrics,
    summary=summary, generate_metrics=generate_metrics,
    selectable={"bleu": "max", "chrf": "max", "rougeL": "max", "rouge1": "max", "rouge2": "max", "loss": "min"},
    section="seq2seq",
    loop_generation=lambda recipe: ["task seq2seq (its metrics during training are generated)"],
))
