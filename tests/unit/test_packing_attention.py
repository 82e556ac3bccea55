"""Padding-free packing trains exactly like separate documents: no attention across documents.

A packed row holds several chat examples; position ids restart per document, and the collated batch
carries no attention mask, so transformers builds a block-causal mask from the position ids. The loss
of a packed batch must equal the sum of the documents' losses run one at a time, and so must every
parameter's gradient.
"""

from __future__ import annotations

import pytest

from tuneforge.data.batching import Encoded, collate
from tuneforge.data.formatting import FormattedExample
from tuneforge.data.packing import pack_examples
from tuneforge.tasks.losses import forward_loss_sum

DOCS = [  # (input ids, labels): prompt tokens masked with -100, as chat formatting does
    ([1, 5, 6, 7, 8, 9], [-100, -100, -100, 7, 8, 9]),
    ([1, 11, 12, 13], [-100, -100, 12, 13]),
    ([1, 20, 21, 22, 23, 24, 25], [-100, -100, -100, -100, 23, 24, 25]),
    ([1, 30, 31], [-100, 30, 31]),
]


def tiny_llama(impl: str):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                        num_attention_heads=2, num_key_value_heads=1,
                                        attn_implementation=impl)).train()


def grads(model):
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("impl", ["sdpa", "eager"])
def test_packed_loss_and_gradients_equal_separate_documents(impl):
    import torch

    model = tiny_llama(impl)
    examples = [FormattedExample(input_ids=i, labels=l) for i, l in DOCS]
    packed = pack_examples(examples, 12, strategy="ffd")
    assert len(packed) == 2 and sorted(len(p.seq_lens) for p in packed) == [2, 2]  # two documents per row
    enc = Encoded(input_ids=[p.input_ids for p in packed], labels=[p.labels for p in packed], label_kind="causal",
                  extra={"position_ids": [p.position_ids for p in packed]})
    batch = collate(enc, [0, 1], pad_id=0)
    assert "attention_mask" not in batch and batch["position_ids"].shape == batch["input_ids"].shape
    loss_packed, _ = forward_loss_sum(model, batch, "causal")
    loss_packed.backward()
    g_packed = grads(model)
    model.zero_grad()

    total = 0.0
    for ids, labels in DOCS:
        one = Encoded(input_ids=[ids], labels=[labels], label_kind="causal")
        loss, _ = forward_loss_sum(model, collate(one, [0], pad_id=0), "causal")
        loss.backward()  # gradients accumulate over the documents, as the packed batch's sum does
        total += float(loss.detach())
    assert float(loss_packed.detach()) == pytest.approx(total, rel=1e-5, abs=1e-5)
    assert sum(enc.weights) == sum(sum(1 for t in l[1:] if t != -100) for _, l in DOCS)
    for name, g in grads(model).items():
        torch.testing.assert_close(g_packed[name], g, rtol=1e-4, atol=1e-6, msg=name)


def test_an_attention_mask_with_packed_rows_would_leak_across_documents():
    """Why collate drops the mask: with it, the second document attends to the first."""
    import torch

    model = tiny_llama("sdpa").eval()
    a, b = DOCS[0][0], DOCS[1][0]
    alone = model(input_ids=torch.tensor([b]), use_cache=False).logits[0]
    positions = torch.tensor([list(range(len(a))) + list(range(len(b)))])
    ids = torch.tensor([a + b])
    free = model(input_ids=ids, position_ids=positions, use_cache=False).logits[0, len(a):]
    masked = model(input_ids=ids, position_ids=positions, attention_mask=torch.ones_like(ids),
                   use_cache=False).logits[0, len(a):]
    torch.testing.assert_close(free, alone, rtol=1e-5, atol=1e-5)
    assert (masked - alone).abs().max() > 1e-3
