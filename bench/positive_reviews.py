"""The positive-review demo's evidence: base vs DPO vs GRPO SmolLM2-135M-Instruct on prompts never trained on.

For each model (the base, and the exports of recipes/reviews-smollm2-dpo.yaml and
recipes/reviews-smollm2-grpo.yaml):

* **reward**: greedy completions (40 new tokens, as in training) of the 200 test prompts in
  data/reviews/prompts_test.jsonl (openings of SST-2 dev reviews; the training prompts come from
  the SST-2 training slice), scored by the SST-2 classifier that `make demo` exports: the mean
  probability of "positive", and the share of completions above 0.5;
* **perplexity** on the 200 held-out SST-2 dev sentences of data/reviews/reviews.txt, as plain text:
  a model that hacked the reward (collapsed onto a few gushing phrases) loses its language model,
  and that shows here as a jump;
* **samples**: the completions of the first prompts, side by side.

Run after the demo (docs/alignment.md):

    python bench/positive_reviews.py --write-docs
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROMPTS = ROOT / "data" / "reviews" / "prompts_test.jsonl"
REVIEWS = ROOT / "data" / "reviews" / "reviews.txt"
CLASSIFIER = ROOT / "runs" / "sst2-minilm-lora" / "export"
MODELS = {"base": "smollm2-135m", "DPO": str(ROOT / "runs" / "reviews-smollm2-dpo" / "export"),
          "GRPO": str(ROOT / "runs" / "reviews-smollm2-grpo" / "export")}
SAMPLES = 4


def load(name: str):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tuneforge.models.resolve import resolve_model

    path = resolve_model(name).path if not Path(name).exists() else Path(name)
    return AutoModelForCausalLM.from_pretrained(path).eval(), AutoTokenizer.from_pretrained(path)


def completions(model, tokenizer, prompts: list[list[dict]], max_new_tokens: int) -> list[str]:
    from tuneforge.models.generation import GenerationConfig, generate_from_messages

    cfg = GenerationConfig(max_new_tokens=max_new_tokens, batch_size=32)
    return generate_from_messages(model, tokenizer, prompts, cfg, progress="generating test completions")


def perplexity(model, tokenizer, texts: list[str]) -> float:
    """exp(mean negative log-likelihood per predicted token) over ``texts``, one at a time."""
    import torch

    total, count = 0.0, 0
    with torch.no_grad():
        for text in texts:
            ids = tokenizer(text, return_tensors="pt")["input_ids"]
            if ids.size(1) < 2:
                continue
            logits = model(input_ids=ids).logits[0, :-1].float()
            nll = torch.nn.functional.cross_entropy(logits, ids[0, 1:], reduction="sum")
            total, count = total + float(nll), count + ids.size(1) - 1
    return math.exp(total / count)


def evaluate(models: dict[str, str], max_new_tokens: int) -> dict:
    import torch

    from tuneforge.tasks.rewards import Rewards

    torch.set_num_threads(torch.get_num_threads())
    prompts = [json.loads(line)["messages"] for line in PROMPTS.read_text().splitlines()]
    reviews = [line for line in REVIEWS.read_text().splitlines() if line.strip()]
    reward = Rewards([{"type": "classifier", "path": str(CLASSIFIER), "label": "positive"}])
    out = {}
    for label, name in models.items():
        model, tokenizer = load(name)
        texts = completions(model, tokenizer, prompts, max_new_tokens)
        scores, _ = reward([p[-1]["content"] for p in prompts], texts)
        out[label] = {"model": name, "mean_positive": float(scores.mean()),
                      "positive_share": float((scores > 0.5).float().mean()),
                      "perplexity": perplexity(model, tokenizer, reviews),
                      "mean_words": sum(len(t.split()) for t in texts) / len(texts),
                      "samples": [{"prompt": prompts[i][-1]["content"], "completion": texts[i],
                                   "positive": float(scores[i])} for i in range(SAMPLES)]}
        print(f"{label}: mean P(positive) {out[label]['mean_positive']:.3f}, share > 0.5 "
              f"{out[label]['positive_share']:.3f}, perplexity {out[label]['perplexity']:.2f}", flush=True)
    return out


def render(report: dict) -> list[str]:
    res = report["results"]
    lines = ["| model | mean P(positive), 200 test prompts | share > 0.5 | perplexity, 200 held-out reviews | "
             "words per completion |", "|---|---:|---:|---:|---:|"]
    for label, r in res.items():
        lines.append(f"| {label} | {r['mean_positive']:.3f} | {r['positive_share']:.3f} | {r['perplexity']:.2f} | "
                     f"{r['mean_words']:.1f} |")
    lines += ["", "Samples (greedy; P(positive) by the classifier):", ""]
    first = next(iter(res.values()))
    for i, sample in enumerate(first["samples"]):
        lines.append(f"- *{sample['prompt']}*")
        for label, r in res.items():
            s = r["samples"][i]
            text = s["completion"].replace("\n", " ").strip()
            lines.append(f"  - **{label}** ({s['positive']:.2f}): {text}")
    return lines


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--max-new-tokens", type=int, default=40)
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    p.add_argument("--write-docs", action="store_true", help="write the table into docs/alignment.md and "
                   "docs/bench/positive_reviews.json")
    args = p.parse_args(argv)
    missing = [str(CLASSIFIER)] if not CLASSIFIER.exists() else []
    missing += [MODELS[m] for m in args.models if m != "base" and not Path(MODELS[m]).exists()]
    if missing:
        raise SystemExit(f"not found: {', '.join(missing)}; run the demo first (docs/alignment.md)")
    import os

    from tuneforge.models.precision import cpu_has_native_bf16
    from tuneforge.train.manifest import cpu_model

    machine = f"{cpu_model()}, {os.cpu_count()} cores, native bf16: {cpu_has_native_bf16()}"
    report = {"date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "machine": machine,
              "max_new_tokens": args.max_new_tokens,
              "results": evaluate({m: MODELS[m] for m in args.models}, args.max_new_tokens)}
    lines = render(report)
    print("\n".join(lines))
    if args.write_docs:
        sys.path.insert(0, str(Path(__file__).parent))
        from _docs import ROOT as DOCS_ROOT, portable, replace_section

        replace_section(DOCS_ROOT / "docs" / "alignment.md", "positive_reviews", [
            f"Command: `python bench/positive_reviews.py --write-docs` ({report['date']}; {report['machine']})", "",
            *lines], title="# Preference alignment")
        out = DOCS_ROOT / "docs" / "bench" / "positive_reviews.json"
        out.write_text(portable(json.dumps(report, indent=2)) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
