"""``tuneforge pairs``: preference pairs built by sampling and ranking, from a GRPO recipe.

Offline preference methods (DPO, IPO, ...) need chosen/rejected pairs; when all a user has is prompts and
a reward (a classifier, a reward model, a checker), the pairs can be made: sample ``grpo.num_generations``
completions of every prompt with the recipe's model and ``grpo.generation`` decoding, score them with
``grpo.rewards``, and keep the best as chosen and the worst as rejected (Xu et al. 2023's "self-rewarding"
recipe, without the self). The same recipe therefore gives both routes of the positive-review demo: GRPO
optimises the reward online; ``tuneforge pairs`` + a DPO recipe optimises it offline.

Prompts whose best and worst completions score within ``min_margin`` (or decode to the same text) teach
nothing and are skipped; the report counts them. Rows are written in TRL's preference format
(``{prompt, chosen, rejected}``, conversational when the prompts are chats), which ``task: preference``
reads as is; the rewards go into a side file, not the rows.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

#: prompts generated per progress step (each with num_generations completions)
PROMPTS_PER_CALL = 16


def build_pairs(recipe, out_dir: Path, *, min_margin: float = 0.0, splits: tuple[str, ...] = ("train", "validation"),
                say: Callable[[str], None] = print) -> dict:
    """Write ``<out_dir>/<split>.jsonl`` pairs for the prompts of a GRPO ``recipe``; return the report."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tuneforge.atomic import atomic_write_json, atomic_write_text
    from tuneforge.data.prepare import load_prepared, prepare_task_data
    from tuneforge.models.load_export import device_of
    from tuneforge.models.resolve import resolve_model
    from tuneforge.tasks import get_task
    from tuneforge.tasks.rewards import Rewards

    if recipe.task != "grpo":
        raise ValueError(f"tuneforge pairs reads the prompts, model and rewards of a GRPO recipe (task: grpo); this "
                         f"recipe's task is {recipe.task}")
    spec = get_task("grpo")
    out_dir = Path(out_dir)
    prepare_task_data(recipe.data, recipe.seed, out_dir / "data", spec)
    data = load_prepared(out_dir / "data")
    resolved = resolve_model(recipe.model.name, allow_pickle=recipe.model.allow_pickle)
    tokenizer = AutoTokenizer.from_pretrained(resolved.path)
    device = device_of("auto")
    model = AutoModelForCausalLM.from_pretrained(resolved.path).to(device).eval()
    rewards = Rewards(recipe.grpo.rewards, tokenizer=tokenizer)
    torch.manual_seed(recipe.seed)
    report = {"model": str(resolved.path), "num_generations": recipe.grpo.num_generations,
              "min_margin": min_margin, "splits": {}}
    scores = {}
    for split in splits:
        rows, kept_scores, stats = _pairs_for(spec, data.records[split], model, tokenizer, recipe, rewards, device,
                                              min_margin, split)
        atomic_write_text(out_dir / f"{split}.jsonl", "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
        scores[split] = kept_scores
        report["splits"][split] = stats
        say(f"{split}: {stats['pairs']} pairs from {stats['prompts']} prompts ({stats['skipped_ties']} skipped: best "
            f"and worst within {min_margin}); mean reward chosen {stats['mean_chosen_reward']:.3f}, rejected "
            f"{stats['mean_rejected_reward']:.3f}, all samples {stats['mean_sample_reward']:.3f}")
    atomic_write_json(out_dir / "rewards.json", scores)
    atomic_write_json(out_dir / "pairs_report.json", report)
    return report


def _pairs_for(spec, records, model, tokenizer, recipe, rewards, device, min_margin: float, split: str):
    from tuneforge.console import progress_bar
    from tuneforge.models.generation import generate_ids

    cfg, group = recipe.grpo, recipe.grpo.num_generations
    encoded = spec.encode(records, tokenizer, recipe, None)
    meta = encoded.meta
    rows, kept, all_rewards = [], [], []
    ties = 0
    with progress_bar(f"sampling {group} completions per {split} prompt", len(encoded), unit="prompts") as advance:
        for start in range(0, len(encoded), PROMPTS_PER_CALL):
            idx = list(range(start, min(start + PROMPTS_PER_CALL, len(encoded))))
            ids = generate_ids(model, tokenizer, [encoded.input_ids[i] for i in idx], cfg.generation,
                               num_return_sequences=group)
            texts = [tokenizer.decode(t, skip_special_tokens=True).strip() for t in ids]
            per = [i for i in idx for _ in range(group)]
            conversations = [json.loads(meta["messages"][i]) if meta["messages"][i] else None for i in per]
            total, _ = rewards([meta["prompt"][i] for i in per], texts, [meta["reference"][i] for i in per],
                               device=device, conversations=conversations)
            for k, i in enumerate(idx):
                values = total[k * group:(k + 1) * group].tolist()
                samples = texts[k * group:(k + 1) * group]
                all_rewards += values
                best = max(range(group), key=values.__getitem__)
                worst = min(range(group), key=values.__getitem__)
                if values[best] - values[worst] <= min_margin or samples[best] == samples[worst]:
                    ties += 1
                    continue
                rows.append(_row(meta["messages"][i], meta["prompt"][i], samples[best], samples[worst]))
                kept.append({"chosen": values[best], "rejected": values[worst]})
            if advance is not None:
                advance(len(idx))
    mean = (lambda xs: sum(xs) / len(xs) if xs else float("nan"))
    stats = {"prompts": len(encoded), "pairs": len(rows), "skipped_ties": ties,
             "mean_chosen_reward": mean([k["chosen"] for k in kept]),
             "mean_rejected_reward": mean([k["rejected"] for k in kept]), "mean_sample_reward": mean(all_rewards)}
    return rows, kept, stats


def _row(messages: str | None, prompt: str, chosen: str, rejected: str) -> dict:
    """TRL's preference format: conversational for chat prompts, plain strings for raw-text prompts."""
    if messages:
        return {"prompt": json.loads(messages), "chosen": [{"role": "assistant", "content": chosen}],
                "rejected": [{"role": "assistant", "content": rejected}]}
    return {"prompt": prompt, "chosen": chosen, "rejected": rejected}
