"""task grpo on a tiny random Llama with a word-level tokenizer (one word, one token): prompt encoding,
token-level generation, one GRPO step checked piece by piece (advantages, trained tokens, the reference
model, modes, stats, samples), evaluation, and short runs whose reward rises."""

from __future__ import annotations

import json
import random
import sys
import textwrap

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from tuneforge.errors import DataError  # noqa: E402

WORDS = ("<pad> <unk> <s> </s> system user assistant : the a cat dog sat on mat red blue big small ran jumped over "
         "under and or but so very quick lazy fox bird tree house car road sky sun moon star day night").split()
PAD, BOS, EOS = 0, 2, 3
TEMPLATE = ("{% for m in messages %}{{ m['role'] }} : {{ m['content'] }} {% endfor %}"
            "{% if add_generation_prompt %}assistant :{% endif %}")
NOUNS = "dog fox bird tree house car road sky sun moon star".split()
REWARDS = textwrap.dedent("""
    CALLS = []

    def cat_share(prompts, completions, references):
        CALLS.append((list(prompts), list(completions), list(references)))
        return [c.split().count("cat") / max(len(c.split()), 1) for c in completions]
""")


def word_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers

    backend = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = transformers.PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", bos_token="<s>",
                                               eos_token="</s>", pad_token="<pad>")
    tok.chat_template = TEMPLATE
    return tok


@pytest.fixture(scope="module")
def policy_dir(tmp_path_factory):
    """A 2-layer, 16-wide Llama over a 40-word vocabulary: sampled completions vary, and a reward for one
    word has signal from the first step."""
    out = tmp_path_factory.mktemp("policy")
    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=len(WORDS), hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                                      num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=128,
                                      pad_token_id=PAD, bos_token_id=BOS, eos_token_id=EOS, initializer_range=0.5)
    transformers.LlamaForCausalLM(config).save_pretrained(out, safe_serialization=True)
    word_tokenizer().save_pretrained(out)
    return out


@pytest.fixture
def toy_rewards(tmp_path, monkeypatch):
    (tmp_path / "toy_rewards.py").write_text(REWARDS)
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("toy_rewards", None)
    import toy_rewards

    yield toy_rewards
    sys.modules.pop("toy_rewards", None)


def chats(n: int, seed: int = 0, reply: str | None = "the cat") -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        turns = [{"role": "user", "content": f"the {rng.choice(NOUNS)} sat on the {rng.choice(NOUNS)}"}]
        if reply is not None:
            turns.append({"role": "assistant", "content": reply})
        rows.append({"messages": turns})
    return rows


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def make_recipe(tmp_path, model_dir, *, grpo=None, train=None, **top):
    from tuneforge.recipe import Recipe

    train_file = write_jsonl(tmp_path / "train.jsonl", chats(32, seed=0))
    dev_file = write_jsonl(tmp_path / "dev.jsonl", chats(4, seed=1))
    settings = {"rewards": [{"type": "python", "function": "toy_rewards:cat_share", "name": "cat"}],
                "num_generations": 8, "beta": 0.0, "generation": {"max_new_tokens": 6},
                "eval_generation": {"max_new_tokens": 6}, **(grpo or {})}
    settings = {k: v for k, v in settings.items() if v is not None}  # None: the key is not given
    recipe = {"name": "grpo", "seed": 0, "output_dir": str(tmp_path / "runs"), "task": "grpo", "method": "full",
              "model": {"name": str(model_dir), "max_length": 64},
              "data": {"train_file": str(train_file), "validation_file": str(dev_file),
                       "dedup": {"exact": False, "near": False}, "decontaminate": {"enabled": False}},
              "grpo": settings,
              "train": {"epochs": 1, "batch_size": 8, "learning_rate": 2e-2, "log_every_steps": 1,
                        "precision": "fp32", "warmup_ratio": 0.0, "scheduler": "constant", **(train or {})},
              "export": {"enabled": False}, **top}
    return Recipe.model_validate(recipe)


@pytest.fixture(scope="module")
def policy(policy_dir):
    return transformers.AutoModelForCausalLM.from_pretrained(policy_dir)


# ------------------------------------------------------------------------------------ generate_ids


def test_generate_ids_returns_each_prompts_new_tokens_through_the_first_eos(policy, policy_dir):
    from tuneforge.models.generation import GenerationConfig, _cut_ids, generate_ids

    tok = transformers.AutoTokenizer.from_pretrained(policy_dir)
    prompts = [tok("the cat sat on the mat")["input_ids"], tok("dog")["input_ids"], tok("a big red car")["input_ids"]]
    policy.train()
    policy.model.layers[0].eval()  # a submodule deliberately in eval mode stays so
    out = generate_ids(policy, tok, prompts, GenerationConfig(max_new_tokens=12), num_return_sequences=2)
    assert policy.training and not policy.model.layers[0].training and policy.model.layers[1].training
    policy.eval()
    assert len(out) == 6 and out[0] == out[1] and out[2] == out[3]  # greedy: a prompt's copies agree, prompt-major
    for k, prompt in enumerate(prompts):
        with torch.no_grad():
            ref = policy.generate(torch.tensor([prompt]), max_new_tokens=12, do_sample=False,
                                  pad_token_id=PAD)[0, len(prompt):].tolist()
        assert out[2 * k] == _cut_ids(ref, {EOS}, tok, [])
    assert _cut_ids([5, EOS, 7, EOS], {EOS}, tok, []) == [5, EOS]
    assert _cut_ids([8, 10, 11, 12], {EOS}, tok, ["cat dog"]) == [8, 10, 11]  # "the cat dog" completes the stop
    sampled = generate_ids(policy, tok, prompts[:1], GenerationConfig(max_new_tokens=12, do_sample=True, seed=3),
                           num_return_sequences=8)
    assert len({tuple(s) for s in sampled}) > 1
    assert all(EOS not in s[:-1] for s in sampled)


# ---------------------------------------------------------------------------------------- encoding


def test_encode_chat_text_and_pair_prompts(tmp_path, policy_dir, toy_rewards):
    from tuneforge.tasks.grpo import encode

    recipe = make_recipe(tmp_path, policy_dir)
    tok = transformers.AutoTokenizer.from_pretrained(policy_dir)
    records = [
        {"messages": [{"role": "user", "content": "the dog sat"}, {"role": "assistant", "content": "on the mat 4"}]},
        {"messages": [{"role": "system", "content": "very quick"}, {"role": "user", "content": "the fox ran"}]},
        {"text": "the big red car ran"},
        {"source": "the sun", "target": "moon"},
    ]
    enc = encode(records, tok, recipe, None)
    assert enc.label_kind == "prompt" and len(enc) == 4
    assert tok.decode(enc.input_ids[0]) == "user : the dog sat assistant :"
    assert tok.decode(enc.input_ids[1]) == "system : very quick user : the fox ran assistant :"
    assert enc.input_ids[2] == tok("the big red car ran")["input_ids"]
    assert enc.meta["prompt"] == ["the dog sat", "the fox ran", "the big red car ran", "the sun"]
    assert enc.meta["reference"] == ["on the mat 4", None, None, "moon"]
    assert json.loads(enc.meta["messages"][1]) == records[1]["messages"]
    assert enc.meta["messages"][2:] == [None, None]
    assert enc.objective.examples is enc.meta and enc.objective.rewards.names == ["cat"]


def test_prompt_data_survives_the_token_cache(tmp_path, policy_dir, toy_rewards):
    """What the rewards read (``meta``: prompt texts, references, None where there is none) travels
    through the token cache like the ids, so ``encode_cached`` can give it to the objective."""
    from tuneforge.data.prepare import encode_cached, load_prepared, prepare_task_data
    from tuneforge.tasks import spec_for
    from tuneforge.tasks.grpo import encode

    recipe = make_recipe(tmp_path, policy_dir)
    spec = spec_for(recipe)
    prepare_task_data(recipe.data, recipe.seed, tmp_path / "data", spec)
    data = load_prepared(tmp_path / "data")
    tok = transformers.AutoTokenizer.from_pretrained(policy_dir)
    direct = encode(data.records["validation"], tok, recipe, None)
    for _ in range(2):  # built, then read back from the cache
        cached = encode_cached(tok, data, "validation", recipe, spec, cache_root=tmp_path / "cache")
        assert cached.input_ids == direct.input_ids and cached.meta == direct.meta
        assert cached.label_kind == "prompt" and cached.objective is not None
    assert direct.meta["reference"] == ["the cat"] * 4 and direct.meta["messages"][0] is not None


def test_raw_text_prompts_keep_bos_but_not_a_trailing_eos(tiny_llama_dir):
    from tuneforge.tasks.grpo import _raw_prompt_ids

    tok = transformers.AutoTokenizer.from_pretrained(tiny_llama_dir)  # BERT's: [CLS] text [SEP]
    ids = _raw_prompt_ids(tok, "the movie was")
    assert ids == tok("the movie was")["input_ids"][:-1] and ids[0] == tok.cls_token_id


def test_encode_refuses_what_cannot_be_used(tmp_path, policy_dir, toy_rewards):
    from tuneforge.tasks.grpo import encode

    tok = transformers.AutoTokenizer.from_pretrained(policy_dir)
    long_prompt = {"messages": [{"role": "user", "content": " ".join(["the cat"] * 10)}], "_origin": "t.jsonl:3"}
    recipe = make_recipe(tmp_path, policy_dir, model={"name": str(policy_dir), "max_length": 16})
    with pytest.raises(DataError) as err:
        encode([chats(1)[0], long_prompt], tok, recipe, None)
    assert str(err.value) == ("1 of 2 GRPO prompts cannot be used (more than data.max_rejected_fraction); first: "
                              "t.jsonl:3: the prompt has 24 tokens, more than model.max_length 16")
    recipe = make_recipe(tmp_path, policy_dir, grpo={"rewards": [{"type": "final_number"}]})
    with pytest.raises(DataError) as err:
        encode(chats(2, reply="the cat") + chats(1, reply=None), tok, recipe, None)
    assert str(err.value) == ("grpo.rewards.0 (final_number) compares each completion's final number with the "
                              "reference answer's, but 3 of 3 prompts have no reference with a number (first: prompt "
                              "0); each chat must end with the assistant's answer")


def test_recipe_checks(tmp_path, policy_dir, toy_rewards):
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match=r"grpo\.beta: 0\.04 penalises the distance to a reference model, which "
                                              r"tuneforge takes from the model with its PEFT adapters switched off; "
                                              r"method full changes the model's own weights, and a second full copy "
                                              r"of the model is not made silently\. Set grpo\.beta: 0 "
                                              r"\(no KL penalty\) or use a PEFT method "
                                              r"\(lora, dora, ia3, prefix, prompt\)"):
        make_recipe(tmp_path, policy_dir, grpo={"beta": 0.04})
    assert make_recipe(tmp_path, policy_dir, method="lora", grpo={"beta": 0.04}).grpo.beta == 0.04
    with pytest.raises(ValidationError, match=r"grpo\.generation\.do_sample: false makes the num_generations "
                                              r"completions of a prompt identical \(greedy\)"):
        make_recipe(tmp_path, policy_dir, grpo={"generation": {"do_sample": False}})
    for rewards in ([], None):  # given empty, or not given at all
        with pytest.raises(ValidationError, match=r"grpo\.rewards: task grpo needs at least one reward, e\.g\. "
                                                  r"\[\{type: final_number\}\] \(see tuneforge\.tasks\.rewards\)"):
            make_recipe(tmp_path, policy_dir, grpo={"rewards": rewards})
    recipe = make_recipe(tmp_path, policy_dir)
    assert recipe.train.metric_for_best == "reward"
    gen = recipe.grpo.generation
    assert (gen.do_sample, gen.temperature, gen.max_new_tokens) == (True, 1.0, 6)


# ------------------------------------------------------------------------------------ one GRPO step


@pytest.fixture
def lora_policy(policy_dir):
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    base = transformers.AutoModelForCausalLM.from_pretrained(policy_dir)
    return get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                                           lora_dropout=0.0, task_type="CAUSAL_LM"))


def test_one_step_advantages_trained_tokens_reference_and_stats(tmp_path, policy_dir, lora_policy, toy_rewards,
                                                                monkeypatch):
    from tuneforge.data.batching import collate
    from tuneforge.tasks import preference_losses
    from tuneforge.tasks.grpo import encode

    recipe = make_recipe(tmp_path, policy_dir, method="lora",
                         grpo={"beta": 0.1, "num_generations": 4, "log_samples": 3})
    recipe.run_dir.mkdir(parents=True)
    tok = transformers.AutoTokenizer.from_pretrained(policy_dir)
    enc = encode(chats(3, seed=5, reply="2 cats"), tok, recipe, None)
    objective = enc.objective
    seen = {}
    real = preference_losses.grpo_token_loss

    def spy(logps, old, ref, advantages, mask, **kwargs):
        seen.update(logps=logps, old=old, ref=ref, advantages=advantages, mask=mask, kwargs=kwargs)
        seen["out"] = real(logps, old, ref, advantages, mask, **kwargs)
        return seen["out"]

    monkeypatch.setattr(preference_losses, "grpo_token_loss", spy)
    batch = collate(enc, [0, 1, 2], PAD)
    lora_policy.train()
    lora_policy.base_model.model.model.layers[1].eval()  # a submodule deliberately in eval mode stays so
    torch.manual_seed(0)
    loss, out = objective.loss_sum(lora_policy, batch)

    # the reward saw 3 prompts x 4 completions, prompt-major, with each prompt's text and reference
    [(prompts, completions, references)] = toy_rewards.CALLS
    assert prompts == [p for p in enc.meta["prompt"] for _ in range(4)] and references == ["2 cats"] * 12
    rewards = torch.tensor([c.split().count("cat") / max(len(c.split()), 1) for c in completions]).view(3, 4)
    # advantages: each reward minus its group's mean, over the group's (unbiased) std + 1e-4
    mean, std = rewards.mean(dim=1, keepdim=True), rewards.std(dim=1, keepdim=True)
    assert torch.allclose(seen["advantages"], ((rewards - mean) / (std + 1e-4)).view(-1), atol=1e-5)
    # trained tokens: exactly the completion's (through its EOS), none of the prompt or the padding
    lengths = out.per_example[:, -1].tolist()
    assert seen["mask"].sum().item() == pytest.approx(sum(lengths) * 4)
    assert torch.equal(seen["old"], seen["logps"].detach()) and seen["kwargs"] == {
        "epsilon_low": 0.2, "epsilon_high": 0.2, "beta": 0.1}
    # the reference is the model with its adapters off; at LoRA's initialisation (B = 0) it equals the policy
    assert torch.allclose(seen["ref"], seen["logps"].detach(), atol=1e-5)
    assert loss.item() == pytest.approx(seen["out"][0].sum().item() / 4)
    loss.backward()
    trained = {n for n, p in lora_policy.named_parameters() if p.grad is not None}
    assert trained and all("lora_" in n for n in trained)
    # modes are back: training, with the submodule that was in eval mode still in eval mode
    assert lora_policy.training and not lora_policy.base_model.model.model.layers[1].training
    assert lora_policy.base_model.model.model.layers[0].training

    stats = objective.pop_stats()
    assert stats["kl"] == pytest.approx(0.0, abs=1e-6) and stats["clip_fraction"] == 0.0
    assert stats["reward"] == pytest.approx(rewards.mean().item(), abs=1e-6)
    assert stats["reward_cat"] == stats["reward"] and stats["reward_std"] >= 0
    assert stats["completion_length"] == pytest.approx(sum(lengths) / 3)
    spread = rewards.max(dim=1).values - rewards.min(dim=1).values
    assert stats["zero_std_groups"] == pytest.approx((spread == 0).float().mean().item())
    assert objective.pop_stats() == {}  # popped: nothing measured since
    [line] = (recipe.run_dir / "samples.jsonl").read_text().splitlines()
    record = json.loads(line)
    assert record["step"] == 1 and len(record["samples"]) == 3
    assert [s["prompt"] for s in record["samples"]] == enc.meta["prompt"]  # one per prompt first

    # moved adapters: the reference stays the base model, and the KL penalty is measured against it
    with torch.no_grad():
        for name, p in lora_policy.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    toy_rewards.CALLS.clear()
    torch.manual_seed(1)
    objective.loss_sum(lora_policy, batch)
    assert not torch.allclose(seen["ref"], seen["logps"].detach(), atol=1e-3)
    assert objective.pop_stats()["kl"] > 0


def test_the_reference_equals_token_logps_with_adapters_disabled(tmp_path, policy_dir, lora_policy, toy_rewards,
                                                                 monkeypatch):
    from tuneforge.tasks.grpo import GRPOObjective, objective_for

    recipe = make_recipe(tmp_path, policy_dir, method="lora", grpo={"beta": 0.1})
    tok = transformers.AutoTokenizer.from_pretrained(policy_dir)
    objective: GRPOObjective = objective_for(tok, recipe)
    with torch.no_grad():
        for name, p in lora_policy.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    ids, mask, labels = objective._sequences([[8, 10, 12], [9]], [[13, 14, EOS], [15], [16, 17], [EOS]], 2, "cpu")
    assert labels.tolist() == [[-100, -100, -100, 13, 14, EOS], [-100, -100, -100, 15, -100, -100],
                               [-100, 16, 17, -100, -100, -100], [-100, EOS, -100, -100, -100, -100]]
    assert mask.tolist() == [[1] * 6, [1] * 4 + [0] * 2, [1] * 3 + [0] * 3, [1] * 2 + [0] * 4]
    from tuneforge.tasks.losses import token_logps

    lora_policy.train()
    ref = objective._reference(lora_policy, ids, mask, labels)
    base = transformers.AutoModelForCausalLM.from_pretrained(policy_dir).eval()  # the pretrained weights
    with torch.no_grad():
        expected = token_logps(base, ids, mask, labels)
    assert torch.allclose(ref, expected, atol=1e-6) and lora_policy.training and not ref.requires_grad


def test_evaluation_generates_one_greedy_completion_per_prompt(tmp_path, policy_dir, policy, toy_rewards):
    from tuneforge.data.batching import collate
    from tuneforge.tasks.grpo import encode, metrics

    recipe = make_recipe(tmp_path, policy_dir)
    tok = transformers.AutoTokenizer.from_pretrained(policy_dir)
    enc = encode(chats(3, seed=2), tok, recipe, None)
    policy.eval()
    with torch.no_grad():
        loss, out = enc.objective.loss_sum(policy, collate(enc, [0, 1, 2], PAD))
        again, _ = enc.objective.loss_sum(policy, collate(enc, [0, 1, 2], PAD))
    assert [len(c) for _, c, _ in toy_rewards.CALLS] == [3, 3]  # one completion per prompt
    assert toy_rewards.CALLS[0] == toy_rewards.CALLS[1]  # greedy: the same completions
    assert out.per_example.shape == (3, 3)  # total, cat, completion length
    assert loss.item() == pytest.approx(-out.per_example[:, 0].sum().item())
    assert enc.objective.pop_stats() == {}  # evaluation adds nothing to the training stats

    class Preds:
        outputs = list(out.per_example)

    m = metrics(Preds(), chats(3, seed=2), enc, None)
    assert m["reward"] == pytest.approx(out.per_example[:, 0].mean().item()) and m["reward_cat"] == m["reward"]
    assert m["completion_length"] == pytest.approx(out.per_example[:, 2].mean().item())
    assert [g["completion"] for g in m["generations"]] == toy_rewards.CALLS[0][1]
    assert m["samples"] == m["generations"][:5] and m["generations"][0]["prompt"] == enc.meta["prompt"][0]


# ------------------------------------------------------------------------------------------ runs


def _records(run_dir, kind):
    return [r for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines()) if r["kind"] == kind]


def test_reward_rises_in_a_short_run_and_is_logged(tmp_path, policy_dir, toy_rewards, one_thread):
    from tuneforge.train.run import train

    recipe = make_recipe(tmp_path, policy_dir, train={"max_steps": 10, "eval_every_steps": 10})
    result = train(recipe)
    steps = _records(result.run_dir, "train")
    assert len(steps) == 10
    assert {"reward", "reward_std", "reward_cat", "reward_cat_std", "completion_length", "zero_std_groups",
            "clip_fraction"} <= set(steps[0]) and "kl" not in steps[0]
    rewards = [s["reward"] for s in steps]
    # a random policy emits 'cat' in about 1 of 40 words; ten steps teach it to say little else
    assert rewards[0] < 0.1 and sum(rewards[-3:]) / 3 > sum(rewards[:3]) / 3 + 0.3, rewards
    samples = [json.loads(line) for line in (result.run_dir / "samples.jsonl").read_text().splitlines()]
    assert [s["step"] for s in samples] == list(range(1, 11)) and all(len(s["samples"]) == 2 for s in samples)
    comparison = json.loads((result.run_dir / "eval" / "base_vs_tuned.json").read_text())
    assert comparison["tuned"]["reward"] > comparison["base"]["reward"], comparison
    assert comparison["tuned"]["reward"] == result.metrics["reward"] and len(comparison["samples"]) == 4
    table = (result.run_dir / "eval" / "base_vs_tuned.md").read_text()
    assert "| reward | higher |" in table and "- tuned (reward" in table
    assert (result.run_dir / "eval" / "generations.jsonl").exists()


def test_lora_run_with_kl_penalty_logs_kl(tmp_path, policy_dir, toy_rewards, one_thread):
    from tuneforge.train.run import train

    recipe = make_recipe(tmp_path, policy_dir, method="lora", grpo={"beta": 0.1, "num_generations": 2,
                                                                   "generation": {"max_new_tokens": 3},
                                                                   "eval_generation": {"max_new_tokens": 3}},
                         train={"max_steps": 2, "eval_every_steps": 2, "learning_rate": 5e-2},
                         export={"enabled": True})
    result = train(recipe)
    steps = _records(result.run_dir, "train")
    assert len(steps) == 2 and steps[0]["kl"] == pytest.approx(0.0, abs=1e-6) and steps[1]["kl"] > 0
    assert "base" in result.metrics and (result.run_dir / "eval" / "base_vs_tuned.md").exists()
    # the merged export reproduces every validation completion's rewards and length
    assert result.verification["passed"] and result.verification["max_abs_logit_diff"] == 0.0


def test_a_missing_reward_model_stops_the_run_before_any_work(tmp_path, monkeypatch):
    """The shipped demo recipe validates on a fresh clone (its classifier comes from `make demo`), and running
    it without that export stops at once, naming the key and the recipe's own note on how to get it."""
    from typer.testing import CliRunner

    from tests.conftest import REPO
    from tuneforge.cli import app

    monkeypatch.chdir(REPO)
    recipe = REPO / "recipes" / "reviews-smollm2-grpo.yaml"
    out = tmp_path / "runs"
    result = CliRunner().invoke(app, ["run", str(recipe), f"output_dir={out}",
                                      f"grpo.rewards.0.path={tmp_path / 'no-export'}"])
    assert result.exit_code == 2
    assert f"grpo.rewards.0.path: file not found: {tmp_path / 'no-export'}" in result.output
    assert "run `make demo` first for the reward model" in result.output
    assert not out.exists()
