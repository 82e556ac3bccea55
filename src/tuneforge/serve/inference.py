"""Encoder inference for ``/v1/classify``, ``/v1/tokens`` and ``tuneforge predict``: tokenize with
the length check, run a padded batch, and turn logits into labels, scores and entity spans.

``run_batch`` is what the micro-batcher calls in the model thread; everything else is cheap enough
for the event loop.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from tuneforge.serve.errors import APIError
from tuneforge.serve.loader import ServedModel


#: How a text is split into words for token classification. Models are trained on pre-split words
#: (CoNLL-style: punctuation apart, "O'Neill", "U.S." and "well-known" whole) and label a word by its
#: first sub-token; splitting the same way at inference keeps predictions aligned with training.
#: Dotted abbreviations, numbers with decimal or thousands marks, runs of letters/digits with inner
#: hyphens or apostrophes, then any other single non-space character.
WORD = re.compile(r"(?:[^\W\d_]\.){2,}|\d+(?:[.,]\d+)+|\w+(?:[-'’]\w+)*|[^\w\s]")


@dataclass
class EncodedText:
    ids: list[int]
    word_spans: list[tuple[int, int]] | None = None  # character span of every word (token tasks)
    word_ids: list[int | None] | None = None  # word index of every token; None for special tokens
    truncated: bool = False  # the text was longer than the context and was cut to fit


def _tokenize(served: ServedModel, texts: list[str], limit: int | None) -> list[EncodedText]:
    """Token ids (cut at ``limit`` tokens when given); token tasks tokenize CoNLL-style words."""
    if not texts:  # a tokenizer refuses an empty batch
        return []
    if served.task != "token_classification":
        return [EncodedText(ids) for ids in served.tokenizer(list(texts), truncation=limit is not None,
                                                             max_length=limit)["input_ids"]]
    spans = [[m.span() for m in WORD.finditer(t)] for t in texts]
    enc = served.tokenizer([[t[a:b] for a, b in s] for t, s in zip(texts, spans)], is_split_into_words=True,
                           truncation=limit is not None, max_length=limit)
    return [EncodedText(ids, spans[i], enc.word_ids(i)) for i, ids in enumerate(enc["input_ids"])]


def encode(served: ServedModel, texts: list[str], *, truncate: bool, field: str = "texts") -> list[EncodedText]:
    """Token ids for each text. A text longer than the model's context is a 422 naming it, or with
    ``truncate`` is cut to fit and marked ``truncated`` (only those texts are tokenized again)."""
    out = _tokenize(served, texts, None)
    long = [i for i, e in enumerate(out) if len(e.ids) > served.max_input_tokens]
    if long and not truncate:
        i = long[0]
        raise APIError(422, f"{field}[{i}] is {len(out[i].ids)} tokens long; the model reads at most "
                            f"{served.max_input_tokens} (send \"truncate\": true to cut it to fit)",
                       param=f"{field}[{i}]", code="input_too_long")
    for i, e in zip(long, _tokenize(served, [texts[i] for i in long], served.max_input_tokens)):
        e.truncated = True
        out[i] = e
    return out


#: A length group closes when padding would exceed this share of its real tokens (once it has
#: MIN_GROUP inputs): on a CPU the model's cost is proportional to padded tokens, and one batch of
#: 64 random SST-2 sentences is about half padding.
MAX_PADDING = 0.25
MIN_GROUP = 4


def length_groups(lengths: list[int]) -> list[list[int]]:
    """Indices grouped by similar length (ascending), so each group pads little."""
    groups: list[list[int]] = []
    current: list[int] = []
    real = 0
    for i in sorted(range(len(lengths)), key=lengths.__getitem__):
        padded = (len(current) + 1) * lengths[i]
        if len(current) >= MIN_GROUP and padded > (1 + MAX_PADDING) * (real + lengths[i]):
            groups.append(current)
            current, real = [], 0
        current.append(i)
        real += lengths[i]
    return groups + [current] if current else groups


def run_batch(served: ServedModel, batch: list[list[int]]) -> list:
    """fp32 probabilities (or regression values) per input, in input order: ``[C]`` per text,
    ``[tokens, C]`` for token tasks. Inputs of similar length run together (``length_groups``)."""
    out: list = [None] * len(batch)
    for group in length_groups([len(ids) for ids in batch]):
        for i, scores in zip(group, _forward(served, [batch[i] for i in group])):
            out[i] = scores
    return out


def _forward(served: ServedModel, batch: list[list[int]]) -> list:
    import torch

    from tuneforge.models.generation import pad_ids

    pad = served.tokenizer.pad_token_id if served.tokenizer.pad_token_id is not None else 0
    input_ids, mask = pad_ids(batch, pad, left=False, device=served.device)
    with torch.inference_mode(), served.autocast():
        logits = served.model(input_ids=input_ids, attention_mask=mask).logits.float().cpu()
    if served.problem_type == "regression":
        scores = logits
    elif served.problem_type == "multi_label_classification":
        scores = torch.sigmoid(logits)
    else:
        scores = torch.softmax(logits, dim=-1)
    if served.task == "token_classification":
        return [scores[row, :len(ids)].tolist() for row, ids in enumerate(batch)]
    return scores.tolist()


def classification_result(served: ServedModel, scores: list[float], *, threshold: float = 0.5) -> dict:
    """One text's answer: the label and its probability (single-label), the labels at or above
    ``threshold`` (multi-label), or the value (regression)."""
    if served.problem_type == "regression":
        return {"value": scores[0]} if len(scores) == 1 else {"values": dict(zip(served.labels, scores))}
    named = dict(zip(served.labels, scores))
    if served.problem_type == "multi_label_classification":
        return {"labels": [name for name, p in named.items() if p >= threshold], "scores": named}
    best = max(range(len(scores)), key=scores.__getitem__)
    return {"label": served.labels[best], "score": scores[best], "scores": named}


def _entity_type(label: str) -> tuple[str, str | None]:
    """``B-PER`` -> (``B``, ``PER``); ``O`` -> (``O``, None); a label without a scheme is its own type."""
    if label == "O":
        return "O", None
    head, sep, rest = label.partition("-")
    if sep and head in ("B", "I", "E", "S", "L", "U"):
        return head, rest
    return "I", label


def entities(served: ServedModel, text: str, enc: EncodedText, probs: list[list[float]]) -> list[dict]:
    """Entities with character spans: each word takes its first sub-token's prediction (as in training),
    and consecutive words of one type join unless a ``B-``/``S-``/``U-`` tag starts a new one."""
    words: dict[int, dict] = {}
    for t, w in enumerate(enc.word_ids):
        if w is None or w in words:
            continue
        best = max(range(len(probs[t])), key=probs[t].__getitem__)
        start, end = enc.word_spans[w]
        words[w] = {"label": served.labels[best], "score": probs[t][best], "start": start, "end": end}
    out: list[dict] = []
    current = None
    for w in sorted(words):
        word = words[w]
        scheme, kind = _entity_type(word["label"])
        if kind is None:
            current = None
            continue
        if current is None or current["entity"] != kind or scheme in ("B", "S", "U"):
            current = {"entity": kind, "start": word["start"], "end": word["end"], "scores": []}
            out.append(current)
        current["end"] = word["end"]
        current["scores"].append(word["score"])
        if scheme in ("E", "L", "S", "U"):
            current = None
    for e in out:
        scores = e.pop("scores")
        e["text"] = text[e["start"]:e["end"]]
        e["score"] = sum(scores) / len(scores)
    return out
