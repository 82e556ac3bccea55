"""The shared log-prob computation and the preference objectives, on a tiny random Llama."""

from __future__ import annotations

import math

import pytest

torch = pytest.importorskip("torch")

from tuneforge.data.batching import IGNORE, Encoded, collate  # noqa: E402
from tuneforge.tasks.losses import sequence_logps, token_logps  # noqa: E402
from tuneforge.tasks.preference import PreferenceConfig, PreferenceObjective  # noqa: E402


@pytest.fixture(scope="module")
def llama(tiny_llama_dir):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    return AutoModelForCausalLM.from_pretrained(tiny_llama_dir).eval()


def _pairs() -> Encoded:
    # two pairs; prompt tokens carry label -100, replies are labelled; lengths differ (padding in the batch)
    chosen = [[101, 7, 8, 9, 20, 21, 102], [101, 30, 31, 40, 102]]
    rejected = [[101, 7, 8, 9, 50, 102], [101, 30, 31, 60, 61, 62, 102]]
    prompt = [4, 3]

    def labels(ids, p):
        return [IGNORE] * p + ids[p:]

    return Encoded(input_ids=chosen, labels=[labels(c, p) for c, p in zip(chosen, prompt)], label_kind="pair",
                   meta={"rejected_ids": rejected, "rejected_labels": [labels(r, p) for r, p in zip(rejected, prompt)]})


def _reference_logps(model, ids, labels) -> list[float]:
    """Summed log-probs of the labelled tokens from the model's full logits, one sequence at a time."""
    out = []
    for seq, lab in zip(ids, labels):
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([seq])).logits[0].float()
        logp = torch.log_softmax(logits, dim=-1)
        out.append(sum(float(logp[t - 1, seq[t]]) for t in range(1, len(seq)) if lab[t] != IGNORE))
    return out


def test_collate_pair_stacks_chosen_then_rejected():
    enc = _pairs()
    batch = collate(enc, [0, 1], pad_id=0)
    assert batch["input_ids"].shape == (4, 7)
    assert batch["input_ids"][2, :6].tolist() == enc.meta["rejected_ids"][0]
    assert batch["labels"][0, :4].tolist() == [IGNORE] * 4
    assert batch["labels"][1, 5:].tolist() == [IGNORE, IGNORE]  # padding is never a label
    assert batch["index"].tolist() == [0, 1]
    assert enc.lengths == [13, 12] and enc.weights == [1, 1]


@pytest.mark.parametrize("chunk_rows", [2, 1024])
def test_sequence_logps_match_full_logits(llama, chunk_rows):
    enc = _pairs()
    batch = collate(enc, [0, 1], pad_id=0)
    with torch.no_grad():
        got, counts = sequence_logps(llama, batch["input_ids"], batch["attention_mask"], batch["labels"],
                                     chunk_rows=chunk_rows)
    ids = enc.input_ids + enc.meta["rejected_ids"]
    labels = enc.labels + enc.meta["rejected_labels"]
    want = _reference_logps(llama, ids, labels)
    assert counts.tolist() == [3, 2, 2, 4]
    assert got.tolist() == pytest.approx(want, abs=1e-4)


def test_token_logps_gradient_flows_through_chunks(llama):
    batch = collate(_pairs(), [0, 1], pad_id=0)
    llama.zero_grad()
    logps = token_logps(llama, batch["input_ids"], batch["attention_mask"], batch["labels"], chunk_rows=3)
    assert float(logps[batch["labels"].roll(-1, dims=1) == IGNORE].abs().sum()) == 0.0
    logps.sum().backward()
    assert llama.model.embed_tokens.weight.grad is not None
    assert float(llama.model.embed_tokens.weight.grad.abs().sum()) > 0
    llama.zero_grad()


@pytest.fixture()
def lora_model(tiny_llama_dir):
    """A LoRA model whose adapters are NOT zero (init_lora_weights=False): policy != base."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(1)
    base = AutoModelForCausalLM.from_pretrained(tiny_llama_dir)
    model = get_peft_model(base, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    return model.eval()


def test_reference_is_the_model_with_adapters_disabled(lora_model, tiny_llama_dir):
    from transformers import AutoModelForCausalLM

    enc = _pairs()
    batch = collate(enc, [0, 1], pad_id=0)
    objective = PreferenceObjective(PreferenceConfig(), live_reference=True)
    with torch.no_grad():
        ref = objective.reference(lora_model, batch)
        policy, _ = sequence_logps(lora_model, batch["input_ids"], batch["attention_mask"], batch["labels"])
    base = AutoModelForCausalLM.from_pretrained(tiny_llama_dir).eval()
    want = _reference_logps(base, enc.input_ids + enc.meta["rejected_ids"], enc.labels + enc.meta["rejected_labels"])
    assert ref.tolist() == pytest.approx(want, abs=1e-4)
    assert (policy - ref).abs().max() > 1e-3  # the adapters do change the policy: the test can tell them apart


def test_dpo_loss_is_ln2_when_policy_equals_reference(llama):
    batch = collate(_pairs(), [0, 1], pad_id=0)
    objective = PreferenceObjective(PreferenceConfig(loss="dpo", beta=0.1), live_reference=False)
    with torch.no_grad():
        logps, _ = sequence_logps(llama, batch["input_ids"], batch["attention_mask"], batch["labels"])
    batch["ref_logps"] = logps.clone()
    with torch.no_grad():
        loss, out = objective.loss_sum(llama, batch)
    assert float(loss) / 2 == pytest.approx(math.log(2), abs=1e-6)
    assert out.per_example.shape == (2, 8)
    assert out.per_example[:, 0].tolist() == pytest.approx(logps[:2].tolist(), abs=1e-5)


def test_missing_reference_without_adapters_is_an_error(llama):
    batch = collate(_pairs(), [0, 1], pad_id=0)
    objective = PreferenceObjective(PreferenceConfig(loss="dpo"), live_reference=True)
    with pytest.raises(RuntimeError, match="no precomputed reference log-probs"):
        objective.loss_sum(llama, batch)


def test_reference_free_losses_need_no_reference(llama):
    batch = collate(_pairs(), [0, 1], pad_id=0)
    for loss in ("simpo", "orpo"):
        objective = PreferenceObjective(PreferenceConfig(loss=loss), live_reference=False)
        with torch.no_grad():
            value, out = objective.loss_sum(llama, batch)
        assert math.isfinite(float(value))
        assert out.per_example[:, 2:4].abs().sum() == 0  # no reference: zeros


def test_reply_stats_give_log_probs_and_the_token_level_kl_to_the_model_with_adapters_off(lora_model, tiny_llama_dir):
    from transformers import AutoModelForCausalLM

    from tuneforge.tasks.losses import reply_stats

    enc = _pairs()
    batch = collate(enc, [0, 1], pad_id=0)
    policy, ref, counts, got = reply_stats(lora_model, lora_model.disable_adapter, batch["input_ids"],
                                           batch["attention_mask"], batch["labels"], chunk_rows=2)
    with torch.no_grad():
        want_policy, want_counts = sequence_logps(lora_model, batch["input_ids"], batch["attention_mask"],
                                                  batch["labels"])
        want_ref = PreferenceObjective(PreferenceConfig(), live_reference=True).reference(lora_model, batch)
    assert policy.tolist() == pytest.approx(want_policy.tolist(), abs=1e-4)
    assert ref.tolist() == pytest.approx(want_ref.tolist(), abs=1e-4)
    assert counts.tolist() == want_counts.tolist()
    base = AutoModelForCausalLM.from_pretrained(tiny_llama_dir).eval()
    ids, labels = enc.input_ids + enc.meta["rejected_ids"], enc.labels + enc.meta["rejected_labels"]
    want = []
    with torch.no_grad():
        for seq, lab in zip(ids, labels):
            lp = torch.log_softmax(lora_model(input_ids=torch.tensor([seq])).logits[0].float(), dim=-1)
            lr = torch.log_softmax(base(input_ids=torch.tensor([seq])).logits[0].float(), dim=-1)
            kl = (lp.exp() * (lp - lr)).sum(-1)
            positions = [t - 1 for t in range(1, len(seq)) if lab[t] != IGNORE]
            want.append(float(kl[positions].mean()))
    assert got.tolist() == pytest.approx(want, rel=1e-4, abs=1e-6)
    assert min(want) > 0  # the adapters are not zero: a test that can tell


def test_evaluation_reports_kl_only_where_measured(lora_model):
    enc = _pairs()
    batch = collate(enc, [0, 1], pad_id=0)
    objective = PreferenceObjective(PreferenceConfig(), live_reference=True)
    with torch.no_grad():
        _, out = objective.loss_sum(lora_model, batch)
        assert bool(torch.isfinite(out.per_example[:, 7]).all()) and float(out.per_example[:, 7].min()) > 0
        with lora_model.disable_adapter():  # the base model scored at the final evaluation: no KL to itself
            _, base = objective.loss_sum(lora_model, batch)
    assert bool(torch.isnan(base.per_example[:, 7]).all())
