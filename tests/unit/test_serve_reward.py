"""`tuneforge serve` for reward models (POST /v1/score), on a tiny random 2-layer Llama reward model: scores
equal the model's own logit for the conversation as training tokenizes it, both input shapes agree, and bad
input gets its status code and exact message."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

from tests.conftest import minilm_dir

KEY = "test-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
REPO_SRC = str(__import__("pathlib").Path(__file__).resolve().parents[2] / "src")
#: A simple chat template in words the MiniLM vocabulary knows; prefix-consistent, as training needs.
TEMPLATE = ("{% for m in messages %}{{ m['role'] + ': ' + m['content'] + ' [SEP] ' }}{% endfor %}"
            "{% if add_generation_prompt %}{{ 'assistant:' }}{% endif %}")


def _tiny_llama_classifier(out, **labels):
    import torch
    from transformers import LlamaConfig, LlamaForSequenceClassification

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=30522, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=64, pad_token_id=0,
                         initializer_range=0.2, **labels)
    LlamaForSequenceClassification(config).save_pretrained(out, safe_serialization=True)
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        if (minilm_dir() / name).exists():
            shutil.copy(minilm_dir() / name, out / name)
    return out


@pytest.fixture(scope="module")
def reward_dir(tmp_path_factory):
    """A reward-model export as task reward_model writes it: one output labelled "reward"; no chat template."""
    return _tiny_llama_classifier(tmp_path_factory.mktemp("tiny-reward"), num_labels=1, id2label={0: "reward"},
                                  label2id={"reward": 0})


@pytest.fixture(scope="module")
def chat_reward_dir(reward_dir, tmp_path_factory):
    """The same model with a chat template saved with its tokenizer."""
    from transformers import AutoTokenizer

    out = tmp_path_factory.mktemp("tiny-chat-reward")
    for f in reward_dir.iterdir():
        shutil.copy(f, out / f.name)
    tok = AutoTokenizer.from_pretrained(reward_dir)
    tok.chat_template = TEMPLATE
    tok.save_pretrained(out)
    return out


def _config(model_dir, **kw):
    from tuneforge.serve.config import ServeConfig

    return ServeConfig(model_dir=model_dir, api_keys=kw.pop("api_keys", [KEY]), **kw)


@pytest.fixture(scope="module")
def client(reward_dir, one_thread):
    from fastapi.testclient import TestClient

    from tuneforge.serve.app import create_app

    with TestClient(create_app(_config(reward_dir, max_texts=8, max_batch_size=8))) as c:
        yield c


@pytest.fixture(scope="module")
def chat_client(chat_reward_dir, one_thread):
    from fastapi.testclient import TestClient

    from tuneforge.serve.app import create_app

    with TestClient(create_app(_config(chat_reward_dir))) as c:
        yield c


CONVERSATIONS = [
    ([{"role": "user", "content": "what is two plus three ?"}], "five"),
    ([{"role": "system", "content": "be brief"}, {"role": "user", "content": "name a colour"}],
     "blue , or perhaps a deep and quiet green"),
    ([{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"},
      {"role": "user", "content": "tell me a short story about a cat"}],
     "a cat sat on a warm mat all day and dreamt of fish"),
    ([{"role": "user", "content": "ok"}], "ok"),
]


def _training_ids(model_dir, prompt, reply):
    """The ids training gives this conversation as a chosen reply (tuneforge.data.preference)."""
    from transformers import AutoTokenizer

    from tuneforge.data.preference import format_preference

    tok = AutoTokenizer.from_pretrained(model_dir)
    record = {"prompt": prompt, "chosen": [{"role": "assistant", "content": reply}],
              "rejected": [{"role": "assistant", "content": reply + " not"}]}
    return format_preference(record, tok, template=tok.chat_template or None, max_length=10_000,
                             max_prompt_length=None).chosen_ids


def _direct_scores(model_dir, rows: list[list[int]]) -> list[float]:
    import torch
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(model_dir).eval()
    with torch.inference_mode():
        return [float(model(input_ids=torch.tensor([ids])).logits[0, 0]) for ids in rows]


def _score(client, items, **kw):
    r = client.post("/v1/score", json={"input": items, **kw}, headers=AUTH)
    assert r.status_code == 200, r.text
    return r.json()


# ------------------------------------------------------------------------------------------ scores


def test_a_reward_model_export_is_served_as_reward_model(reward_dir, client):
    from tuneforge.serve.loader import load_served_model

    served = load_served_model(reward_dir)
    assert (served.task, served.endpoints, served.problem_type) == ("reward_model", ["/v1/score"], "regression")
    card = client.get("/v1/models", headers=AUTH).json()["data"][0]
    assert (card["task"], card["max_input_tokens"], card.get("labels")) == ("reward_model", 64, None)
    assert client.get("/health").json() == {"status": "ok", "model": reward_dir.name, "task": "reward_model"}


@pytest.mark.parametrize("which", ["reward_dir", "chat_reward_dir"])
def test_scores_equal_the_models_logit_for_the_conversation_as_trained(which, request):
    from tuneforge.serve.loader import load_served_model
    from tuneforge.serve.score_routes import conversation_ids

    model_dir = request.getfixturevalue(which)
    c = request.getfixturevalue("client" if which == "reward_dir" else "chat_client")
    items = [{"messages": [*prompt, {"role": "assistant", "content": reply}]} for prompt, reply in CONVERSATIONS]
    body = _score(c, items)
    rows = [_training_ids(model_dir, prompt, reply) for prompt, reply in CONVERSATIONS]
    served = load_served_model(model_dir)
    assert [conversation_ids(served, prompt, {"role": "assistant", "content": reply})
            for prompt, reply in CONVERSATIONS] == rows
    if which == "chat_reward_dir":  # the conversation rendered with the template, to its last real token
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(model_dir)
        texts = [tok.apply_chat_template([*p, {"role": "assistant", "content": r}], tokenize=False).rstrip()
                 for p, r in CONVERSATIONS]
        assert texts[0] == "user: what is two plus three ? [SEP] assistant: five [SEP]"
        assert rows == [tok(t, add_special_tokens=False)["input_ids"] for t in texts]
    else:  # plain text: [CLS] prompt contents joined with newlines [SEP] (BERT's special tokens), then the reply
        assert rows[0] == [101, 2054, 2003, 2048, 4606, 2093, 1029, 102, 2274]
    assert body["object"] == "list" and body["model"] == model_dir.name
    assert [d["index"] for d in body["data"]] == list(range(len(items)))
    assert [d["score"] for d in body["data"]] == pytest.approx(_direct_scores(model_dir, rows), abs=1e-5)
    assert body["usage"] == {"prompt_tokens": sum(len(r) for r in rows)}
    assert len({round(d["score"], 4) for d in body["data"]}) == len(items)  # a real model, not a constant


def test_both_input_shapes_score_the_same_conversation_the_same(chat_client):
    prompt, reply = CONVERSATIONS[1]
    shapes = [{"messages": [*prompt, {"role": "assistant", "content": reply}]},
              {"prompt": prompt, "completion": reply}]
    scores = [d["score"] for d in _score(chat_client, shapes)["data"]]
    alone = [_score(chat_client, s)["data"][0]["score"] for s in shapes]  # a single input, without the list
    assert scores[0] == pytest.approx(scores[1], abs=1e-6) and alone == pytest.approx(scores, abs=1e-6)
    user_only = [{"messages": [{"role": "user", "content": "hi there"}, {"role": "assistant", "content": "hello"}]},
                 {"prompt": "hi there", "completion": "hello"},
                 {"prompt": [{"role": "user", "content": "hi there"}], "completion": "hello"}]
    scores = [d["score"] for d in _score(chat_client, user_only)["data"]]
    assert scores == pytest.approx([scores[0]] * 3, abs=1e-6)


# ------------------------------------------------------------------------------------------ bad input


def test_a_conversation_longer_than_the_context_is_422(client):
    long = {"prompt": "word " * 80, "completion": "fine"}  # [CLS] 80 x word [SEP] fine: 83 tokens; 64 positions
    r = client.post("/v1/score", json={"input": [{"prompt": "hi", "completion": "yo"}, long]}, headers=AUTH)
    assert r.status_code == 422
    assert r.json()["error"] == {
        "message": "input[1] is 83 tokens long; the model reads at most 64 (a conversation is scored whole, never "
                   "cut: shorten the prompt or the reply)",
        "type": "invalid_request_error", "param": "input[1]", "code": "input_too_long"}


@pytest.mark.parametrize("headers, message, code", [
    ({}, "missing API key: send 'Authorization: Bearer <key>' (or 'X-API-Key: <key>')", "missing_api_key"),
    ({"Authorization": "Bearer wrong"}, "invalid API key", "invalid_api_key"),
])
def test_missing_or_wrong_api_key_is_401(client, headers, message, code):
    r = client.post("/v1/score", json={"input": {"prompt": "hi", "completion": "yo"}}, headers=headers)
    assert r.status_code == 401
    assert r.json() == {"error": {"message": message, "type": "authentication_error", "param": None, "code": code}}
    assert r.headers["www-authenticate"] == "Bearer"


def test_other_tasks_endpoints_are_404_naming_this_servers(client, tmp_path, one_thread):
    from fastapi.testclient import TestClient

    from tuneforge.serve.app import create_app
    from tuneforge.serve.loader import load_served_model

    r = client.post("/v1/classify", json={"texts": ["hi"]}, headers=AUTH)
    assert r.status_code == 404
    assert r.json()["error"]["message"] == ("/v1/classify is not served: the model is a reward model (this server "
                                            "has /v1/score)")
    # a one-output classifier with another label name is a regression model: /v1/classify, no /v1/score
    regression = _tiny_llama_classifier(tmp_path / "regression", num_labels=1)
    served = load_served_model(regression)
    assert (served.task, served.problem_type) == ("classification", "regression")
    with TestClient(create_app(_config(regression), served)) as c:
        r = c.post("/v1/score", json={"input": {"prompt": "hi", "completion": "yo"}}, headers=AUTH)
        assert r.status_code == 404
        assert r.json()["error"]["message"] == ("/v1/score is not served: the model is a classification model (this "
                                                "server has /v1/classify)")
        assert "value" in c.post("/v1/classify", json={"texts": ["hi"]}, headers=AUTH).json()["results"][0]


@pytest.mark.parametrize("body, message, param", [
    ({"input": []}, "input: List should have at least 1 item after validation, not 0", "input"),
    ({"input": "hi"}, 'input: input must be an object ({"messages": [...]} or {"prompt": ..., "completion": ...}) '
                      "or a list of them", "input"),
    ({"input": [{"prompt": "hi"}]}, "input[0]: an input needs messages (a conversation ending with the assistant's "
                                    "reply), or prompt and completion", "input[0]"),
    ({"input": [{"messages": [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]}]},
     "input[0]: the last message must be the assistant reply being scored (role 'assistant'), not 'user'", "input[0]"),
    ({"input": {"messages": [{"role": "assistant", "content": "a"}]}},
     "input[0].messages: List should have at least 2 items after validation, not 1", "input[0].messages"),
    ({"input": {"prompt": [{"role": "user", "content": 3}], "completion": "a"}},
     "input[0].prompt[0].content: Input should be a valid string", "input[0].prompt[0].content"),
    ({"input": {"prompt": "a", "completion": "b", "text": "c"}}, "input[0].text: Extra inputs are not permitted",
     "input[0].text"),
    ({"input": {"prompt": "a", "completion": "b", "messages": [{"role": "user", "content": "a"},
                                                                 {"role": "assistant", "content": "b"}]}},
     "input[0]: send either messages, or prompt and completion, not both", "input[0]"),
])
def test_wrong_fields_are_422_naming_the_field(client, body, message, param):
    r = client.post("/v1/score", json=body, headers=AUTH)
    assert r.status_code == 422
    assert r.json()["error"] == {"message": message, "type": "invalid_request_error", "param": param, "code": None}


def test_too_many_inputs_unknown_model_and_metrics(client):
    r = client.post("/v1/score", json={"input": [{"prompt": "a", "completion": "b"}] * 9}, headers=AUTH)
    assert (r.status_code, r.json()["error"]["message"]) == (422, "input has 9 items; this server takes at most 8 per "
                                                                  "request (--max-texts): split them over several "
                                                                  "requests")
    r = client.post("/v1/score", json={"input": {"prompt": "a", "completion": "b"}, "model": "gpt-4"}, headers=AUTH)
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"
    _score(client, [{"prompt": "a", "completion": "b"}] * 3)
    text = client.get("/metrics").text
    assert 'tuneforge_requests_total{endpoint="/v1/score",status="200"}' in text
    assert 'tuneforge_requests_total{endpoint="/v1/score",status="422"}' in text
    assert 'tuneforge_inputs_total{endpoint="/v1/score"}' in text and "tuneforge_batch_size_count" in text


def test_a_model_without_a_pad_token_scores_its_inputs_one_at_a_time(reward_dir, one_thread):
    from tuneforge.serve.loader import load_served_model
    from tuneforge.serve.score_routes import score_batch

    served = load_served_model(reward_dir)
    rows = [[101, 2054, 102, 2274], [101, 2054, 2003, 2048, 102, 2274, 2274]]
    padded = score_batch(served, rows)
    served.model.config.pad_token_id = None  # transformers refuses padded batches without it
    assert score_batch(served, rows) == pytest.approx(padded, abs=1e-5)
    assert padded == pytest.approx(_direct_scores(reward_dir, rows), abs=1e-5)


def test_predict_refuses_reward_models_with_a_pointer_to_the_server(reward_dir, tmp_path):
    from typer.testing import CliRunner

    from tuneforge.cli import app

    src = tmp_path / "in.jsonl"
    src.write_text('{"text": "hello"}\n', encoding="utf-8")
    r = CliRunner().invoke(app, ["predict", str(reward_dir), str(src), "-o", str(tmp_path / "out.jsonl")])
    assert r.exit_code != 0
    assert "is a reward model" in r.output and "/v1/score" in r.output


def test_serving_a_reward_model_never_imports_training_code(reward_dir):
    code = (
        "import sys\n"
        "from tuneforge.serve.app import create_app\n"
        "from tuneforge.serve.config import ServeConfig\n"
        f"app = create_app(ServeConfig(model_dir={str(reward_dir)!r}, api_keys=['k']))\n"
        "from fastapi.testclient import TestClient\n"
        "r = TestClient(app).post('/v1/score', json={'input': {'prompt': 'a', 'completion': 'b'}}, "
        "headers={'X-API-Key': 'k'})\n"
        "assert r.status_code == 200, r.text\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[:2] in (['tuneforge', 'train'], ['tuneforge', 'tune'], "
        "['tuneforge', 'recipe'], ['tuneforge', 'data'], ['tuneforge', 'tasks']) or m == 'peft')\n"
        "print(bad)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         env={"PYTHONPATH": REPO_SRC, "HF_HUB_OFFLINE": "1", "PATH": os.defpath})
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "[]"


@pytest.mark.slow
def test_schemathesis_finds_no_server_error_in_the_score_spec(reward_dir, tmp_path):
    from tests.serve_util import live_server
    from tuneforge.serve.app import create_app

    # the default body limit: schemathesis's nested invalid messages can pass 20 kB, and a 413 is not what it
    # expects for a schema-violating body
    app = create_app(_config(reward_dir))
    # as in test_serve.py: a schema-valid input can still be refused (longer than the context, a conversation
    # whose last message is not the reply), which no JSON schema expresses
    skip = ["--exclude-checks", "positive_data_acceptance"]
    with live_server(app) as url:
        out = subprocess.run(
            [str(__import__("pathlib").Path(sys.executable).parent / "schemathesis"), "run", f"{url}/openapi.json",
             "-H", f"Authorization: Bearer {KEY}", "--checks", "all", *skip, "--max-examples", "25", "--seed", "7",
             "--max-time", "30", "--report-dir", str(tmp_path)],
            capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout.split("FAILURES")[-1][:8000]
    assert " passed" in out.stdout and "failed" not in out.stdout.split("SUMMARY")[-1]
