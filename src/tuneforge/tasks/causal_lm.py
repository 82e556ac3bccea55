"""Causal-LM instruction / chat tuning: loss on the assistant replies only; generation-based evaluation.

Rows are chat rows (Alpaca, ShareGPT, OpenAI messages) or plain text / pairs, formatted by
``tuneforge.data.formatting`` with the recipe's ``data.formatting`` (template, ``train_on``,
``max_length``): prompt tokens get label -100 so the model is trained to answer, not to repeat the
question. Every evaluation reports the validation loss and perplexity; with ``causal_lm.eval_metric``
it also generates the last assistant turn of up to ``causal_lm.eval_examples`` validation
conversations and scores them (GSM8K-style final-number accuracy, or BLEU/chrF/ROUGE).
"""

from __future__ import annotations

import copy
import math
from typing import Literal

from pydantic import Field

from tuneforge.errors import DataError
from tuneforge.models.generation import GenerationConfig
from tuneforge.sections import Section
from tuneforge.tasks.base import ADAPTER_METHODS, TaskSpec, register


class CausalLMConfig(Section):
    eval_metric: Literal["none", "final_number", "text"] = Field(
        "none", description="Generation metric at each evaluation: final_number = accuracy of the final number "
        "of the reply (GSM8K's scoring); text = BLEU, chrF and ROUGE against the reference reply; none = only "
        "loss and perplexity (fast)."
    )
    eval_examples: int = Field(100, ge=1, description="Validation conversations generated per evaluation.")
    generation: GenerationConfig = Field(default_factory=GenerationConfig,
                                         description="Decoding for evaluation (greedy by default).")
    compare_with_base: bool = Field(
        True, description="At the final evaluation, also score the base model (PEFT adapters disabled, or the "
        "pretrained weights for full/head_only): validation loss, perplexity and the generation metric with the "
        "same prompts and decoding, side by side in eval/base_vs_tuned.md."
    )
    pair_prompt: str | None = Field(
        None, description="Text-to-text data (source/target pair rows, e.g. summarisation): each pair becomes a "
        "user turn (this text, then the source) and an assistant turn (the target), trained on the reply only "
        "and evaluated by generating it (several references count, e.g. SciTLDR's). null: a pair is trained as "
        "one plain text (source, data.formatting.pair_separator, target) on every token, and not generated.",
    )
    sample_prompts: list[str] = Field(
        default_factory=list, description="Raw-text prompts (no chat template) continued at every evaluation: "
        "the samples go to samples.jsonl during training and into the final report (e.g. ['\\n'] or "
        "['ROMEO:'] for a model pretrained on Shakespeare)."
    )
    sample_generation: GenerationConfig = Field(
        default_factory=lambda: GenerationConfig(max_new_tokens=200, do_sample=True, temperature=0.8, top_k=200,
                                                 seed=0),
        description="Decoding of the samples (default: nanoGPT's sample.py settings, seeded).",
    )
    generate_during_training: bool = Field(
        False, description="Also generate at every evaluation during training (slow: eval_examples generations "
        "each time), for learning curves of the generation metric or train.metric_for_best on it; false: "
        "evaluations during training report loss and perplexity, the final evaluation generates."
    )


def _template(tokenizer, recipe, rows) -> str | None:
    from tuneforge.data.templates import resolve_template

    if any(r.kind == "chat" for r in rows):
        return resolve_template(tokenizer, recipe.data.formatting.template)
    return None


def _format_config(recipe):
    fmt = recipe.data.formatting
    # The model section's max_length caps every task's inputs; formatting may only be stricter.
    limit = min(fmt.max_length or recipe.model.max_length, recipe.model.max_length)
    # Packing is on unless the recipe turns it off: padding-free packed rows (no attention across
    # documents, see data/batching.collate) train like separate examples with no compute on padding.
    return fmt.model_copy(update={"max_length": limit, "packing": fmt.packing is not False})


def encode(records: list[dict], tokenizer, recipe, names: list[str] | None):
    from tuneforge.data.batching import Encoded
    from tuneforge.data.formatting import format_row
    from tuneforge.data.pipeline import row_from_output
    from tuneforge.data.rejects import RejectedRow

    rows = [row_from_output(as_chat(r, recipe.causal_lm.pair_prompt)) for r in records]
    template, fmt = _template(tokenizer, recipe, rows), _format_config(recipe)
    # Packed examples are cut by the packer (a long document spans sequences), not one by one.
    row_fmt = fmt.model_copy(update={"max_length": None}) if fmt.packing else fmt
    examples, rejected = [], []
    for row in rows:
        out = format_row(row, tokenizer, row_fmt, template=template)
        (rejected if isinstance(out, RejectedRow) else examples).append(out)
    if rejected and len(rejected) > recipe.data.max_rejected_fraction * len(rows):
        first = rejected[0]
        raise DataError(f"{len(rejected)} of {len(rows)} rows cannot be trained on after formatting (more than "
                        f"data.max_rejected_fraction); first: {first.file}:{first.line}: {first.reason}")
    if fmt.packing:
        return packed_encoded(examples, fmt)
    return Encoded(input_ids=[e.input_ids for e in examples], labels=[e.labels for e in examples],
                   label_kind="causal")


def packed_encoded(examples, fmt):
    """Causal-LM examples packed per ``data.formatting`` (``packing_strategy``, ``max_length``)."""
    from tuneforge.data.batching import Encoded
    from tuneforge.data.packing import pack_examples, stream_blocks

    if fmt.packing_strategy == "stream":
        # labels are cut at the same places as the ids, so chat loss masks survive streaming
        ids = stream_blocks((e.input_ids for e in examples), fmt.max_length, overlap=1)
        labels = stream_blocks((e.labels for e in examples), fmt.max_length, overlap=1)
        return Encoded(input_ids=ids, labels=labels, label_kind="causal")
    packed = pack_examples(examples, fmt.max_length, strategy=fmt.packing_strategy)
    return Encoded(input_ids=[p.input_ids for p in packed], labels=[p.labels for p in packed], label_kind="causal",
                   extra={"position_ids": [p.position_ids for p in packed]})


def as_chat(record: dict, pair_prompt: str | None) -> dict:
    """A prepared pair record as a two-turn chat record when ``pair_prompt`` is set (a new dict)."""
    if pair_prompt is None or "target" not in record or "messages" in record:
        return dict(record)
    out = {k: v for k, v in record.items() if k not in ("source", "target")}
    out["messages"] = [{"role": "user", "content": pair_prompt + record["source"]},
                       {"role": "assistant", "content": record["target"]}]
    return out


def metrics(preds, records: list[dict], encoded, names: list[str] | None) -> dict:
    return {"perplexity": math.exp(min(preds.loss, 50.0))}


def generate_metrics(model, tokenizer, records: list[dict], recipe) -> dict:
    """Generate the last assistant turn of validation conversations and score it."""
    from tuneforge.tasks.metrics.task_metrics import final_number_accuracy, generation_metrics
    from tuneforge.models.generation import generate_from_messages
    from tuneforge.tasks.metrics.examples import generation_records

    cfg = recipe.causal_lm
    if cfg.eval_metric == "none":
        return {}
    prompts, references = [], []
    for record in records:
        messages = as_chat(record, cfg.pair_prompt).get("messages")
        if not messages or messages[-1]["role"] != "assistant":
            continue
        prompts.append(messages[:-1])
        references.append(record.get("references") or messages[-1]["content"])
        if len(prompts) >= cfg.eval_examples:
            break
    if not prompts:
        return {}
    tok = copy.copy(tokenizer)  # generation must use the template training used, without touching the caller's
    tok.chat_template = _template(tokenizer, recipe, [_ChatRow()])
    predictions = generate_from_messages(model, tok, prompts, cfg.generation,
                                         progress=f"generating {len(prompts)} validation replies")
    if cfg.eval_metric == "final_number":
        out = final_number_accuracy(predictions, [r if isinstance(r, str) else r[0] for r in references])
    else:
        out = generation_metrics(predictions, references)
    out["generations"] = generation_records(prompts, references, predictions, cfg.eval_metric)
    return out


def sample_texts(model, tokenizer, recipe) -> list[dict]:
    """``causal_lm.sample_prompts`` continued with ``causal_lm.sample_generation``."""
    from tuneforge.models.generation import generate

    prompts = recipe.causal_lm.sample_prompts
    if not prompts:
        return []
    outputs = generate(model, tokenizer, prompts, recipe.causal_lm.sample_generation)
    return [{"prompt": p, "generated": o} for p, o in zip(prompts, outputs)]


def compare_with_base(model, recipe, load_base, score) -> dict | None:
    """The base model's validation metrics (``score(model)``), for the side-by-side report.

    PEFT methods only add weights, so disabling the adapter *is* the base model; for full, head_only
    and bottleneck adapters the pretrained weights are loaded again (``load_base()``).
    """
    if not recipe.causal_lm.compare_with_base or recipe.model.architecture is not None:
        return None  # a model trained from scratch has no base to compare with
    if recipe.method in ADAPTER_METHODS and hasattr(model, "disable_adapter"):
        with model.disable_adapter():
            return score(model)
    return score(load_base())


def write_comparison(base: dict, tuned: dict, out_dir, recipe, scope: str | None = None) -> None:
    """eval/base_vs_tuned.md and .json: each metric for the base and the tuned model. ``scope``: the
    sentence saying what was measured on what (default: causal_lm's)."""
    import json
    from pathlib import Path

    keys = [k for k in tuned if k in base and isinstance(tuned[k], (int, float))]
    from tuneforge.tasks.metrics import METRIC_DIRECTIONS

    if scope is None:
        generated = recipe.causal_lm.eval_metric != "none"
        scope = ("Loss and perplexity on the whole validation split" + (
            f"; generation metrics on the same {recipe.causal_lm.eval_examples} validation prompts (at most) with the "
            "same decoding for both." if generated else "."))
    lines = [f"# {recipe.name}: base vs tuned", "", f"Model `{recipe.model.name}`, method `{recipe.method}`. {scope}", "",
             "| metric | better | base | tuned |", "|---|:---:|---:|---:|"]
    lines += [f"| {k} | {_arrow(METRIC_DIRECTIONS.get(k))} | {base[k]:.4g} | {tuned[k]:.4g} |" for k in keys]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "base_vs_tuned.md").write_text("\n".join(lines) + "\n")
    (out / "base_vs_tuned.json").write_text(json.dumps({"base": base, "tuned": {k: tuned[k] for k in keys}},
                                                       indent=2) + "\n")


def _arrow(direction: str | None) -> str:
    return {"min": "lower", "max": "higher"}.get(direction or "", "")


class _ChatRow:
    kind = "chat"


def check_recipe(recipe) -> None:
    """Selecting on a generation metric needs that metric generated during training."""
    metric = recipe.train.metric_for_best
    generated = {"final_number": {"final_number_accuracy"}, "text": {"bleu", "chrf", "rougeL"}}
    if metric in {"final_number_accuracy", "bleu", "chrf", "rougeL"}:
        if metric not in generated.get(recipe.causal_lm.eval_metric, set()):
            raise ValueError(f"train.metric_for_best: {metric} needs causal_lm.eval_metric "
                             f"{'final_number' if metric == 'final_number_accuracy' else 'text'}"
                             f" (now {recipe.causal_lm.eval_metric})")
        if not recipe.causal_lm.generate_during_training:
            raise ValueError(f"train.metric_for_best: {metric} is only measured during "
                             "training with causal_lm.generate_during_training: true; set it, or select on loss")


def loop_generation(recipe) -> list[str]:
    keys = []
    if recipe.causal_lm.generate_during_training:
        keys.append("causal_lm.generate_during_training: true")
    if recipe.causal_lm.sample_prompts:
        keys.append("causal_lm.sample_prompts")
    return keys


def log_samples(model, tokenizer, recipe, step: int) -> None:
    """At every evaluation during training: samples appended to samples.jsonl (one record each)."""
    import json

    if not recipe.causal_lm.sample_prompts:
        return
    with (recipe.run_dir / "samples.jsonl").open("a") as fh:
        fh.write(json.dumps({"step": step, "samples": sample_texts(model, tokenizer, recipe)}) + "\n")


def after_evaluation(final) -> None:
    """The untuned base model next to the tuned one (eval/base_vs_tuned.md): the evidence that tuning
    helped, in one table; then the samples."""
    base = compare_with_base(final.model, final.recipe, final.load_base, final.score)
    if base:
        write_comparison(base, final.metrics, final.out_dir, final.recipe)
        final.metrics["base"] = base
        final.say("base vs tuned: " + ", ".join(f"{k} {base[k]:.4g} -> {final.metrics[k]:.4g}" for k in base
                                                if k in final.metrics and isinstance(base[k], (int, float))))
    if final.recipe.causal_lm.sample_prompts:
        final.metrics["samples"] = sample_texts(final.model, final.tokenizer, final.recipe)


def final_generation(recipe) -> tuple[int, int] | None:
    if recipe.causal_lm.eval_metric == "none":
        return None
    gen = recipe.causal_lm.generation
    return gen.batch_size * gen.num_beams, gen.max_new_tokens


SPEC = register(TaskSpec(
    name="causal_lm", labels="none", label_kind="causal", auto_class="AutoModelForCausalLM",
    peft_task_type="CAUSAL_LM", head_kwargs=lambda names: {}, encode=encode, metrics=metrics,
    summary=lambda m: f"loss {m['loss']:.4f}, perplexity {m['perplexity']:.2f}" + "".join(
        f", {k} {m[k]:.2f}" for k in ("final_number_accuracy", "bleu", "rougeL") if k in m),
    generate_metrics=generate_metrics,
    selectable={"loss": "min", "perplexity": "min", "final_number_accuracy": "max", "bleu": "max", "chrf": "max",
                "rougeL": "max"},
    section="causal_lm", check_recipe=check_recipe, scratch_families=("gpt2", "llama"),
    generate_in_loop=lambda recipe: recipe.causal_lm.generate_during_training, loop_generation=loop_generation,
    during_evaluation=log_samples, after_evaluation=after_evaluation, final_generation=final_generation,
))
