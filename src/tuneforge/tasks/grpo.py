"""GRPO (Shao et al. 2024, "DeepSeekMath", Sec. 4): reinforcement learning from rewards the recipe
defines, with no value model: each prompt's completions are compared with each other.

Rows are prompts: chat rows (a chat ending with the assistant's turn is a prompt, every turn before
it, plus a reference answer, that turn; one ending with a user turn is a prompt without a reference),
plain text rows (the raw text is the prompt, no template: "continue this review") and source/target
pair rows (source the raw prompt, target the reference). ``encode`` renders chat prompts with the
recipe's chat template and the generation prompt, and keeps per prompt (``Encoded.meta``) what the
rewards read: ``prompt`` (the last user turn's text, or the raw text), ``reference`` (or None) and
``messages`` (the prompt's turns as JSON, for reward models with a chat template; None for raw text).

One training step, for each micro-batch of P prompts (``GRPOObjective.loss_sum``):

1. the model generates ``grpo.num_generations`` = G completions per prompt (sampling with
   ``grpo.generation``; eval mode, KV cache, no gradients; every module's train/eval mode restored);
2. the rewards (``tasks.rewards``) score the decoded completions; the total is their weighted sum;
3. advantages: each reward minus its group's mean, divided by the group's std (``scale_rewards``);
4. one forward pass of prompt + completion with gradients gives per-token log-probs of the completion
   tokens (up to and including the end-of-sequence token; prompt and padding are not trained);
   the loss is GRPO's clipped surrogate (``preference_losses.grpo_token_loss``), a mean over each
   completion's tokens, plus ``beta`` times the k3 KL estimate to the reference model, which is the
   same model with its PEFT adapters switched off (no second copy; evaluated in eval mode);
5. the summed per-completion losses / G: each prompt weighs 1 (the loop divides by the prompts in the
   optimizer step).

There is one optimisation pass per generation batch, so the "old" policy is the current one: the
importance ratio is exactly 1 and the clip never acts (``clip_fraction`` is 0); the clipped form is
kept so that the numbers are those of GRPO. ``beta > 0`` needs a PEFT method: with full fine-tuning the
reference would be a second full copy of the model, which is refused rather than made silently.

Evaluation (``predict`` on validation prompts, no gradients) generates one completion per prompt with
``grpo.eval_generation`` (greedy by default) and scores it: the metrics are ``reward`` (the mean
total), ``reward_<name>`` per reward and ``completion_length`` (tokens); the loss is -reward. After
the final evaluation the base model (adapters off, or the pretrained weights) is scored on the same
prompts: eval/base_vs_tuned.md/.json, with samples side by side.

The objective needs each prompt's reference and text, so it is built per encoded split from its
``meta`` (``GRPOObjective.for_examples``); ``encode`` attaches it. An objective without them (built by
``objective_for(tokenizer, recipe)`` alone) decodes the prompts from their tokens and has no
references: rewards that need one (``final_number``) then fail, naming the setting.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import Field, field_validator

from tuneforge.errors import DataError, TuneforgeError
from tuneforge.models.generation import GenerationConfig
from tuneforge.sections import Section
from tuneforge.tasks.base import ADAPTER_METHODS, TaskSpec, register
from tuneforge.tasks.rewards import RewardConfig, Rewards, check_unique_names, missing_models

#: Validation prompts shown with their completions in the metrics ("samples") and the base-vs-tuned report.
COMPARISON_SAMPLES = 5
NO_REWARDS = ("grpo.rewards: task grpo needs at least one reward, e.g. [{type: final_number}] (see "
              "tuneforge.tasks.rewards)")


class GRPOSampling(GenerationConfig):
    """Decoding of the training completions: sampling by default."""

    max_new_tokens: int = Field(64, ge=1, description="Most tokens per completion.")
    do_sample: bool = Field(True, description="Sample (needed: greedy completions of a prompt are all the same, so "
                            "their advantages are all 0).")
    batch_size: int = Field(64, ge=1, description="Sequences (prompts x num_generations) per generate() call.")
    seed: int | None = Field(None, ge=0, description="Seed of the sampling; each generation call adds its count. "
                             "None: the run's torch RNG (seeded by the recipe's seed, restored on --resume).")


class GRPOEvalGeneration(GenerationConfig):
    """Decoding of the evaluation completions: greedy by default."""

    max_new_tokens: int = Field(64, ge=1, description="Most tokens per completion.")
    batch_size: int = Field(64, ge=1, description="Prompts per generate() call.")


class GRPOConfig(Section):
    rewards: list[RewardConfig] = Field(
        default_factory=list, description="The rewards, summed with their weights (tuneforge.tasks.rewards): "
        "[{type: final_number}], [{type: regex, pattern: ...}], [{type: length, target: 50, unit: tokens}], "
        "[{type: python, function: 'module:fn'}], [{type: classifier, path: ..., label: ...}], "
        "[{type: reward_model, path: ...}].")
    num_generations: int = Field(4, ge=2, description="Completions per prompt (the group size G); the advantages "
                                 "compare a prompt's completions with each other.")
    generation: GRPOSampling = Field(default_factory=GRPOSampling,
                                     description="Sampling of the training completions.")
    beta: float = Field(0.04, ge=0, description="Weight of the KL penalty to the reference model (the model with "
                        "its PEFT adapters off); 0: no penalty and no reference forward pass.")
    epsilon_low: float = Field(0.2, ge=0, lt=1, description="Clip range below 1 of the importance ratio.")
    epsilon_high: float = Field(0.2, ge=0, description="Clip range above 1 of the importance ratio (DAPO's "
                                "clip-higher when larger than epsilon_low).")
    scale_rewards: bool = Field(True, description="Divide each advantage by its group's reward std (GRPO); false: "
                                "only subtract the group mean (Dr. GRPO).")
    eval_generation: GRPOEvalGeneration = Field(default_factory=GRPOEvalGeneration,
                                                description="Decoding at evaluation: one completion per "
                                                "validation prompt (greedy by default).")
    log_samples: int = Field(2, ge=0, description="Completions (with prompt and reward) appended to "
                             "<run>/samples.jsonl at every logged training step; 0: none.")
    compare_with_base: bool = Field(True, description="At the final evaluation, also score the base model (adapters "
                                    "off, or the pretrained weights) on the validation prompts: "
                                    "eval/base_vs_tuned.md.")

    @field_validator("rewards")
    @classmethod
    def _rewards(cls, value: list[RewardConfig]) -> list[RewardConfig]:
        if not value:
            raise ValueError(NO_REWARDS)
        check_unique_names(value)
        return value


# --------------------------------------------------------------------------------------------- data


def _limit(recipe) -> tuple[int, str]:
    """The most prompt tokens, and the key that sets it."""
    fmt = recipe.data.formatting
    if fmt.max_length is not None and fmt.max_length < recipe.model.max_length:
        return fmt.max_length, "data.formatting.max_length"
    return recipe.model.max_length, "model.max_length"


def prompt_of(record: dict) -> tuple[str, list[dict] | None, str | None]:
    """``(prompt text for the rewards, prompt turns or None for raw text, reference or None)`` of a record."""
    if "messages" in record:
        messages = list(record["messages"])
        reference = None
        if messages and messages[-1]["role"] == "assistant":
            reference = messages[-1]["content"]
            messages = messages[:-1]
        users = [m["content"] for m in messages if m["role"] == "user"]
        return (users[-1] if users else (messages[-1]["content"] if messages else "")), messages, reference
    if "target" in record and "text" not in record:
        target = record.get("references") or record["target"]
        return record["source"], None, target[0] if isinstance(target, list) else target
    return record["text"], None, None


def _raw_prompt_ids(tokenizer, text: str) -> list[int]:
    """A raw-text prompt's ids with the tokenizer's leading special tokens (BOS) but not its trailing ones
    (EOS, BERT's [SEP]): the model is to continue the text, not to start after its end."""
    full = list(tokenizer(text, add_special_tokens=True)["input_ids"])
    plain = list(tokenizer(text, add_special_tokens=False)["input_ids"])
    for start in range(len(full) - len(plain) + 1):
        if full[start:start + len(plain)] == plain:
            return full[:start + len(plain)]
    return plain


def encode(records: list[dict], tokenizer, recipe, names: list[str] | None):
    """Prompts as token ids (``label_kind`` prompt), with what the rewards read in ``meta``."""
    from jinja2 import TemplateError

    from tuneforge.data.batching import Encoded
    from tuneforge.data.templates import resolve_template

    (limit, limit_key), template = _limit(recipe), None
    ids, meta, rejected = [], {"prompt": [], "reference": [], "messages": []}, []
    for record in records:
        origin = record.get("_origin", "")
        text, turns, reference = prompt_of(record)
        if turns is not None:
            if not turns:
                rejected.append(f"{origin}: no prompt before the assistant's reply")
                continue
            template = template or resolve_template(tokenizer, recipe.data.formatting.template)
            try:
                rendered = tokenizer.apply_chat_template(turns, chat_template=template, tokenize=False,
                                                         add_generation_prompt=True)
            except (TemplateError, TypeError, ValueError) as exc:
                rejected.append(f"{origin}: the chat template failed on this conversation: {exc}")
                continue
            prompt_ids = list(tokenizer(rendered, add_special_tokens=False)["input_ids"])
        else:
            prompt_ids = _raw_prompt_ids(tokenizer, text)
        if not prompt_ids:
            rejected.append(f"{origin}: empty prompt")
            continue
        if len(prompt_ids) > limit:
            rejected.append(f"{origin}: the prompt has {len(prompt_ids)} tokens, more than {limit_key} {limit}")
            continue
        ids.append(prompt_ids)
        meta["prompt"].append(text)
        meta["reference"].append(reference)
        meta["messages"].append(json.dumps(turns, ensure_ascii=False) if turns is not None else None)
    if rejected and len(rejected) > recipe.data.max_rejected_fraction * len(records):
        raise DataError(f"{len(rejected)} of {len(records)} GRPO prompts cannot be used (more than "
                        f"data.max_rejected_fraction); first: {rejected[0]}")
    _check_references(recipe.grpo, meta["reference"])
    return Encoded(input_ids=ids, labels=[0] * len(ids), label_kind="prompt", meta=meta,
                   objective=objective_for(tokenizer, recipe).for_examples(meta))


def _check_references(cfg: GRPOConfig, references: list) -> None:
    from tuneforge.tasks.metrics.final_number import extract_final_number

    for i, reward in enumerate(cfg.rewards):
        if reward.type != "final_number":
            continue
        missing = [k for k, r in enumerate(references) if r is None or extract_final_number(r) is None]
        if missing:
            raise DataError(f"grpo.rewards.{i} (final_number) compares each completion's final number with the "
                            f"reference answer's, but {len(missing)} of {len(references)} prompts have no reference "
                            f"with a number (first: prompt {missing[0]}); each chat must end with the assistant's "
                            "answer")


# ------------------------------------------------------------------------------------------ the loss


@dataclass
class GRPOOutput:
    """Per prompt: [total reward, each reward..., completion tokens] (evaluation: one completion; training:
    the means over the prompt's G completions)."""

    per_example: Any


class GRPOObjective:
    """GRPO's step (``loss_sum``); see the module docstring. ``examples``: per encoded prompt, its
    ``prompt`` text, ``reference`` and ``messages`` (``Encoded.meta``), looked up by ``batch["index"]``."""

    def __init__(self, cfg: GRPOConfig, tokenizer, *, rewards: Rewards | None = None, run_dir: Path | None = None,
                 log_every: int = 1, examples: dict | None = None):
        self.cfg, self.tokenizer = cfg, tokenizer
        self.rewards = rewards if rewards is not None else Rewards(cfg.rewards, tokenizer=tokenizer)
        self.run_dir, self.log_every, self.examples = run_dir, log_every, examples
        #: the last evaluation's completion of each prompt (by index), for metrics and reports
        self.completions: dict[int, str] = {}
        self._sums: dict[str, list[float]] = {}  # key -> [sum, sum of squares, count]
        self._samples: list[dict] = []
        self._calls = 0
        self._logged_step: int | None = None
        self._device = None

    def for_examples(self, meta: dict) -> "GRPOObjective":
        """This objective for the prompts whose ``meta`` (``encode``'s) is given, sharing the rewards."""
        return GRPOObjective(self.cfg, self.tokenizer, rewards=self.rewards, run_dir=self.run_dir,
                             log_every=self.log_every, examples=meta)

    # --- export verification (tuneforge.export.merge.verify_export)

    def verification_values(self, rows):
        """What an export must reproduce: per validation prompt, the rewards and the length of its
        (greedy) completion, i.e. the same completion."""
        return rows

    def without_reference(self) -> "GRPOObjective":
        """Evaluation never uses the reference model: this objective as it is."""
        return self

    # --- the step

    def loss_sum(self, model, batch: dict):
        import torch

        from tuneforge.models.generation import cut_at_stop, generate_ids
        from tuneforge.tasks.losses import unwrap

        training = torch.is_grad_enabled() and model.training
        device = batch["input_ids"].device
        self._device = device
        index = batch["index"].tolist()
        prompts = [row[:n] for row, n in zip(batch["input_ids"].tolist(), batch["attention_mask"].sum(-1).tolist())]
        group = self.cfg.num_generations if training else 1
        gen = self.cfg.generation if training else self.cfg.eval_generation
        if training and gen.seed is not None:
            gen = gen.model_copy(update={"seed": gen.seed + self._calls})
        completion_ids = generate_ids(unwrap(model), self.tokenizer, prompts, gen, num_return_sequences=group)
        texts = [cut_at_stop(self.tokenizer.decode(c, skip_special_tokens=True), gen.stop).strip()
                 for c in completion_ids]
        prompt_texts, references, turns = self._prompt_info(index, prompts)
        times = lambda values: [v for v in values for _ in range(group)]  # noqa: E731
        total, parts = self.rewards(times(prompt_texts), texts, times(references), device=device,
                                    conversations=times(turns))
        lengths = torch.tensor([len(c) for c in completion_ids], dtype=torch.float32)
        columns = torch.stack([total, *parts.values(), lengths], dim=-1)  # [P * G, k]
        if not training:
            self.completions.update(zip(index, texts))
            return -total.sum().to(device), GRPOOutput(columns)
        self._calls += 1
        loss, stats = self._policy_loss(model, prompts, completion_ids, total.view(len(prompts), group), device)
        self._record(columns, total.view(len(prompts), group), stats, prompt_texts, texts, group)
        per_prompt = columns.view(len(prompts), group, -1).mean(dim=1)
        return loss, GRPOOutput(per_prompt)

    def _policy_loss(self, model, prompts, completion_ids, rewards, device):
        from tuneforge.data.batching import IGNORE
        from tuneforge.tasks.losses import next_targets, token_logps
        from tuneforge.tasks.preference_losses import grpo_advantages, grpo_token_loss

        group = rewards.size(1)
        advantages = grpo_advantages(rewards, scale=self.cfg.scale_rewards).reshape(-1).to(device)
        ids, mask, labels = self._sequences(prompts, completion_ids, group, device)
        logps = token_logps(model, ids, mask, labels)
        trained = next_targets(labels, "causal") != IGNORE
        ref = self._reference(model, ids, mask, labels) if self.cfg.beta > 0 else None
        # One optimisation pass per generation batch: the sampling policy is the current one, so the
        # "old" log-probs are these, detached (ratio 1, the clip inactive).
        per_sequence, stats = grpo_token_loss(logps, logps.detach(), ref, advantages, trained,
                                              epsilon_low=self.cfg.epsilon_low, epsilon_high=self.cfg.epsilon_high,
                                              beta=self.cfg.beta)
        return per_sequence.sum() / group, stats

    def _sequences(self, prompts, completion_ids, group: int, device):
        """Right-padded prompt + completion rows, their attention mask, and labels on the completion only."""
        import torch

        from tuneforge.data.batching import IGNORE

        pad = self.tokenizer.pad_token_id
        pad = pad if pad is not None else (self.tokenizer.eos_token_id or 0)
        rows = [(prompts[k // group], c) for k, c in enumerate(completion_ids)]
        width = max(len(p) + len(c) for p, c in rows)
        ids = torch.full((len(rows), width), pad, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        labels = torch.full((len(rows), width), IGNORE, dtype=torch.long)
        for k, (p, c) in enumerate(rows):
            n = len(p) + len(c)
            ids[k, :n] = torch.tensor(p + c, dtype=torch.long)
            mask[k, :n] = 1
            labels[k, len(p):n] = torch.tensor(c, dtype=torch.long)
        return ids.to(device), mask.to(device), labels.to(device)

    def _reference(self, model, ids, mask, labels):
        """Per-token log-probs of the reference model: the model with its adapters off, in eval mode (no
        dropout), without gradients; every module's mode restored."""
        import torch

        from tuneforge.tasks.losses import token_logps, unwrap

        core = unwrap(model)
        if not hasattr(core, "disable_adapter"):
            raise TuneforgeError("grpo.beta > 0 needs the reference model, the model with its PEFT adapters switched "
                                 "off, but this model has no adapters; set grpo.beta: 0 or use a PEFT method")
        modes = [(m, m.training) for m in core.modules()]
        core.eval()
        try:
            with torch.no_grad(), core.disable_adapter():
                return token_logps(core, ids, mask, labels).detach()
        finally:
            for module, training in modes:
                module.training = training

    def _prompt_info(self, index: list[int], prompts: list[list[int]]):
        if self.examples is not None:
            meta = self.examples
            turns = [json.loads(t) if t else None for t in (meta["messages"][i] for i in index)]
            return [meta["prompt"][i] for i in index], [meta["reference"][i] for i in index], turns
        texts = [self.tokenizer.decode(p, skip_special_tokens=True) for p in prompts]
        return texts, [None] * len(index), [None] * len(index)

    # --- what the loop logs

    def _add(self, key: str, values) -> None:
        entry = self._sums.setdefault(key, [0.0, 0.0, 0.0])
        for v in values:
            entry[0] += float(v)
            entry[1] += float(v) ** 2
            entry[2] += 1

    def _record(self, columns, rewards, stats: dict, prompt_texts, texts, group: int) -> None:
        self._add("reward", columns[:, 0].tolist())
        for j, name in enumerate(self.rewards.names, start=1):
            self._add(f"reward_{name}", columns[:, j].tolist())
        self._add("completion_length", columns[:, -1].tolist())
        spread = rewards.max(dim=1).values - rewards.min(dim=1).values
        self._add("zero_std_groups", (spread == 0).float().tolist())
        for key in ("kl", "clip_fraction"):
            if key in stats:
                self._add(key, [float(stats[key])])
        n = len(texts)
        order = [p * group + g for g in range(group) for p in range(n // group)]  # one per prompt first
        self._samples = [{"prompt": prompt_texts[k // group], "completion": texts[k],
                          "reward": float(columns[k, 0]),
                          "rewards": {name: float(columns[k, j]) for j, name in enumerate(self.rewards.names, 1)}}
                         for k in order[:self.cfg.log_samples]]

    def pop_stats(self) -> dict:
        """Means (and for rewards the std) of what the training steps measured since the last call,
        over every process; appends the latest samples to samples.jsonl (main process)."""
        sums = self._reduced()
        out = {}
        for key, (total, squares, count) in sums.items():
            if not count:
                continue
            mean = total / count
            out[key] = mean
            if key.startswith("reward"):
                out[f"{key}_std"] = math.sqrt(max(squares / count - mean * mean, 0.0))
        self._sums = {}
        self._write_samples()
        return out

    def _reduced(self) -> dict:
        import torch
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1) or not self._sums:
            return dict(self._sums)
        keys = sorted(self._sums)
        values = torch.tensor([self._sums[k] for k in keys], dtype=torch.float64, device=self._device)
        dist.all_reduce(values)
        return {k: v for k, v in zip(keys, values.tolist())}

    def _write_samples(self) -> None:
        samples, self._samples = self._samples, []
        if not samples or self.run_dir is None or not _main_process():
            return
        path = Path(self.run_dir) / "samples.jsonl"
        with path.open("a", encoding="utf-8") as fh:
            fh.write(json.dumps({"step": self._next_logged_step(), "samples": samples}, ensure_ascii=False) + "\n")

    def _next_logged_step(self) -> int:
        """The step the loop is logging: the last logged training step in metrics.jsonl (a resumed run's
        file is cut at its checkpoint) plus ``train.log_every_steps``."""
        if self._logged_step is None:
            self._logged_step = 0
            path = Path(self.run_dir) / "metrics.jsonl"
            if path.exists():
                for line in path.read_text(encoding="utf-8").splitlines():
                    try:
                        record = json.loads(line)
                    except ValueError:
                        continue
                    if isinstance(record, dict) and record.get("kind") == "train":
                        self._logged_step = int(record.get("step", 0))
        self._logged_step += self.log_every
        return self._logged_step


def _main_process() -> bool:
    import torch.distributed as dist

    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


#: (rewards config as JSON, tokenizer) -> Rewards of the last objective built: the training and the
#: validation split share one (a classifier or reward model is loaded once).
_LAST_REWARDS: list = []


def objective_for(tokenizer, recipe) -> GRPOObjective:
    """The recipe's GRPO objective, without per-prompt data (``for_examples`` adds it)."""
    cfg = recipe.grpo
    key = json.dumps([r.model_dump(mode="json") for r in cfg.rewards], sort_keys=True)
    if _LAST_REWARDS and _LAST_REWARDS[0] == key and _LAST_REWARDS[1] is tokenizer:
        rewards = _LAST_REWARDS[2]
    else:
        rewards = Rewards(cfg.rewards, tokenizer=tokenizer)
        _LAST_REWARDS[:] = [key, tokenizer, rewards]
    return GRPOObjective(cfg, tokenizer, rewards=rewards, run_dir=recipe.run_dir,
                         log_every=recipe.train.log_every_steps)


# ------------------------------------------------------------------------------------------ metrics


def metrics(preds, records: list[dict], encoded, names: list[str] | None) -> dict:
    """Mean total reward, each reward's mean, mean completion length; the first validation prompts with
    their completions ("samples"), and every completion ("generations": eval/generations.jsonl)."""
    import torch

    if not preds.outputs:
        return {}
    rows = torch.stack(preds.outputs)
    objective = encoded.objective
    reward_names = objective.rewards.names
    out = {"reward": float(rows[:, 0].mean())}
    for j, name in enumerate(reward_names, start=1):
        out[f"reward_{name}"] = float(rows[:, j].mean())
    out["completion_length"] = float(rows[:, -1].mean())
    generations = []
    for i in range(len(rows)):
        if i not in objective.completions:
            continue  # another process generated it (evaluation during training, several processes)
        prompt, _, reference = objective._prompt_info([i], [encoded.input_ids[i]])
        generations.append({"prompt": prompt[0], "reference": reference[0], "completion": objective.completions[i],
                            "reward": float(rows[i, 0]),
                            "rewards": {name: float(rows[i, j]) for j, name in enumerate(reward_names, 1)}})
    out["samples"] = generations[:COMPARISON_SAMPLES]
    out["generations"] = generations
    return out


def summary(m: dict) -> str:
    parts = [f"reward {m['reward']:.4f}"] if "reward" in m else [f"loss {m['loss']:.4f}"]
    parts += [f"{k} {m[k]:.4f}" for k in m if k.startswith("reward_") and isinstance(m[k], (int, float))]
    if "completion_length" in m:
        parts.append(f"completion length {m['completion_length']:.1f}")
    return ", ".join(parts)


def check_recipe(recipe) -> None:
    cfg = recipe.grpo
    if not cfg.rewards:
        raise ValueError(NO_REWARDS)
    if cfg.beta > 0 and recipe.method not in ADAPTER_METHODS:
        raise ValueError(f"grpo.beta: {cfg.beta} penalises the distance to a reference model, which tuneforge takes "
                         f"from the model with its PEFT adapters switched off; method {recipe.method} changes the "
                         "model's own weights, and a second full copy of the model is not made silently. Set "
                         f"grpo.beta: 0 (no KL penalty) or use a PEFT method ({', '.join(ADAPTER_METHODS)})")
    if not cfg.generation.do_sample:
        raise ValueError("grpo.generation.do_sample: false makes the num_generations completions of a prompt "
                         "identical (greedy), so every advantage is 0 and nothing is learned; set do_sample: true")
    if cfg.generation.num_beams != 1:
        raise ValueError(f"grpo.generation.num_beams: {cfg.generation.num_beams}: GRPO trains on samples of the "
                         "policy; beam search is not sampling (use num_beams: 1)")


def after_evaluation(final) -> None:
    """The base model on the same validation prompts (adapters off, or the pretrained weights): its mean
    rewards next to the tuned model's, and their completions side by side (eval/base_vs_tuned.md/.json)."""
    recipe = final.recipe
    if not recipe.grpo.compare_with_base:
        return
    tuned_samples = list(final.metrics.get("samples") or [])
    if recipe.method in ADAPTER_METHODS and hasattr(final.model, "disable_adapter"):
        with final.model.disable_adapter():
            base = final.score(final.model)
    else:
        base = final.score(final.load_base())
    keys = [k for k in final.metrics if (k == "reward" or k.startswith("reward_") or k == "completion_length")
            and isinstance(final.metrics[k], (int, float)) and isinstance(base.get(k), (int, float))]
    numbers = {k: base[k] for k in keys}
    write_comparison(numbers, {k: final.metrics[k] for k in keys}, base.get("samples") or [], tuned_samples,
                     final.out_dir, recipe)
    final.metrics["base"] = numbers
    final.say("base vs tuned: " + ", ".join(f"{k} {numbers[k]:.4g} -> {final.metrics[k]:.4g}" for k in keys))


def write_comparison(base: dict, tuned: dict, base_samples: list, tuned_samples: list, out_dir, recipe) -> None:
    """eval/base_vs_tuned.md and .json: the mean rewards of both models, then their completions of the
    same prompts side by side."""
    from tuneforge.atomic import atomic_write_text

    lines = [f"# {recipe.name}: base vs tuned", "",
             f"Model `{recipe.model.name}`, method `{recipe.method}`. Mean rewards of one completion per validation "
             "prompt (grpo.eval_generation) for both models, same prompts and decoding.", "",
             "| metric | better | base | tuned |", "|---|:---:|---:|---:|"]
    lines += [f"| {k} | {'' if k == 'completion_length' else 'higher'} | {base[k]:.4g} | {tuned[k]:.4g} |"
              for k in tuned]
    pairs = list(zip(base_samples, tuned_samples))
    if pairs:
        lines += ["", "## Samples", ""]
        for n, (b, t) in enumerate(pairs, start=1):
            lines += [f"### {n}. {_quote(b['prompt'])}", "",
                      f"- base (reward {b['reward']:.3g}): {_quote(b['completion'])}",
                      f"- tuned (reward {t['reward']:.3g}): {_quote(t['completion'])}", ""]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "base_vs_tuned.md", "\n".join(lines).rstrip() + "\n")
    samples = [{"prompt": b["prompt"], "base": b["completion"], "base_reward": b["reward"],
                "tuned": t["completion"], "tuned_reward": t["reward"]} for b, t in pairs]
    atomic_write_text(out / "base_vs_tuned.json", json.dumps({"base": base, "tuned": tuned, "samples": samples},
                                                             indent=2, ensure_ascii=False) + "\n")


def _quote(text: str, limit: int = 300) -> str:
    text = " ".join(str(text).split())
    return (text[:limit] + "...") if len(text) > limit else (text or "(empty)")


def final_generation(recipe) -> tuple[int, int] | None:
    gen = recipe.grpo.eval_generation
    return gen.batch_size * gen.num_beams, gen.max_new_tokens


SPEC = register(TaskSpec(
    name="grpo", labels="none", label_kind="prompt", auto_class="AutoModelForCausalLM", peft_task_type="CAUSAL_LM",
    head_kwargs=lambda names: {}, encode=encode, metrics=metrics, summary=summary, objective=objective_for,
    selectable={"reward": "max", "loss": "min"}, default_metric="reward", section="grpo",
    check_recipe=check_recipe, missing_files=lambda recipe: missing_models(recipe.grpo.rewards), scratch_families=(),
    unsupported_methods={"head_only": "a causal LM has no new head: GRPO trains the model itself"},
    loop_generation=lambda recipe: ["task grpo (every training step generates completions)"],
    after_evaluation=after_evaluation, final_generation=final_generation,
))
