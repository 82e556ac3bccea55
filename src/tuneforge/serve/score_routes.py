"""``POST /v1/score``: a reward model's score of an assistant reply, behind the micro-batcher.

A reward model (``task: reward_model``) is a sequence classifier with one output labelled "reward"; its
score of a reply is that output for the whole conversation, prompt and reply, which the model reads at
its last real token (``*ForSequenceClassification`` pools there; encoder models pool their first token).

The conversation is tokenized exactly as training tokenized its chosen and rejected replies
(``tuneforge.data.preference``, which serving does not import; ``tests/unit/test_serve_reward.py``
checks that both give the same ids):

- with the tokenizer's chat template: the prompt rendered with the generation prompt, then what the
  template renders after it for the reply (the reply and its end-of-turn token; layout whitespace after
  the end of turn left out), each tokenized without added special tokens;
- without one: the prompt's contents joined with newlines and a newline, tokenized with the tokenizer's
  special tokens (BOS), then the reply's text and the EOS token.

Inputs are never cut (a cut conversation is not the one asked about): one over the model's context is
a 422 with its length and the limit.
"""

# No `from __future__ import annotations`: FastAPI reads the route functions' annotations at run time,
# and the request types are imported inside the functions, where string annotations cannot be resolved.
from tuneforge.serve.errors import APIError
from tuneforge.serve.loader import ServedModel
from tuneforge.serve.state import ServerState


def _render(tokenizer, template: str, messages: list[dict], generation_prompt: bool, param: str) -> str:
    from jinja2 import TemplateError

    try:
        return tokenizer.apply_chat_template(messages, chat_template=template, tokenize=False,
                                             add_generation_prompt=generation_prompt)
    except (TemplateError, TypeError, ValueError) as exc:
        raise APIError(422, f"{param}: the model's chat template cannot render this conversation: {exc}",
                       param=param, code="invalid_messages") from None


def conversation_ids(served: ServedModel, prompt: list[dict], reply: dict, *, param: str = "input[0]") -> list[int]:
    """The token ids the reward model reads for ``prompt`` (messages) followed by ``reply`` (the assistant
    message): prompt tokens, then reply tokens, as in training (see the module docstring)."""
    from tuneforge.serve.prompts import chat_template

    tokenizer = served.tokenizer
    template = chat_template(tokenizer)
    if template is None:
        text = "\n".join(str(m["content"]) for m in prompt) + "\n"
        ids = list(tokenizer(text, add_special_tokens=True)["input_ids"])
        eos, eos_text = getattr(tokenizer, "eos_token_id", None), getattr(tokenizer, "eos_token", None)
        if eos is not None and len(ids) > 1 and ids[-1] == eos and not (eos_text and text.endswith(eos_text)):
            ids = ids[:-1]  # a tokenizer that closes every text with EOS: the prompt goes on with the reply
        ids += tokenizer(str(reply["content"]), add_special_tokens=False)["input_ids"]
        return ids + [eos] if eos is not None else ids
    head = _render(tokenizer, template, prompt, True, param)
    full = _render(tokenizer, template, [*prompt, reply], False, param)
    if not full.startswith(head):
        raise APIError(422, f"{param}: the model's chat template renders the prompt differently when a reply "
                            "follows it than with its generation prompt, so the conversation cannot be split into "
                            "prompt and reply the way the model was trained", param=param, code="invalid_messages")
    # Whitespace after the end-of-turn token is layout between turns, not the reply (as in training).
    text = full[len(head):len(full.rstrip())]
    if not text:
        raise APIError(422, f"{param}: the model's chat template renders nothing for the reply", param=param,
                       code="invalid_messages")
    return list(tokenizer(head, add_special_tokens=False)["input_ids"]) + \
        list(tokenizer(text, add_special_tokens=False)["input_ids"])


def score_batch(served: ServedModel, batch: list[list[int]]) -> list[float]:
    """The model's score of each input, in input order (what the micro-batcher calls in the model thread).

    Inputs of similar length run together, right-padded with the config's pad token: that is the token
    a ``*ForSequenceClassification`` model skips to find each row's last real token. A model without
    one cannot find it in a padded batch, so it reads its inputs one at a time.
    """
    import torch

    from tuneforge.models.generation import pad_ids
    from tuneforge.serve.inference import length_groups

    config = served.model.config
    config = config.get_text_config() if hasattr(config, "get_text_config") else config
    pad = getattr(config, "pad_token_id", None)
    groups = length_groups([len(ids) for ids in batch]) if pad is not None else [[i] for i in range(len(batch))]
    out: list[float] = [0.0] * len(batch)
    for group in groups:
        input_ids, mask = pad_ids([batch[i] for i in group], pad if pad is not None else 0, left=False,
                                  device=served.device)
        with torch.inference_mode(), served.autocast():
            logits = served.model(input_ids=input_ids, attention_mask=mask).logits.float().cpu()
        for row, i in enumerate(group):
            out[i] = float(logits[row, 0])
    return out


def add_score_routes(app, state: ServerState) -> None:
    from fastapi import Depends

    from tuneforge.serve.batcher import MicroBatcher
    from tuneforge.serve.schemas import ERROR_RESPONSES, ScoreRequest, ScoreResponse

    served, cfg, metrics = state.served, state.cfg, state.metrics
    batcher = MicroBatcher(lambda batch: score_batch(served, batch), executor=state.executor,
                           max_batch_size=cfg.max_batch_size, max_wait_s=cfg.max_wait_ms / 1000,
                           on_batch=metrics.batch_size.observe, on_queue=metrics.queue_depth.set)

    @app.post("/v1/score", response_model=ScoreResponse, dependencies=[Depends(state.auth)],
              responses=ERROR_RESPONSES)
    async def score(req: ScoreRequest):
        """Score each conversation's last reply with the reward model (higher is better)."""
        state.check_model(req.model)
        if len(req.input) > cfg.max_texts:
            raise APIError(422, f"input has {len(req.input)} items; this server takes at most {cfg.max_texts} per "
                                "request (--max-texts): split them over several requests", param="input",
                           code="too_many_inputs")
        ids = [conversation_ids(served, *item.conversation(), param=f"input[{i}]") for i, item in enumerate(req.input)]
        for i, row in enumerate(ids):
            if len(row) > served.max_input_tokens:
                raise APIError(422, f"input[{i}] is {len(row)} tokens long; the model reads at most "
                                    f"{served.max_input_tokens} (a conversation is scored whole, never cut: shorten "
                                    "the prompt or the reply)", param=f"input[{i}]", code="input_too_long")
            if not row:
                raise APIError(422, f"input[{i}] is empty after tokenization", param=f"input[{i}]",
                               code="empty_input")
        n_tokens = sum(len(row) for row in ids)
        metrics.inputs.labels("/v1/score").inc(len(ids))
        metrics.prompt_tokens.inc(n_tokens)
        scores = await state.in_time(batcher.submit(ids))
        return {"object": "list", "model": served.id, "usage": {"prompt_tokens": n_tokens},
                "data": [{"index": i, "score": s} for i, s in enumerate(scores)]}
