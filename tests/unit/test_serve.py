"""`tuneforge serve` for encoder models (/v1/classify, /v1/tokens) and `tuneforge predict`, on tiny random
BERTs: answers match the model run directly, concurrent requests share batches, and every bad input gets its
status code and exact message, never a stack trace."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time

import pytest

from tests.conftest import minilm_dir
from tests.serve_util import free_port, live_server

KEY = "test-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
REPO_SRC = str(__import__("pathlib").Path(__file__).resolve().parents[2] / "src")


def _save(model, out):
    model.save_pretrained(out, safe_serialization=True)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(minilm_dir() / name, out / name)
    return out


def _bert_config(**labels):
    from transformers import BertConfig

    return BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                      intermediate_size=64, max_position_embeddings=64, **labels)


@pytest.fixture(scope="module")
def classifier_dir(tmp_path_factory):
    import torch
    from transformers import BertForSequenceClassification

    torch.manual_seed(0)
    names = ["negative", "neutral", "positive"]
    cfg = _bert_config(id2label=dict(enumerate(names)), label2id={n: i for i, n in enumerate(names)})
    return _save(BertForSequenceClassification(cfg), tmp_path_factory.mktemp("tiny-classifier"))


@pytest.fixture(scope="module")
def tagger_dir(tmp_path_factory):
    import torch
    from transformers import BertForTokenClassification

    torch.manual_seed(0)
    names = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]
    cfg = _bert_config(id2label=dict(enumerate(names)), label2id={n: i for i, n in enumerate(names)})
    return _save(BertForTokenClassification(cfg), tmp_path_factory.mktemp("tiny-tagger"))


def _config(model_dir, **kw):
    from tuneforge.serve.config import ServeConfig

    return ServeConfig(model_dir=model_dir, api_keys=kw.pop("api_keys", [KEY]), **kw)


@pytest.fixture(scope="module")
def served(classifier_dir, one_thread):
    from tuneforge.serve.loader import load_served_model

    return load_served_model(classifier_dir)


@pytest.fixture(scope="module")
def client(classifier_dir, served):
    from fastapi.testclient import TestClient

    from tuneforge.serve.app import create_app

    with TestClient(create_app(_config(classifier_dir, max_body_bytes=4096, max_texts=8), served)) as c:
        yield c


def _direct_probs(model_dir, texts):
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model = AutoModelForSequenceClassification.from_pretrained(model_dir).eval()
    tok = AutoTokenizer.from_pretrained(model_dir)
    with torch.inference_mode():
        return [torch.softmax(model(**tok(t, return_tensors="pt")).logits[0], -1).tolist() for t in texts]


TEXTS = ["a great and moving film", "dull", "the plot is a mess but the acting is wonderful , really", "ok"]


def test_classify_matches_the_model_run_directly(client, classifier_dir):
    r = client.post("/v1/classify", json={"texts": TEXTS}, headers=AUTH)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model"] == classifier_dir.name and len(body["results"]) == len(TEXTS)
    for result, probs in zip(body["results"], _direct_probs(classifier_dir, TEXTS)):
        names = ["negative", "neutral", "positive"]
        assert list(result["scores"]) == names
        assert result["scores"] == pytest.approx(dict(zip(names, probs)), abs=1e-5)
        assert result["label"] == names[max(range(3), key=probs.__getitem__)]
        assert result["score"] == pytest.approx(max(probs), abs=1e-5)
    assert body["usage"]["input_tokens"] > len(TEXTS)


def test_concurrent_requests_share_batches_and_get_their_own_answers(classifier_dir, served):
    import httpx

    from tuneforge.serve.app import create_app

    texts = [f"sentence number {i} " + "word " * (i % 7) for i in range(24)]
    alone = {t: p for t, p in zip(texts, _direct_probs(classifier_dir, texts))}
    app = create_app(_config(classifier_dir, max_wait_ms=50, max_batch_size=16), served)
    answers, errors = {}, []
    with live_server(app) as url:
        def ask(text):
            try:
                r = httpx.post(f"{url}/v1/classify", json={"texts": [text]}, headers=AUTH, timeout=30)
                answers[text] = r.json()["results"][0]["scores"]
            except Exception as exc:  # noqa: BLE001
                errors.append(exc)

        threads = [threading.Thread(target=ask, args=(t,)) for t in texts]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        metrics = httpx.get(f"{url}/metrics").text
    assert not errors
    for text in texts:
        assert list(answers[text].values()) == pytest.approx(alone[text], abs=1e-5)
    batches = float(next(line.split()[1] for line in metrics.splitlines()
                         if line.startswith("tuneforge_batch_size_count")))
    inputs = float(next(line.split()[1] for line in metrics.splitlines()
                        if line.startswith("tuneforge_batch_size_sum")))
    assert inputs == 24 and batches < 24  # at least two requests shared a model call


def test_length_groups_keep_padding_low_and_cover_every_input():
    from tuneforge.serve.inference import MAX_PADDING, length_groups

    lengths = [5, 50, 6, 7, 8, 30, 31, 9, 10, 11, 12, 13, 14, 40, 52, 51, 49, 48]
    groups = length_groups(lengths)
    assert sorted(i for g in groups for i in g) == list(range(len(lengths)))
    first = groups[0]
    assert len(first) * max(lengths[i] for i in first) <= (1 + MAX_PADDING) * sum(lengths[i] for i in first)
    assert len(groups) > 1


# ------------------------------------------------------------------------------------------ bad input


@pytest.mark.parametrize("headers, message, code", [
    ({}, "missing API key: send 'Authorization: Bearer <key>' (or 'X-API-Key: <key>')", "missing_api_key"),
    ({"Authorization": "Bearer wrong"}, "invalid API key", "invalid_api_key"),
    ({"X-API-Key": "wrong"}, "invalid API key", "invalid_api_key"),
    ({"Authorization": f"Basic {KEY}"}, "missing API key: send 'Authorization: Bearer <key>' (or 'X-API-Key: "
                                        "<key>')", "missing_api_key"),
])
def test_missing_or_wrong_api_key_is_401(client, headers, message, code):
    for method, path in (("post", "/v1/classify"), ("get", "/v1/models")):
        r = getattr(client, method)(path, json={"texts": ["hi"]}, headers=headers) if method == "post" else \
            client.get(path, headers=headers)
        assert r.status_code == 401
        assert r.json() == {"error": {"message": message, "type": "authentication_error", "param": None,
                                      "code": code}}
        assert r.headers["www-authenticate"] == "Bearer"


def test_x_api_key_header_and_environment_keys_are_accepted(classifier_dir, served, monkeypatch):
    from fastapi.testclient import TestClient

    from tuneforge.serve.app import create_app

    monkeypatch.setenv("TUNEFORGE_API_KEY", "env-one, env-two")
    with TestClient(create_app(_config(classifier_dir, api_keys=[]), served)) as c:
        assert c.post("/v1/classify", json={"texts": ["hi"]}, headers={"X-API-Key": "env-two"}).status_code == 200
        assert c.post("/v1/classify", json={"texts": ["hi"]}, headers=AUTH).status_code == 401


def test_a_server_without_keys_refuses_to_start_unless_told(classifier_dir, served, monkeypatch):
    from fastapi.testclient import TestClient

    from tuneforge.errors import TuneforgeError
    from tuneforge.serve.app import create_app

    monkeypatch.delenv("TUNEFORGE_API_KEY", raising=False)
    with pytest.raises(TuneforgeError) as err:
        create_app(_config(classifier_dir, api_keys=[]), served)
    assert str(err.value) == ("no API key: pass --api-key KEY or set $TUNEFORGE_API_KEY (--no-auth serves without "
                              "keys, to anyone who can reach the port)")
    with TestClient(create_app(_config(classifier_dir, api_keys=[], no_auth=True), served)) as c:
        assert c.post("/v1/classify", json={"texts": ["hi"]}).status_code == 200


def test_oversized_body_is_413_with_or_without_content_length(client, classifier_dir, served):
    import httpx

    from tuneforge.serve.app import create_app

    big = {"texts": ["word " * 1000]}
    r = client.post("/v1/classify", json=big, headers=AUTH)
    assert r.status_code == 413
    assert r.json()["error"] == {"message": f"the request body is {r.request.headers['content-length']} bytes; the "
                                            "limit is 4096 bytes (the server's --max-body-bytes): send fewer or "
                                            "shorter inputs", "type": "request_too_large", "param": None,
                                 "code": "body_too_large"}
    assert int(r.request.headers["content-length"]) > 4096
    # chunked upload, no Content-Length: counted as it arrives
    with live_server(create_app(_config(classifier_dir, max_body_bytes=4096), served)) as url:
        def chunks():
            yield b'{"texts": ["'
            for _ in range(100):
                yield b"word " * 20
            yield b'"]}'
        r = httpx.post(f"{url}/v1/classify", content=chunks(), headers={**AUTH, "content-type": "application/json"})
    assert r.status_code == 413
    assert r.json()["error"]["message"] == ("the request body is over 4096 bytes; the limit is 4096 bytes (the "
                                            "server's --max-body-bytes): send fewer or shorter inputs")


@pytest.mark.parametrize("body, message, param", [
    ({"texts": []}, "texts: List should have at least 1 item after validation, not 0", "texts"),
    ({"texts": "one sentence"}, "texts: Input should be a valid list", "texts"),
    ({"texts": ["fine", 3]}, "texts[1]: Input should be a valid string", "texts[1]"),
    ({"texts": ["fine"], "truncate": "maybe"}, "truncate: Input should be a valid boolean", "truncate"),
    ({"texts": ["fine"], "truncate": 1}, "truncate: Input should be a valid boolean", "truncate"),
    ({"text": ["typo"]}, "texts: Field required; text: Extra inputs are not permitted", "texts"),
    ({}, "texts: Field required", "texts"),
])
def test_wrong_fields_are_422_naming_the_field(client, body, message, param):
    r = client.post("/v1/classify", json=body, headers=AUTH)
    assert r.status_code == 422
    assert r.json()["error"] == {"message": message, "type": "invalid_request_error", "param": param, "code": None}


def test_unparsable_bodies_get_a_clear_message(client):
    r = client.post("/v1/classify", content=b'{"texts": [', headers={**AUTH, "content-type": "application/json"})
    assert r.status_code == 422
    assert r.json()["error"]["message"].startswith("the body is not valid JSON (")
    r = client.post("/v1/classify", content=b"\xff\xfe", headers={**AUTH, "content-type": "application/json"})
    assert r.status_code in (400, 422) and "Traceback" not in r.text


def test_input_longer_than_the_context_is_422_unless_truncated(client):
    long_text = "word " * 100  # 102 tokens; the tiny model has 64 positions
    r = client.post("/v1/classify", json={"texts": ["short", long_text]}, headers=AUTH)
    assert r.status_code == 422
    assert r.json()["error"] == {
        "message": 'texts[1] is 102 tokens long; the model reads at most 64 (send "truncate": true to cut it to fit)',
        "type": "invalid_request_error", "param": "texts[1]", "code": "input_too_long"}
    r = client.post("/v1/classify", json={"texts": ["short", long_text], "truncate": True}, headers=AUTH)
    assert r.status_code == 200 and len(r.json()["results"]) == 2
    assert r.json()["usage"]["input_tokens"] == 3 + 64


def test_too_many_texts_unknown_model_and_other_tasks_endpoints(client):
    r = client.post("/v1/classify", json={"texts": ["a"] * 9}, headers=AUTH)
    assert (r.status_code, r.json()["error"]["message"]) == (422, "texts has 9 items; this server takes at most 8 "
                                                                  "per request (--max-texts): split them over several "
                                                                  "requests")
    r = client.post("/v1/classify", json={"texts": ["a"], "model": "gpt-4"}, headers=AUTH)
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"
    assert r.json()["error"]["message"].startswith("model 'gpt-4' is not served here; this server serves ")
    r = client.post("/v1/chat/completions", json={}, headers=AUTH)
    assert r.status_code == 404
    assert r.json()["error"]["message"] == ("/v1/chat/completions is not served: the model is a classification "
                                            "model (this server has /v1/classify)")


def test_an_internal_error_is_a_plain_500_without_details(classifier_dir, served, monkeypatch, caplog):
    from fastapi.testclient import TestClient

    from tuneforge.serve import inference
    from tuneforge.serve.app import create_app

    def broken(*args, **kwargs):
        raise RuntimeError("secret internal detail " + str(__import__('pathlib').Path.home() / 'model'))

    monkeypatch.setattr(inference, "_forward", broken)
    with TestClient(create_app(_config(classifier_dir), served), raise_server_exceptions=False) as c:
        r = c.post("/v1/classify", json={"texts": ["hi"]}, headers=AUTH)
    assert r.status_code == 500
    assert r.json() == {"error": {"message": "internal server error; the server log has the details",
                                  "type": "server_error", "param": None, "code": None}}
    assert "secret" not in r.text and "Traceback" not in r.text
    assert "secret internal detail" in caplog.text  # the log keeps it for the operator


def test_a_slow_request_times_out_with_504(classifier_dir, served, monkeypatch):
    from fastapi.testclient import TestClient

    from tuneforge.serve import inference
    from tuneforge.serve.app import create_app

    real = inference._forward
    monkeypatch.setattr(inference, "_forward", lambda *a: (time.sleep(0.6), real(*a))[1])
    with TestClient(create_app(_config(classifier_dir, request_timeout_s=0.2), served)) as c:
        r = c.post("/v1/classify", json={"texts": ["hi"]}, headers=AUTH)
        assert r.status_code == 504
        assert r.json()["error"]["message"] == ("the request did not finish within 0.2 s (the server's "
                                                "--request-timeout); retry, or send fewer or shorter inputs")
        monkeypatch.setattr(inference, "_forward", real)
        time.sleep(0.6)
        assert c.post("/v1/classify", json={"texts": ["hi"]}, headers=AUTH).status_code == 200


# ------------------------------------------------------------------------------------------ other endpoints


def test_models_health_and_prometheus_metrics(client, classifier_dir):
    r = client.get("/v1/models", headers=AUTH).json()
    assert r["object"] == "list"
    assert r["data"][0] | {"created": 0} == {"id": classifier_dir.name, "object": "model", "created": 0,
                                              "owned_by": "tuneforge", "task": "classification",
                                              "labels": ["negative", "neutral", "positive"], "max_input_tokens": 64}
    assert client.get("/health").json() == {"status": "ok", "model": classifier_dir.name, "task": "classification"}
    client.post("/v1/classify", json={"texts": ["a", "b"]}, headers=AUTH)
    text = client.get("/metrics").text
    assert 'tuneforge_requests_total{endpoint="/v1/classify",status="200"}' in text
    assert 'tuneforge_requests_total{endpoint="/v1/classify",status="401"}' in text
    assert "tuneforge_batch_size_bucket" in text and "tuneforge_request_seconds_bucket" in text


def test_tokens_endpoint_returns_entities_with_character_spans(tagger_dir, one_thread):
    from fastapi.testclient import TestClient

    from tuneforge.serve.app import create_app

    texts = ["John Smith moved to Paris last year .", "nothing here"]
    with TestClient(create_app(_config(tagger_dir))) as c:
        r = c.post("/v1/tokens", json={"texts": texts}, headers=AUTH)
        assert c.post("/v1/classify", json={"texts": texts}, headers=AUTH).status_code == 404
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    assert len(results) == 2
    for text, result in zip(texts, results):
        for e in result["entities"]:
            assert e["entity"] in ("PER", "LOC") and text[e["start"]:e["end"]] == e["text"] and 0 < e["score"] <= 1


def test_entities_join_words_by_bio_tags_and_report_character_spans(tagger_dir):
    from tuneforge.serve.inference import encode, entities
    from tuneforge.serve.loader import load_served_model

    served = load_served_model(tagger_dir)
    text = "John O'Neill moved to New York."  # words as in CoNLL: "O'Neill" one word, the full stop apart
    enc = encode(served, [text], truncate=False)[0]
    assert [text[a:b] for a, b in enc.word_spans] == ["John", "O'Neill", "moved", "to", "New", "York", "."]
    word_tags = {0: "B-PER", 1: "I-PER", 4: "B-LOC", 5: "I-LOC"}  # by word index
    names = served.labels
    probs = []
    for w in enc.word_ids:
        tag = word_tags.get(w, "O")
        row = [0.01] * len(names)
        row[names.index(tag)] = 0.9
        probs.append(row)
    got = entities(served, text, enc, probs)
    assert [(e["entity"], e["text"], e["start"], e["end"]) for e in got] == [
        ("PER", "John O'Neill", 0, 12), ("LOC", "New York", 22, 30)]
    assert got[0]["score"] == pytest.approx(0.9)


# ------------------------------------------------------------------------------------------ safety, isolation


def test_pickle_weights_need_allow_pickle(tmp_path, one_thread):
    import torch
    from transformers import BertForSequenceClassification

    from tuneforge.errors import TuneforgeError
    from tuneforge.serve.loader import load_served_model

    model = BertForSequenceClassification(_bert_config(num_labels=2))
    model.config.architectures = ["BertForSequenceClassification"]
    out = tmp_path / "pickled"
    model.config.save_pretrained(out)  # transformers 5 writes only safetensors: the pickle by hand
    torch.save(model.state_dict(), out / "pytorch_model.bin")
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(minilm_dir() / name, out / name)
    assert (out / "pytorch_model.bin").exists() and not (out / "model.safetensors").exists()
    with pytest.raises(TuneforgeError) as err:
        load_served_model(out)
    assert "has only pickle weights (pytorch_model.bin)" in str(err.value)
    assert "If you trust this model, start the server with --allow-pickle;" in str(err.value)
    assert load_served_model(out, allow_pickle=True).task == "classification"


def test_serving_code_never_imports_training_code(classifier_dir):
    code = (
        "import sys\n"
        "from tuneforge.serve.app import create_app\n"
        "from tuneforge.serve.config import ServeConfig\n"
        f"create_app(ServeConfig(model_dir={str(classifier_dir)!r}, api_keys=['k']))\n"
        "import tuneforge.serve.openai_routes, tuneforge.serve.generation\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[:2] in (['tuneforge', 'train'], ['tuneforge', 'tune'], "
        "['tuneforge', 'recipe'], ['tuneforge', 'data'], ['tuneforge', 'tasks']) or m == 'peft')\n"
        "print(bad)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         env={"PYTHONPATH": REPO_SRC, "HF_HUB_OFFLINE": "1", "PATH": os.defpath})
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "[]"


# ------------------------------------------------------------------------------------------ fuzzing, CLI


@pytest.mark.slow
@pytest.mark.parametrize("which", ["classifier_dir", "tagger_dir", "tiny_llama_dir"])
def test_schemathesis_finds_no_server_error_in_our_openapi_spec(which, request, tmp_path):
    from tuneforge.serve.app import create_app

    model_dir = request.getfixturevalue(which)
    app = create_app(_config(model_dir, max_body_bytes=20_000, max_new_tokens=16))
    # Every check (server errors, undocumented status codes, response schemas, invalid data rejected, ...)
    # but one: each model rightly refuses a schema-valid text or prompt longer than its context (64 or
    # 256 tokens here), which no JSON schema can express, so "valid data must be accepted" cannot hold.
    skip = ["--exclude-checks", "positive_data_acceptance"]
    with live_server(app) as url:
        out = subprocess.run(
            [str(__import__("pathlib").Path(sys.executable).parent / "schemathesis"), "run", f"{url}/openapi.json",
             "-H", f"Authorization: Bearer {KEY}", "--checks", "all", *skip, "--max-examples", "25", "--seed", "7",
             "--max-time", "30", "--report-dir", str(tmp_path)],
            capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout.split("FAILURES")[-1][:8000]
    assert " passed" in out.stdout and "failed" not in out.stdout.split("SUMMARY")[-1]


def test_predict_writes_every_row_and_rejects_rows_without_text(classifier_dir, tmp_path):
    from typer.testing import CliRunner

    from tuneforge.cli import app

    src = tmp_path / "in.csv"
    src.write_text("text,label\na great film,positive\n,negative\ndull and slow,negative\n" +
                   "long " * 100 + ",neutral\n", encoding="utf-8")
    for out_name in ("out.jsonl", "out.csv"):
        out = tmp_path / out_name
        r = CliRunner().invoke(app, ["predict", str(classifier_dir), str(src), "-o", str(out),
                                     "max_rejected_fraction=0.5"])
        assert r.exit_code == 0, r.output
        assert f"predicted 3 rows, 1 truncated -> {out}; 1 rejected -> {tmp_path / 'out.rejected.jsonl'}" in r.output
        assert "(25.0%; most common: 1 x no text in column 'text')" in r.output
    rows = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert [r["label"] for r in rows] == ["positive", "negative", "neutral"]  # the gold column is kept
    assert rows[0]["predicted_scores"] == pytest.approx(
        dict(zip(["negative", "neutral", "positive"], _direct_probs(classifier_dir, ["a great film"])[0])), abs=1e-5)
    assert rows[2]["truncated"] is True and "truncated" not in rows[0]
    rejected = [json.loads(line) for line in (tmp_path / "out.rejected.jsonl").read_text().splitlines()]
    assert [(r["line"], r["reason"]) for r in rejected] == [(3, "no text in column 'text'")]
    import csv

    with open(tmp_path / "out.csv", encoding="utf-8") as fh:
        table = list(csv.DictReader(fh))
    assert [r["predicted_label"] for r in table] == [r["predicted_label"] for r in rows]
    assert json.loads(table[0]["predicted_scores"]) == pytest.approx(rows[0]["predicted_scores"])
    r = CliRunner().invoke(app, ["predict", str(classifier_dir), str(src), "truncate=false", "-o",
                                 str(tmp_path / "strict.jsonl"), "max_rejected_fraction=0.5"])
    assert r.exit_code == 0 and "predicted 2 rows" in r.output
    reasons = [json.loads(line)["reason"] for line in (tmp_path / "strict.rejected.jsonl").read_text().splitlines()]
    assert "longer than the model's context (truncate=false): over 64 tokens" in reasons
    # over the default share (1%) of rejected rows: exit 2, after writing both files, naming the key
    r = CliRunner().invoke(app, ["predict", str(classifier_dir), str(src), "-o", str(tmp_path / "default.jsonl")])
    assert r.exit_code == 2
    assert "1 of 4 rows rejected (25.0% > max_rejected_fraction 1%); most common: 1 x no text in column 'text'" \
        in r.output
    assert (tmp_path / "default.jsonl").is_file() and (tmp_path / "default.rejected.jsonl").is_file()


@pytest.mark.slow
def test_tuneforge_serve_command_end_to_end(classifier_dir):
    import httpx

    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "tuneforge.cli", "serve", str(classifier_dir), "--port", str(port),
                             "--api-key", KEY, "--threads", "1"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env={"PYTHONPATH": REPO_SRC, "HF_HUB_OFFLINE": "1", "PATH": os.defpath})
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health").status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert proc.poll() is None and time.monotonic() < deadline, proc.stdout.read() if proc.poll() else ""
            time.sleep(0.2)
        r = httpx.post(f"http://127.0.0.1:{port}/v1/classify", json={"texts": ["great"]}, headers=AUTH)
        assert r.status_code == 200 and r.json()["results"][0]["label"] in ("negative", "neutral", "positive")
    finally:
        proc.terminate()
        output = proc.communicate(timeout=30)[0]
    assert f"serving {classifier_dir.name} (classification, context 64 tokens, cpu, fp32) on " \
           f"http://127.0.0.1:{port}" in output


def test_serve_without_a_key_exits_2_before_loading(classifier_dir, monkeypatch):
    from typer.testing import CliRunner

    from tuneforge.cli import app

    monkeypatch.delenv("TUNEFORGE_API_KEY", raising=False)
    r = CliRunner().invoke(app, ["serve", str(classifier_dir)])
    assert r.exit_code == 2
    assert "no API key: pass --api-key KEY or set $TUNEFORGE_API_KEY" in r.output


def test_predict_generates_for_causal_lms(tiny_llama_dir, tmp_path, one_thread):
    from typer.testing import CliRunner

    from tuneforge.cli import app
    from tuneforge.models.generation import GenerationConfig, generate
    from tuneforge.serve.loader import load_served_model

    src = tmp_path / "prompts.jsonl"
    src.write_text('{"prompt": "the cat sat", "id": 1}\n{"prompt": "blue green", "id": 2}\n', encoding="utf-8")
    out = tmp_path / "gen.jsonl"
    r = CliRunner().invoke(app, ["predict", str(tiny_llama_dir), str(src), "-o", str(out), "max_new_tokens=5"])
    assert r.exit_code == 0, r.output
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    served = load_served_model(tiny_llama_dir)
    expected = generate(served.model, served.tokenizer, ["the cat sat", "blue green"],
                        GenerationConfig(max_new_tokens=5))  # no chat template: plain prompts
    assert [(row["id"], row["predicted_completion"]) for row in rows] == [(1, expected[0]), (2, expected[1])]
