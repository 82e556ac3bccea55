"""``/v1/completions`` and ``/v1/chat/completions`` on a tiny random Llama, through the official openai
client against a real uvicorn server: both endpoints with and without streaming, stop strings, seeds,
the context and field checks, batching that changes no greedy output, early disconnects and timeouts."""

from __future__ import annotations

import dataclasses
import json
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.serve_util import live_server

openai = pytest.importorskip("openai")
httpx = pytest.importorskip("httpx")

KEY = "test-key"
PROMPTS = ["hello", "the cat sat on the mat", "one two three four five six seven eight nine ten",
           "a", "what is the answer to this question about the weather today", "blue green"]


@pytest.fixture(scope="module")
def app(tiny_llama_dir):
    import torch

    from tuneforge.serve.app import create_app
    from tuneforge.serve.config import ServeConfig

    torch.set_num_threads(1)  # the test machine's cores are shared
    return create_app(ServeConfig(model_dir=tiny_llama_dir, api_keys=[KEY], max_new_tokens=64, max_wait_ms=50))


@pytest.fixture(scope="module")
def url(app):
    with live_server(app) as base:
        yield base


@pytest.fixture(scope="module")
def client(url):
    return openai.OpenAI(base_url=url + "/v1", api_key=KEY, max_retries=0, timeout=30)


@pytest.fixture(scope="module")
def model_id(client):
    return client.models.list().data[0].id


def _chat(client, model_id, content, **kw):
    return client.chat.completions.create(model=model_id, messages=[{"role": "user", "content": content}], **kw)


def _complete(client, model_id, prompt, **kw):
    return client.completions.create(model=model_id, prompt=prompt, temperature=0, **kw)


# ------------------------------------------------------------------------------------------ endpoints


def test_chat_completion_and_its_stream_agree(app, client, model_id):
    from tuneforge.serve.prompts import render_chat

    reply = _chat(client, model_id, "tell me a story", max_tokens=5, temperature=0)
    assert reply.object == "chat.completion" and reply.id.startswith("chatcmpl-") and reply.model == model_id
    assert len(reply.choices) == 1
    choice = reply.choices[0]
    assert choice.finish_reason == "length" and choice.message.role == "assistant" and choice.message.content
    served = app.state.tuneforge.served
    prompt_tokens = len(render_chat(served.tokenizer, [{"role": "user", "content": "tell me a story"}]))
    assert (reply.usage.prompt_tokens, reply.usage.completion_tokens, reply.usage.total_tokens) == \
        (prompt_tokens, 5, prompt_tokens + 5)

    chunks = list(_chat(client, model_id, "tell me a story", max_tokens=5, temperature=0, stream=True,
                        stream_options={"include_usage": True}))
    assert all(c.object == "chat.completion.chunk" and c.id == chunks[0].id for c in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == choice.message.content
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 5
    assert chunks[-1].usage.prompt_tokens == prompt_tokens

    # text parts and a system message render too; max_completion_tokens is max_tokens' newer name
    parts = client.chat.completions.create(model=model_id, max_completion_tokens=3, temperature=0, messages=[
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": [{"type": "text", "text": "tell me"}, {"type": "text", "text": "a story"}]}])
    assert parts.usage.completion_tokens == 3


def test_completions_one_or_several_prompts_streamed_or_not(client, model_id):
    one = _complete(client, model_id, "the cat sat", max_tokens=6)
    assert one.object == "text_completion" and one.id.startswith("cmpl-")
    assert one.choices[0].finish_reason == "length" and one.usage.completion_tokens == 6

    several = _complete(client, model_id, ["the cat sat", "blue green"], max_tokens=6)
    assert [c.index for c in several.choices] == [0, 1]
    assert several.choices[0].text == one.choices[0].text
    assert several.usage.completion_tokens == 12

    streamed: dict[int, str] = {0: "", 1: ""}
    reasons = {}
    for chunk in _complete(client, model_id, ["the cat sat", "blue green"], max_tokens=6, stream=True):
        assert chunk.object == "text_completion"
        for c in chunk.choices:
            streamed[c.index] += c.text
            if c.finish_reason:
                reasons[c.index] = c.finish_reason
    assert streamed == {0: several.choices[0].text, 1: several.choices[1].text}
    assert reasons == {0: "length", 1: "length"}


def test_stop_strings_end_the_text_before_them(client, model_id):
    full = _complete(client, model_id, "one two three", max_tokens=30).choices[0].text
    words = full.split()
    assert len(words) >= 4, full
    stop = words[3]
    expected = full[:full.find(stop)]
    cut = _complete(client, model_id, "one two three", max_tokens=30, stop=[stop, "never-generated-xyz"])
    assert cut.choices[0].text == expected and cut.choices[0].finish_reason == "stop"
    streamed = "".join(c.choices[0].text for c in _complete(client, model_id, "one two three", max_tokens=30,
                                                             stop=stop, stream=True))
    assert streamed == expected


def test_a_seed_makes_sampling_reproducible(client, model_id):
    def sample(seed):
        return _chat(client, model_id, "hello there", max_tokens=12, temperature=1.0, top_p=0.95,
                     seed=seed).choices[0].message.content

    assert sample(1234) == sample(1234)
    assert len({sample(s) for s in (1, 2, 3)}) > 1


# --------------------------------------------------------------------------------------------- errors


def test_api_keys_are_required(url, model_id):
    bad = openai.OpenAI(base_url=url + "/v1", api_key="wrong-key", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad.completions.create(model=model_id, prompt="hi", max_tokens=2)
    assert httpx.post(url + "/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}]}
                      ).status_code == 401


def test_prompts_longer_than_the_context_are_refused(app, client, model_id):
    context = app.state.tuneforge.served.max_input_tokens  # 256: the tiny Llama's position table
    long = "word " * (context + 40)
    with pytest.raises(openai.UnprocessableEntityError) as chat_err:
        _chat(client, model_id, long, max_tokens=5)
    with pytest.raises(openai.UnprocessableEntityError) as completion_err:
        _complete(client, model_id, long, max_tokens=5)
    for err in (chat_err.value, completion_err.value):
        assert err.body["code"] == "context_length_exceeded"
        tokens = int(re.search(r"\b(\d+) tokens long\b", err.body["message"]).group(1))
        assert tokens > context + 40 and f"context of {context} tokens" in err.body["message"], err.body

    # a prompt that fits, but not with the tokens asked for: both numbers and the room left are named
    with pytest.raises(openai.UnprocessableEntityError) as err:
        _complete(client, model_id, "word " * (context - 16), max_tokens=30)  # + [CLS] and [SEP]
    message = err.value.body["message"]
    assert f"({context - 14} tokens) plus max_tokens=30 is {context + 16} tokens" in message
    assert f"context of {context} tokens" in message and "at most 14 tokens" in message


def test_unsupported_requests_get_422_naming_the_field(client, model_id):
    with pytest.raises(openai.UnprocessableEntityError, match="64"):
        _chat(client, model_id, "hi", max_tokens=1000)
    with pytest.raises(openai.UnprocessableEntityError, match=r"n: only n=1 is supported \(2 asked\)"):
        _chat(client, model_id, "hi", n=2)
    with pytest.raises(openai.UnprocessableEntityError, match="presence_penalty: 0.5 is not supported"):
        _chat(client, model_id, "hi", presence_penalty=0.5)
    with pytest.raises(openai.UnprocessableEntityError, match="echo"):
        _complete(client, model_id, "hi", echo=True)
    with pytest.raises(openai.UnprocessableEntityError, match="image_url"):
        client.chat.completions.create(model=model_id, messages=[
            {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "http://x/y.png"}}]}])
    with pytest.raises(openai.NotFoundError):
        _chat(client, "another-model", "hi")
    # unknown fields and off-valued known ones pass
    ok = _chat(client, model_id, "hi", max_tokens=2, presence_penalty=0, user="u1", extra_body={"brand_new": 1})
    assert ok.usage.completion_tokens == 2


# ------------------------------------------------------------------------------------------- batching


def _batch_sizes(url) -> tuple[float, float]:
    """(observations, observations of batch size 1) of the batch-size histogram."""
    text = httpx.get(url + "/metrics").text
    count = float(re.search(r"^tuneforge_batch_size_count (\S+)", text, re.M).group(1))
    ones = float(re.search(r'^tuneforge_batch_size_bucket\{le="1\.0"\} (\S+)', text, re.M).group(1))
    return count, ones


def test_batched_greedy_decoding_matches_one_at_a_time(url, client, model_id):
    alone = [_complete(client, model_id, p, max_tokens=4 + 3 * i).choices[0].text for i, p in enumerate(PROMPTS)]
    before = _batch_sizes(url)
    barrier = threading.Barrier(len(PROMPTS))

    def together(i):
        barrier.wait()
        return _complete(client, model_id, PROMPTS[i], max_tokens=4 + 3 * i).choices[0].text

    with ThreadPoolExecutor(len(PROMPTS)) as pool:
        batched = list(pool.map(together, range(len(PROMPTS))))
    assert batched == alone
    after = _batch_sizes(url)
    assert after[0] - before[0] > after[1] - before[1], "no forward pass ran more than one row"


def test_requests_join_a_running_batch_with_unchanged_output(client, model_id):
    long_alone = _chat(client, model_id, "a long story", max_tokens=64, temperature=0).choices[0].message.content
    short_alone = [_complete(client, model_id, p, max_tokens=8).choices[0].text for p in PROMPTS[:3]]
    stream = _chat(client, model_id, "a long story", max_tokens=64, temperature=0, stream=True)
    pieces = [next(stream).choices[0].delta.content or ""]  # the long request is decoding now
    with ThreadPoolExecutor(3) as pool:
        short = list(pool.map(lambda p: _complete(client, model_id, p, max_tokens=8).choices[0].text, PROMPTS[:3]))
    pieces += [c.choices[0].delta.content or "" for c in stream if c.choices]
    assert short == short_alone
    assert "".join(pieces) == long_alone


class _SlowModel:
    """The served model, 20 ms slower per forward pass: streams last long enough to leave or time out."""

    def __init__(self, model):
        self._model = model

    def __getattr__(self, name):
        return getattr(self._model, name)

    def __call__(self, **kwargs):
        time.sleep(0.02)
        return self._model(**kwargs)


@pytest.fixture(scope="module")
def slow_url(app, tiny_llama_dir):
    from tuneforge.serve.app import create_app
    from tuneforge.serve.config import ServeConfig

    served = dataclasses.replace(app.state.tuneforge.served, model=_SlowModel(app.state.tuneforge.served.model))
    slow = create_app(ServeConfig(model_dir=tiny_llama_dir, api_keys=[KEY], request_timeout_s=0.6), served=served)
    with live_server(slow) as base:
        yield base


def _generated_tokens(url) -> float:
    metrics = httpx.get(url + "/metrics").text
    return float(re.search(r"^tuneforge_generated_tokens_total (\S+)", metrics, re.M).group(1))


def test_a_client_leaving_mid_stream_stops_its_row(slow_url):
    headers = {"Authorization": f"Bearer {KEY}"}
    body = {"prompt": "the cat", "max_tokens": 25, "temperature": 0, "stream": True}
    with httpx.stream("POST", slow_url + "/v1/completions", json=body, headers=headers) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        assert next(r.iter_lines()).startswith("data: {")
    time.sleep(0.3)
    after_leaving = _generated_tokens(slow_url)
    assert after_leaving < 10  # 25 asked; the row left the batch soon after the client did
    ok = httpx.post(slow_url + "/v1/completions", headers=headers, json={"prompt": "next", "max_tokens": 3})
    assert ok.status_code == 200 and ok.json()["usage"]["completion_tokens"] == 3
    assert _generated_tokens(slow_url) == after_leaving + 3


def test_timeouts_are_504_before_the_stream_and_an_error_chunk_after(app, tiny_llama_dir, slow_url):
    from tuneforge.serve.app import create_app
    from tuneforge.serve.config import ServeConfig

    headers = {"Authorization": f"Bearer {KEY}"}
    quick = create_app(ServeConfig(model_dir=tiny_llama_dir, api_keys=[KEY], request_timeout_s=1e-9),
                       served=app.state.tuneforge.served)
    with live_server(quick) as base:
        for stream in (False, True):
            r = httpx.post(base + "/v1/completions", headers=headers,
                           json={"prompt": "hi", "max_tokens": 3, "stream": stream})
            assert r.status_code == 504 and r.json()["error"]["code"] == "timeout"
    # 64 tokens at 20 ms each outlast the 0.6 s limit: the started stream ends with an error chunk
    r = httpx.post(slow_url + "/v1/completions", headers=headers,
                   json={"prompt": "hi", "max_tokens": 64, "stream": True})
    events = [line[len("data: "):] for line in r.text.splitlines() if line.startswith("data: ")]
    assert r.status_code == 200 and len(events) > 2 and "[DONE]" not in events
    assert json.loads(events[-1])["error"]["code"] == "timeout"


def test_prompt_learning_models_decode_through_generate(tiny_llama_dir):
    """peft prefix tuning adds its virtual tokens inside forward: served one row at a time via model.generate."""
    import torch

    peft = pytest.importorskip("peft")
    from tuneforge.serve.app import create_app
    from tuneforge.serve.config import ServeConfig
    from tuneforge.serve.loader import load_served_model

    served = load_served_model(tiny_llama_dir)
    torch.manual_seed(1)
    from tuneforge.models.methods import prefix_compatible  # as tuneforge builds and loads prefix models

    tuned = peft.get_peft_model(prefix_compatible(served.model),
                                peft.PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=4))
    served = dataclasses.replace(served, model=tuned.eval())
    ids = served.tokenizer("the cat")["input_ids"]
    with torch.inference_mode():
        out = tuned.generate(input_ids=torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                             max_new_tokens=6, do_sample=False)
    expected = served.tokenizer.decode(out[0, len(ids):], skip_special_tokens=True)
    with live_server(create_app(ServeConfig(model_dir=tiny_llama_dir, no_auth=True), served=served)) as base:
        client = openai.OpenAI(base_url=base + "/v1", api_key="none", max_retries=0)
        reply = client.completions.create(model=served.id, prompt=["the cat", "a dog"], max_tokens=6, temperature=0)
        streamed = "".join(c.choices[0].text for c in client.completions.create(
            model=served.id, prompt="the cat", max_tokens=6, temperature=0, stream=True))
    assert reply.choices[0].text.strip() == expected.strip() and streamed == reply.choices[0].text
    assert reply.usage.completion_tokens == 12


# ------------------------------------------------------------------------------- incremental decoding


class _ByteTokenizer:
    """Token id = one UTF-8 byte: a character of several bytes spans several tokens."""

    def decode(self, ids, skip_special_tokens=True):
        return bytes(ids).decode("utf-8", errors="replace")


class _Events:
    def __init__(self):
        self.events = []
        self.rows = []

    def post(self, event):
        self.events.append(event)


def _decode(text: str, stop=(), max_tokens=100):
    from tuneforge.serve.generation import Finished, Sampling, Text, _Row

    ticket = _Events()
    row = _Row(ticket, 0, list(b"> "), Sampling(max_tokens=max_tokens, stop=tuple(stop)), _ByteTokenizer(), "cpu")
    pieces = []
    for token in text.encode():
        row.accept(token, eos={0})
        pieces.append("".join(e.text for e in ticket.events if isinstance(e, Text)))
        if row.done:
            break
    else:
        row.accept(0, eos={0})
    texts = [e.text for e in ticket.events if isinstance(e, Text)]
    finished = [e for e in ticket.events if isinstance(e, Finished)]
    return texts, pieces, finished[0].reason


def test_split_characters_are_held_until_complete():
    texts, pieces, reason = _decode("añb€")
    assert "".join(texts) == "añb€" and reason == "stop"
    assert all("\ufffd" not in t for t in texts)
    assert pieces[:3] == ["a", "a", "añ"]  # the first byte of ñ emitted nothing


def test_possible_stop_strings_are_held_until_known():
    texts, pieces, reason = _decode("abENxEND tail", stop=["END"])
    assert "".join(texts) == "abENx" and reason == "stop"
    assert pieces[2] == "ab" and pieces[3] == "ab"  # "E", then "EN", could start END
    assert pieces[4] == "abENx"
    texts, _, reason = _decode("abcdef", stop=["ef"], max_tokens=5)
    assert "".join(texts) == "abcde" and reason == "length"
