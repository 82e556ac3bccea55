"""Loss values pinned on tiny models (torchtune's habit): a refactor that changes the numbers fails here.

Two recipes through ``train()`` in fp32 on one thread, each a few optimizer steps: the tiny BERT
classifier (full fine-tuning) and a tiny Llama instruction-tuned with LoRA (packed rows, the chunked
loss at the answer positions). The training losses of every step and the final validation loss are
compared with the values the pre-refactor tree produced (tuneforge d668681, this same test), to 1e-5
relative: differences in the last bits between machines (BLAS kernels) are far below that, a changed
order of operations, seed use, data order or loss normalisation is far above it.
"""

from __future__ import annotations

import json
import random

import pytest

#: (per-step training losses, final validation loss), recorded at d668681 with this test's PIN=1
PINNED = {
    "classifier": ([0.6929786801338196, 0.6742098927497864, 0.7092574834823608, 0.7111069560050964,
                    0.7585117220878601, 0.6829734444618225], 0.697755495707194),
    "causal_lm_lora": ([11.282546997070312, 10.822754859924316, 10.608745574951172, 10.31295108795166,
                        10.04034423828125], 9.770056984641336),
}


def _losses(result) -> tuple[list[float], float]:
    records = [json.loads(line) for line in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in records if r.get("kind") == "train"], result.metrics["loss"]


def _check(name: str, got: tuple[list[float], float]) -> None:
    import os

    if os.environ.get("PIN") == "1" or PINNED[name] is None:
        print(f"PINNED {name} = {json.dumps(got)}")
        if PINNED[name] is None:
            pytest.fail(f"no pinned values for {name} yet: {json.dumps(got)}")
    steps, final = PINNED[name]
    assert got[0] == pytest.approx(steps, rel=1e-5)
    assert got[1] == pytest.approx(final, rel=1e-5)


def test_pinned_classifier_losses(make_recipe, one_thread):
    from tuneforge.train.run import train

    result = train(make_recipe("train.max_steps=6", "train.eval_every_steps=3"))
    _check("classifier", _losses(result))


def test_pinned_causal_lm_lora_losses(make_recipe, tiny_llama_dir, tmp_path, one_thread):
    from tuneforge.config_io import apply_overrides
    from tuneforge.recipe import Recipe, resolved_dict
    from tuneforge.train.run import train

    rng = random.Random(0)
    rows = [{"instruction": f"add {a} and {b}", "input": "", "output": f"the answer is {a + b}"}
            for a, b in ((rng.randint(1, 9), rng.randint(1, 9)) for _ in range(40))]
    (tmp_path / "train.json").write_text(json.dumps(rows[:32]), encoding="utf-8")
    (tmp_path / "dev.json").write_text(json.dumps(rows[32:]), encoding="utf-8")
    d = resolved_dict(make_recipe())
    d.pop("classification")
    d.update(task="causal_lm", method="lora", model={"name": str(tiny_llama_dir), "max_length": 64})
    d.pop("freeze", None)
    d["train"].update(metric_for_best=None, max_steps=5, eval_every_steps=5, batch_size=4, learning_rate=3e-3)
    d["data"] = {"train_file": str(tmp_path / "train.json"), "validation_file": str(tmp_path / "dev.json"),
                 "format": "alpaca", "formatting": {"template": "chatml", "packing": True},
                 "dedup": {"exact": False, "near": False}, "decontaminate": {"enabled": False}}
    d["causal_lm"] = {"compare_with_base": False}
    result = train(Recipe.model_validate(apply_overrides(d, [])))
    _check("causal_lm_lora", _losses(result))
