"""GRPO's reward functions (tuneforge.tasks.rewards): each type's value on hand-written completions, the
weighted total, and the messages of bad settings. Classifier and reward models are tiny random exports
saved to tmp_path; their rewards are checked against the models' logits computed directly."""

from __future__ import annotations

import json
import textwrap

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from pydantic import ValidationError  # noqa: E402

from tuneforge.errors import TuneforgeError  # noqa: E402
from tuneforge.tasks.rewards import RewardConfig, Rewards, length_reward  # noqa: E402

WORDS = ("<pad> <unk> <s> </s> system user assistant : the a cat dog sat on mat red blue big small ran jumped over "
         "under and or but so very quick lazy fox bird tree house car road sky sun moon star day night").split()
TEMPLATE = ("{% for m in messages %}{{ m['role'] }} : {{ m['content'] }} {% endfor %}"
            "{% if add_generation_prompt %}assistant :{% endif %}")


def word_tokenizer(chat_template: str | None = TEMPLATE):
    """One word, one token: token counts are exact."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    backend = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = transformers.PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", bos_token="<s>",
                                               eos_token="</s>", pad_token="<pad>")
    tok.chat_template = chat_template
    return tok


def scores(rewards, completions, prompts=None, references=None, **kwargs):
    total, parts = rewards(prompts or [""] * len(completions), completions, references, **kwargs)
    return total.tolist(), {k: v.tolist() for k, v in parts.items()}


def reward_error(settings: dict) -> tuple[tuple, str]:
    with pytest.raises(ValidationError) as err:
        RewardConfig.model_validate(settings)
    first = err.value.errors(include_url=False)[0]
    return first["loc"], first["msg"]


# ---------------------------------------------------------------------------------------- simple types


def test_final_number_compares_the_last_number_with_the_references_final_number():
    rewards = Rewards([{"type": "final_number"}])
    completions = ["so the answer is 42.", "41, no: 42", "42 or 43", "no idea", "it is 1,234"]
    references = ["6 * 7 = 42\n#### 42", "42", "#### 42", "#### 42", "#### 1234"]
    total, parts = scores(rewards, completions, references=references)
    assert parts == {"final_number": [1.0, 1.0, 0.0, 0.0, 1.0]} and total == parts["final_number"]


def test_final_number_without_a_reference_names_the_setting_and_the_prompt():
    rewards = Rewards([{"type": "final_number"}])
    with pytest.raises(TuneforgeError, match=r"^grpo\.rewards\.0 \(final_number\): prompt 1 has no reference answer "
                                             r"to compare with \(its chat must end with the assistant's answer\)$"):
        rewards(["a", "b"], ["1", "2"], ["#### 1", None])


def test_regex_rewards_a_match_anywhere():
    rewards = Rewards([{"type": "regex", "pattern": r"\bcat\b"}])
    assert scores(rewards, ["the cat sat", "cats", "a dog", "CAT"])[1] == {"regex": [1.0, 0.0, 0.0, 0.0]}


def test_length_in_characters_and_in_tokens():
    by_chars = Rewards([{"type": "length", "target": 10, "unit": "characters"}])
    assert scores(by_chars, ["a" * 10, "a" * 5, "a" * 15, "a" * 25, ""])[1]["length"] == [1.0, 0.5, 0.5, 0.0, 0.0]
    # tokens (the default unit) of the policy's tokenizer: one word is one token here
    by_tokens = Rewards([{"type": "length", "target": 4}], tokenizer=word_tokenizer())
    assert scores(by_tokens, ["the cat sat on", "the cat", "the cat sat on the mat"])[1]["length"] == [1.0, 0.5, 0.5]
    assert length_reward(3, 4) == 0.75
    with pytest.raises(TuneforgeError, match=r"grpo\.rewards\.0 \(length\): counting tokens needs the policy's "
                                             r"tokenizer"):
        Rewards([{"type": "length", "target": 4}])(["p"], ["the cat"])


def test_weighted_total_and_per_reward_values():
    rewards = Rewards([{"type": "regex", "pattern": "cat", "weight": 2.0},
                       {"type": "length", "target": 4, "unit": "characters", "weight": -0.5, "name": "short"}])
    total, parts = scores(rewards, ["cat", "dog dog"])
    assert parts == {"regex": [1.0, 0.0], "short": [0.75, 0.25]}
    assert total == pytest.approx([2.0 - 0.375, -0.125])
    assert rewards.names == ["regex", "short"]


# ---------------------------------------------------------------------------------------------- python


@pytest.fixture
def reward_module(tmp_path, monkeypatch):
    (tmp_path / "my_rewards.py").write_text(textwrap.dedent("""
        CALLS = []

        def brevity(prompts, completions, references):
            CALLS.append((list(prompts), list(completions), list(references)))
            return [1.0 / (1 + len(c)) for c in completions]

        def too_few(prompts, completions, references):
            return [0.0]

        def not_numbers(prompts, completions, references):
            return "good"

        RATE = 3
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "my_rewards"
    import sys

    sys.modules.pop("my_rewards", None)


def test_python_reward_gets_prompts_completions_references(reward_module):
    import my_rewards

    rewards = Rewards([{"type": "python", "function": "my_rewards:brevity"}])
    total, parts = scores(rewards, ["abc", ""], prompts=["p1", "p2"], references=["r1", None])
    assert parts == {"python": [0.25, 1.0]} and total == [0.25, 1.0]
    assert my_rewards.CALLS == [(["p1", "p2"], ["abc", ""], ["r1", None])]


def test_python_reward_errors_name_the_key(reward_module):
    with pytest.raises(TuneforgeError) as err:
        Rewards([{"type": "python", "function": "my_rewards:too_few"}])(["a", "b"], ["x", "y"])
    assert str(err.value) == ("grpo.rewards.0.function (my_rewards:too_few): returned 1 values for 2 completions (one "
                              "number per completion, in order)")
    with pytest.raises(TuneforgeError) as err:
        Rewards([{"type": "python", "function": "my_rewards:not_numbers"}])(["a"], ["x"])
    assert str(err.value) == ("grpo.rewards.0.function (my_rewards:not_numbers): must return one number per "
                              "completion, returned a str ('good')")
    assert reward_error({"type": "python", "function": "my_rewards:missing"}) == (
        ("function",), "module 'my_rewards' has no 'missing'")
    assert reward_error({"type": "python", "function": "my_rewards:RATE"}) == (
        ("function",), "my_rewards:RATE is not a function (it is a int)")
    assert reward_error({"type": "python", "function": "no_such_module_xyz:f"}) == (
        ("function",), "cannot import module 'no_such_module_xyz': ModuleNotFoundError: No module named "
                       "'no_such_module_xyz' (the module must be importable: on PYTHONPATH, or a .py file in the "
                       "current folder)")
    assert reward_error({"type": "python", "function": "brevity"}) == (
        ("function",), "expected 'module:function' (e.g. my_rewards:brevity), got 'brevity'")


def test_python_reward_module_in_the_current_folder_imports(tmp_path, monkeypatch):
    """The console script does not put the current folder on sys.path; a rewards file next to the recipe
    still imports."""
    import sys

    (tmp_path / "cwd_rewards_mod.py").write_text("def one(p, c, r):\n    return [1.0] * len(c)\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    try:
        rewards = Rewards([{"type": "python", "function": "cwd_rewards_mod:one"}])
        assert scores(rewards, ["a", "b"])[0] == [1.0, 1.0]
    finally:
        sys.modules.pop("cwd_rewards_mod", None)


# ------------------------------------------------------------------------------------- model rewards


@pytest.fixture(scope="module")
def classifier_dir(tmp_path_factory):
    """A tiny random BERT classifier export (labels negative/positive) with a word-level tokenizer and a
    recipe.yaml saying it was trained at model.max_length 8."""
    out = tmp_path_factory.mktemp("classifier")
    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=len(WORDS), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                     intermediate_size=64, max_position_embeddings=128, num_labels=2, pad_token_id=0,
                                     id2label={0: "negative", 1: "positive"}, label2id={"negative": 0, "positive": 1},
                                     initializer_range=0.5)
    transformers.BertForSequenceClassification(config).save_pretrained(out, safe_serialization=True)
    word_tokenizer(None).save_pretrained(out)
    (out / "recipe.yaml").write_text("name: sentiment\ntask: classification\nmodel:\n  max_length: 8\n")
    return out


def _direct_probabilities(path, texts, label: int, max_length: int) -> list[float]:
    tok = transformers.AutoTokenizer.from_pretrained(path)
    model = transformers.AutoModelForSequenceClassification.from_pretrained(path).eval()
    out = []
    with torch.no_grad():
        for text in texts:  # one at a time: no padding involved
            enc = tok(text, truncation=True, max_length=max_length, return_tensors="pt")
            out.append(torch.softmax(model(**enc).logits.float(), dim=-1)[0, label].item())
    return out


def test_classifier_reward_is_the_labels_probability(classifier_dir):
    texts = ["the big red car", "dog", "the very quick red fox jumped over the lazy dog and the cat"]
    rewards = Rewards([{"type": "classifier", "path": str(classifier_dir), "label": "positive", "batch_size": 2}])
    _, parts = scores(rewards, texts)
    expected = _direct_probabilities(classifier_dir, texts, 1, max_length=8)
    assert parts["classifier"] == pytest.approx(expected, abs=1e-5)
    # the export's max length (8, from its recipe.yaml) is respected: without the cut the long text differs
    uncut = _direct_probabilities(classifier_dir, texts[2:], 1, max_length=512)
    assert uncut[0] != pytest.approx(expected[2], abs=1e-4)
    # loaded once, then reused
    scorer = rewards._models[0]
    scores(rewards, texts[:1])
    assert rewards._models[0] is scorer


def test_classifier_settings_are_checked_at_validation(classifier_dir, tmp_path):
    assert reward_error({"type": "classifier", "path": str(classifier_dir), "label": "happy"}) == (
        ("label",), f"not a label of the classifier at {classifier_dir}; its labels: negative, positive")
    # a folder an earlier command makes (a demo recipe reads `make demo`'s export) validates; the run names it
    # before any work, like a missing data file (tuneforge.cli._require_data)
    from tuneforge.tasks.rewards import RewardConfig, missing_models

    later = RewardConfig.model_validate({"type": "classifier", "path": str(tmp_path / "nope"), "label": "positive"})
    here = RewardConfig.model_validate({"type": "classifier", "path": str(classifier_dir), "label": "positive"})
    assert missing_models([here, later]) == [("grpo.rewards.1.path", tmp_path / "nope")]
    assert reward_error({"type": "classifier", "path": str(classifier_dir)}) == (
        ("label",), "type classifier needs label (one of the classifier's label names)")
    assert reward_error({"type": "reward_model", "path": str(classifier_dir)}) == (
        ("path",), "a reward model has one output (num_labels 1); this model has 2 (negative, positive): for a "
                   "classifier's label probability use type classifier with a label")


@pytest.fixture(scope="module")
def reward_model_dirs(tmp_path_factory):
    """A tiny random Llama reward model (one output), saved with and without a chat template."""
    torch.manual_seed(1)
    config = transformers.LlamaConfig(vocab_size=len(WORDS), hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                                      num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=64,
                                      pad_token_id=0, num_labels=1, id2label={0: "reward"}, label2id={"reward": 0},
                                      initializer_range=0.5)
    model = transformers.LlamaForSequenceClassification(config)
    dirs = {}
    for name, template in (("chat", TEMPLATE), ("plain", None)):
        out = tmp_path_factory.mktemp(f"rm-{name}")
        model.save_pretrained(out, safe_serialization=True)
        word_tokenizer(template).save_pretrained(out)
        dirs[name] = out
    return dirs


def _direct_score(path, text: str) -> float:
    tok = transformers.AutoTokenizer.from_pretrained(path)
    model = transformers.AutoModelForSequenceClassification.from_pretrained(path).eval()
    with torch.no_grad():
        return model(**tok(text, add_special_tokens=False, return_tensors="pt")).logits[0, 0].item()


def test_reward_model_scores_prompt_and_completion_with_its_chat_template(reward_model_dirs):
    path = reward_model_dirs["chat"]
    rewards = Rewards([{"type": "reward_model", "path": str(path)}])
    turns = [{"role": "user", "content": "the dog sat"}]
    _, parts = scores(rewards, ["on the mat", "very quick fox"], prompts=["the dog sat", "big red car"],
                      conversations=[turns, None])
    # chat turns when given, else the prompt as one user turn; the completion is the assistant's turn
    expected = [_direct_score(path, "user : the dog sat assistant : on the mat "),
                _direct_score(path, "user : big red car assistant : very quick fox ")]
    assert parts["reward_model"] == pytest.approx(expected, abs=1e-5)


def test_reward_model_without_a_template_reads_what_reward_model_training_read(reward_model_dirs):
    """Without a chat template: the prompt, a newline, the reply and EOS, tokenised as ``task: reward_model``
    trains on them (data.preference.format_preference), so GRPO reads the score at the trained position."""
    from tuneforge.data.preference import format_preference

    path = reward_model_dirs["plain"]
    tok = transformers.AutoTokenizer.from_pretrained(path)
    model = transformers.AutoModelForSequenceClassification.from_pretrained(path).eval()
    rewards = Rewards([{"type": "reward_model", "path": str(path)}])
    _, parts = scores(rewards, ["on the mat", "sky"], prompts=["the dog sat", "the sun"])
    expected = []
    for prompt, reply in (("the dog sat", "on the mat"), ("the sun", "sky")):
        record = {"prompt": [{"role": "user", "content": prompt}],
                  "completion": [{"role": "assistant", "content": reply}], "label": True}
        ids = format_preference(record, tok, template=None, max_length=512, max_prompt_length=None).ids
        assert tok.decode(ids, skip_special_tokens=True).split() == f"{prompt} {reply}".split()
        with torch.no_grad():
            expected.append(model(input_ids=torch.tensor([ids])).logits[0, 0].item())
    assert parts["reward_model"] == pytest.approx(expected, abs=1e-5)


# ------------------------------------------------------------------------------------------ bad configs


def test_settings_must_fit_the_type():
    assert reward_error({"type": "regex"}) == (
        ("pattern",), "type regex needs pattern (a regular expression, searched for in the completion)")
    assert reward_error({"type": "regex", "pattern": "(unclosed"}) == (
        ("pattern",), "not a valid regular expression: missing ), unterminated subpattern at position 0")
    assert reward_error({"type": "length", "target": 10, "pattern": "x"}) == (
        ("pattern",), "only type regex takes pattern; this reward's type is length")
    assert reward_error({"type": "length"}) == (("target",), "type length needs target (the length that earns the "
                                                            "full reward)")
    assert reward_error({"type": "regex", "pattern": "x", "path": "/tmp"}) == (
        ("path",), "only type classifier and reward_model takes path; this reward's type is regex")
    loc, msg = reward_error({"type": "bleu"})
    assert loc == ("type",) and msg.startswith("Input should be 'final_number', 'regex', 'length', 'python'")


def test_recipe_errors_name_the_reward_key(tmp_path, tiny_llama_dir):
    from tuneforge.errors import RecipeError
    from tuneforge.config_io import load_config
    from tuneforge.recipe import Recipe

    data = tmp_path / "train.jsonl"
    data.write_text(json.dumps({"text": "the cat sat"}) + "\n")

    def problems(grpo: dict) -> str:
        base = {"name": "r", "task": "grpo", "model": {"name": str(tiny_llama_dir)}, "data": {"train_file": str(data)},
                "grpo": grpo}
        with pytest.raises(RecipeError) as err:
            load_config(Recipe, None, base=base)
        return str(err.value)

    assert problems({"rewards": [{"type": "final_number"}, {"type": "regex", "pattern": "(a"}]}) == (
        "Recipe: 1 problem:\n  - grpo.rewards.1.pattern: got '(a': not a valid regular expression: missing ), "
        "unterminated subpattern at position 0")
    assert problems({"rewards": [{"type": "regex", "pattern": "a"}, {"type": "regex", "pattern": "b"}]}) == (
        "Recipe: 1 problem:\n  - grpo.rewards: rewards 0 and 1 are both named 'regex'; give each a distinct name "
        "(grpo.rewards.N.name)")
    assert problems({"rewards": [{"type": "regex", "pattern": "a", "patern": "b"}]}).startswith(
        "Recipe: 1 problem:\n  - grpo.rewards.0.patern: unknown key (did you mean 'pattern'?); allowed keys here: "
        "batch_size, function, label, name, path, pattern, target, type, unit, weight")
