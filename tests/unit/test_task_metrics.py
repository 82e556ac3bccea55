"""Task metrics: exact values on hand-made cases, library reference examples, and input errors."""

from __future__ import annotations

import math
import subprocess
import sys
import warnings

import numpy as np
import pytest

from tuneforge.tasks.metrics import METRIC_DIRECTIONS
from tuneforge.tasks.metrics.task_metrics import (
    METRIC_NAMES,
    extract_final_number,
    final_number_accuracy,
    generation_metrics,
    multilabel_metrics,
    ner_metrics,
    normalize_answer,
    regression_metrics,
    squad_metrics,
    tune_thresholds,
)

# ------------------------------------------------------------------------------ names and imports


def test_every_returned_metric_has_a_direction():
    for function, names in METRIC_NAMES.items():
        for name in names:
            assert METRIC_DIRECTIONS.get(name) in ("max", "min"), (function, name)
    assert METRIC_DIRECTIONS["mse"] == METRIC_DIRECTIONS["rmse"] == METRIC_DIRECTIONS["mae"] == "min"


def test_functions_return_exactly_their_listed_flat_metrics():
    outputs = {
        "regression_metrics": regression_metrics([1.0, 2.0], [1.0, 3.0]),
        "multilabel_metrics": multilabel_metrics([[0.9]], [[1]], ["a"]),
        "ner_metrics": ner_metrics([["B-PER"]], [["B-PER"]]),
        "generation_metrics": generation_metrics(["a b"], ["a b"]),
        "squad_metrics": squad_metrics(["a"], [["a"]]),
        "final_number_accuracy": final_number_accuracy(["1"], ["1"]),
    }
    assert set(outputs) == set(METRIC_NAMES)
    for function, result in outputs.items():
        flat = [k for k, v in result.items() if not isinstance(v, dict)]
        assert flat == list(METRIC_NAMES[function]), function
        assert all(type(result[k]) is float for k in flat), function


def test_importing_the_metrics_loads_no_heavy_library():
    code = (
        "import sys, tuneforge.tasks.metrics.task_metrics\n"
        "heavy = ['torch', 'scipy', 'seqeval', 'sacrebleu', 'rouge_score', 'sklearn']\n"
        "print(sorted(m for m in heavy if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# ------------------------------------------------------------------------------------- regression


def test_regression_exact_values():
    result = regression_metrics([1, 2, 3, 4], [1, 2, 3, 5])
    # errors 0, 0, 0, -1; targets' mean 2.75, total sum of squares 8.75
    assert result["mse"] == 0.25
    assert result["rmse"] == 0.5
    assert result["mae"] == 0.25
    assert result["r2"] == pytest.approx(1 - 1 / 8.75)
    # covariance sum 6.5, squared deviations 5 (preds) and 8.75 (targets)
    assert result["pearson"] == pytest.approx(6.5 / math.sqrt(5 * 8.75))
    assert result["spearman"] == pytest.approx(1.0)  # same order


def test_regression_spearman_uses_average_ranks_for_ties():
    result = regression_metrics(np.array([1.0, 2.0, 2.0, 3.0]), np.array([1.0, 3.0, 2.0, 4.0]))
    # ranks [1, 2.5, 2.5, 4] vs [1, 3, 2, 4]: 4.5 / sqrt(4.5 * 5)
    assert result["spearman"] == pytest.approx(4.5 / math.sqrt(22.5))
    assert result["r2"] == pytest.approx(1 - 2 / 5)


def test_regression_constant_input_gives_zero_correlation_without_warnings():
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # scipy's ConstantInputWarning would fail the test
        constant_preds = regression_metrics([2, 2, 2], [1, 2, 3])
        single = regression_metrics([5.0], [4.0])
    assert constant_preds["pearson"] == constant_preds["spearman"] == 0.0
    assert constant_preds["mse"] == pytest.approx(2 / 3)
    assert constant_preds["r2"] == 0.0  # predicting the mean explains nothing
    assert single == {"mse": 1.0, "rmse": 1.0, "mae": 1.0, "pearson": 0.0, "spearman": 0.0, "r2": 0.0}


def test_regression_r2_with_constant_targets_follows_sklearn():
    assert regression_metrics([3, 3], [3, 3])["r2"] == 1.0
    assert regression_metrics([3, 4], [3, 3])["r2"] == 0.0


@pytest.mark.parametrize(
    "preds, targets, match",
    [
        ([1.0, 2.0], [1.0], r"preds and targets differ in length: 2 vs 1"),
        ([], [], "zero examples"),
        ([1.0, float("nan")], [1.0, 2.0], r"preds\[1\] is nan"),
        ([1.0, 2.0], [float("inf"), 2.0], r"targets\[0\] is inf"),
        ([[1.0], [2.0]], [1.0, 2.0], r"preds must have shape \[n\], got shape \[2, 1\]"),
        (["a", "b"], [1.0, 2.0], "preds must contain numbers only"),
    ],
)
def test_regression_invalid_input(preds, targets, match):
    with pytest.raises(ValueError, match=match):
        regression_metrics(preds, targets)


# ------------------------------------------------------------------------------------ multi-label

PROBS = [[0.9, 0.2, 0.1], [0.4, 0.6, 0.3], [0.7, 0.1, 0.2]]
TARGETS = [[1, 0, 0], [1, 1, 0], [0, 0, 0]]
NAMES = ["a", "b", "c"]


def test_multilabel_exact_values_at_default_threshold():
    result = multilabel_metrics(PROBS, TARGETS, NAMES)
    # a: predicted rows 0, 2; true rows 0, 1 -> tp 1, fp 1, fn 1.  b: tp 1.  c: nothing anywhere.
    assert result["per_label"] == {
        "a": {"precision": 0.5, "recall": 0.5, "f1": 0.5, "threshold": 0.5, "support": 2},
        "b": {"precision": 1.0, "recall": 1.0, "f1": 1.0, "threshold": 0.5, "support": 1},
        "c": {"precision": 0.0, "recall": 0.0, "f1": 0.0, "threshold": 0.5, "support": 0},
    }
    assert result["micro_precision"] == pytest.approx(2 / 3)  # tp 2, fp 1, fn 1
    assert result["micro_recall"] == pytest.approx(2 / 3)
    assert result["micro_f1"] == pytest.approx(2 / 3)
    assert result["macro_f1"] == 0.75  # c never occurs nor is predicted: left out of the mean
    assert result["subset_accuracy"] == pytest.approx(1 / 3)  # only row 1 is exactly right


def test_multilabel_matches_sklearn_on_random_data():
    from sklearn.metrics import f1_score, precision_score, recall_score

    rng = np.random.default_rng(0)
    probs = rng.random((40, 4))
    targets = (rng.random((40, 4)) < 0.3).astype(int)
    thresholds = [0.3, 0.5, 0.6, 0.8]
    predicted = (probs >= np.array(thresholds)).astype(int)
    result = multilabel_metrics(probs, targets, ["w", "x", "y", "z"], thresholds)
    assert result["micro_f1"] == pytest.approx(f1_score(targets, predicted, average="micro"))
    assert result["macro_f1"] == pytest.approx(f1_score(targets, predicted, average="macro"))
    assert result["micro_precision"] == pytest.approx(precision_score(targets, predicted, average="micro"))
    assert result["micro_recall"] == pytest.approx(recall_score(targets, predicted, average="micro"))
    per_label_f1 = f1_score(targets, predicted, average=None)
    assert [result["per_label"][n]["f1"] for n in "wxyz"] == pytest.approx(list(per_label_f1))
    assert [result["per_label"][n]["threshold"] for n in "wxyz"] == thresholds


def test_multilabel_threshold_is_inclusive_and_per_label():
    exactly_at = multilabel_metrics([[0.5, 0.5]], [[1, 1]], ["a", "b"], thresholds=[0.5, 0.6])
    assert exactly_at["per_label"]["a"]["recall"] == 1.0  # 0.5 >= 0.5: predicted
    assert exactly_at["per_label"]["b"]["recall"] == 0.0  # 0.5 < 0.6: not predicted
    assert exactly_at["subset_accuracy"] == 0.0


def test_multilabel_all_negative_everywhere_scores_zero_f1_but_full_subset_accuracy():
    result = multilabel_metrics([[0.1, 0.2]], [[0, 0]], ["a", "b"])
    assert result["micro_f1"] == result["macro_f1"] == 0.0
    assert result["subset_accuracy"] == 1.0


@pytest.mark.parametrize(
    "probs, targets, names, thresholds, match",
    [
        ([[0.5, 1.7]], [[1, 0]], ["a", "b"], 0.5, r"probs\[0, 1\] = 1.7 is outside \[0, 1\]; pass sigmoid"),
        ([[0.5, 0.2]], [[1, 2]], ["a", "b"], 0.5, r"targets\[0, 1\] = 2.0; multi-label targets must be 0"),
        ([[0.5, 0.2]], [[1, 0], [0, 0]], ["a", "b"], 0.5, r"differ in shape: \[1, 2\] vs \[2, 2\]"),
        ([[0.5, float("nan")]], [[1, 0]], ["a", "b"], 0.5, r"probs\[0, 1\] is nan"),
        ([[0.5, 0.2]], [[1, 0]], ["a"], 0.5, "label_names has 1 names but probs has 2 label columns"),
        ([[0.5, 0.2]], [[1, 0]], ["a", "a"], 0.5, "label_names has duplicates"),
        ([[0.5, 0.2]], [[1, 0]], ["a", "b"], [0.5], "thresholds has 1 values but there are 2 labels"),
        ([[0.5, 0.2]], [[1, 0]], ["a", "b"], 1.5, r"thresholds must lie in \[0, 1\]"),
        (np.zeros((0, 2)), np.zeros((0, 2)), ["a", "b"], 0.5, "zero examples"),
        ([0.5, 0.2], [1, 0], ["a", "b"], 0.5, r"probs must have shape \[n, num_labels\]"),
    ],
)
def test_multilabel_invalid_input(probs, targets, names, thresholds, match):
    with pytest.raises(ValueError, match=match):
        multilabel_metrics(probs, targets, names, thresholds)


def test_tune_thresholds_maximises_each_label_f1_with_ties_towards_half():
    # a: F1 0.8 for any threshold <= 0.4 (all three predicted) -> 0.4 is closest to 0.5.
    # b: F1 1.0 for thresholds in (0.2, 0.6] -> 0.5 itself.  c: no positives -> keeps 0.5.
    assert tune_thresholds(PROBS, TARGETS) == [0.4, 0.5, 0.5]


def test_tune_thresholds_equidistant_tie_takes_the_lower_threshold():
    # both 0.45 and 0.55 separate the classes perfectly and are 0.05 away from 0.5
    probs = [[0.4], [0.57], [0.58], [0.1]]
    targets = [[0], [1], [1], [0]]
    assert tune_thresholds(probs, targets, grid=[0.45, 0.55]) == [0.45]


def test_tune_thresholds_compares_and_returns_clean_grid_values():
    # Only 0.15 separates 0.1 from 0.15. linspace's raw 0.15000000000000002 would miss the
    # positive (0.15 < it) and would be saved as such.
    assert tune_thresholds([[0.1], [0.15]], [[0], [1]]) == [0.15]


def test_tuned_thresholds_beat_the_default_on_a_rare_label():
    # positives get low but separable probabilities: only 0.2 of the grid lies in (0.18, 0.22]
    probs = [[0.22], [0.27], [0.31], [0.02], [0.08], [0.12], [0.18], [0.05], [0.1]]
    targets = [[1], [1], [1], [0], [0], [0], [0], [0], [0]]
    tuned = tune_thresholds(probs, targets)
    assert tuned == [0.2]
    assert multilabel_metrics(probs, targets, ["rare"])["macro_f1"] == 0.0
    assert multilabel_metrics(probs, targets, ["rare"], tuned)["macro_f1"] == 1.0


def test_tune_thresholds_rejects_a_bad_grid():
    with pytest.raises(ValueError, match=r"grid must be a non-empty list of thresholds in \[0, 1\]"):
        tune_thresholds(PROBS, TARGETS, grid=[])
    with pytest.raises(ValueError, match=r"grid must be a non-empty list"):
        tune_thresholds(PROBS, TARGETS, grid=[0.5, 2.0])


# -------------------------------------------------------------------------------------------- NER


def test_ner_exact_values_and_per_type():
    true = [["B-PER", "I-PER", "O", "B-LOC"], ["B-ORG", "O"]]
    pred = [["B-PER", "I-PER", "O", "B-ORG"], ["B-ORG", "O"]]
    result = ner_metrics(true, pred)
    # 3 true entities, 3 predicted, 2 correct (PER, the second ORG)
    assert result["entity_precision"] == pytest.approx(2 / 3)
    assert result["entity_recall"] == pytest.approx(2 / 3)
    assert result["entity_f1"] == pytest.approx(2 / 3)
    assert result["token_accuracy"] == pytest.approx(5 / 6)
    assert result["per_type"] == {
        "LOC": {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1},
        "ORG": {"precision": 0.5, "recall": 1.0, "f1": pytest.approx(2 / 3), "support": 1},
        "PER": {"precision": 1.0, "recall": 1.0, "f1": 1.0, "support": 1},
    }


def test_ner_counts_whole_entities_not_tokens():
    # Half of the PER entity found: 2 of 3 tokens right, but no entity is correct.
    result = ner_metrics([["B-PER", "I-PER", "O"]], [["B-PER", "O", "O"]])
    assert result["token_accuracy"] == pytest.approx(2 / 3)
    assert result["entity_f1"] == result["entity_precision"] == result["entity_recall"] == 0.0


def test_ner_is_conlleval_lenient_about_a_leading_i_tag():
    # conlleval reads an I- tag after O as the start of an entity of that type
    result = ner_metrics([["B-PER", "I-PER", "O"]], [["I-PER", "I-PER", "O"]])
    assert result["entity_f1"] == 1.0
    assert result["token_accuracy"] == pytest.approx(2 / 3)


def test_ner_without_any_entity_scores_zero_without_warnings():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        result = ner_metrics([["O", "O"], []], [["O", "O"], []])
    assert result == {"entity_f1": 0.0, "entity_precision": 0.0, "entity_recall": 0.0,
                      "token_accuracy": 1.0, "per_type": {}}


@pytest.mark.parametrize(
    "true, pred, match",
    [
        ([["O"], ["B-PER", "O"]], [["O"], ["B-PER"]], "sentence 1: 2 true tags but 1 predicted tags"),
        ([["O"]], [["O"], ["O"]], "true_tags and pred_tags differ in length: 1 vs 2"),
        ([], [], "zero examples"),
        ([[]], [[]], "zero tokens"),
        ([["O", "PER"]], [["O", "O"]], "sentence 0, token 1: true tag 'PER' is not a chunk tag"),
        ([["O"]], [[None]], "sentence 0, token 0: predicted tag None"),
    ],
)
def test_ner_invalid_input(true, pred, match):
    with pytest.raises(ValueError, match=match):
        ner_metrics(true, pred)


# --------------------------------------------------------------------------------- generation


def test_generation_reproduces_sacrebleus_documented_example():
    # sacrebleu README: BLEU = 48.53, chrF2 = 59.73 for this system against two reference streams
    refs_a = ["The dog bit the man.", "It was not unexpected.", "The man bit him first."]
    refs_b = ["The dog had bit the man.", "No one was surprised.", "The man had bitten the dog."]
    hyps = ["The dog bit the man.", "It wasn't surprising.", "The man had just bitten him."]
    result = generation_metrics(hyps, [[a, b] for a, b in zip(refs_a, refs_b)])
    assert round(result["bleu"], 2) == 48.53
    assert round(result["chrf"], 2) == 59.73


def test_generation_rouge_exact_values():
    result = generation_metrics(["the cat sat on the mat"], ["the cat is on the mat"])
    # unigrams: 5 of 6 shared; bigrams: the-cat, on-the, the-mat = 3 of 5; LCS "the cat on the mat"
    assert result["rouge1"] == pytest.approx(100 * 5 / 6)
    assert result["rouge2"] == pytest.approx(60.0)
    assert result["rougeL"] == pytest.approx(100 * 5 / 6)


def test_generation_rouge_uses_the_stemmer():
    result = generation_metrics(["cats running"], ["cat runs"])
    assert result["rouge1"] == pytest.approx(100.0)


def test_generation_identical_text_scores_100_everywhere():
    texts = ["a small test sentence for the metric", "another fairly long sentence to score here"]
    assert generation_metrics(texts, texts) == pytest.approx(
        {"bleu": 100.0, "chrf": 100.0, "rouge1": 100.0, "rouge2": 100.0, "rougeL": 100.0}
    )


def test_generation_multiple_references_of_different_counts():
    hyps = ["the quick brown fox jumps", "a lazy dog sleeps all day"]
    refs = [["the quick brown fox jumps"], ["completely different words here", "a lazy dog sleeps all day"]]
    result = generation_metrics(hyps, refs)
    # every hypothesis equals one of its references: BLEU and ROUGE (best reference) are perfect
    assert result["bleu"] == pytest.approx(100.0)
    assert result["rouge1"] == result["rouge2"] == result["rougeL"] == pytest.approx(100.0)


def test_generation_bare_strings_equal_single_reference_lists():
    hyps = ["the cat sat on the mat", "hello there world"]
    refs = ["the cat is on the mat", "hello world"]
    assert generation_metrics(hyps, refs) == generation_metrics(hyps, [[r] for r in refs])


def test_generation_empty_predictions_score_zero():
    result = generation_metrics(["", ""], ["the cat", "a dog"])
    assert result == {"bleu": 0.0, "chrf": 0.0, "rouge1": 0.0, "rouge2": 0.0, "rougeL": 0.0}


@pytest.mark.parametrize(
    "preds, refs, match",
    [
        (["a", "b"], ["a"], "predictions and references differ in length: 2 vs 1"),
        ([], [], "zero examples"),
        (["a", None], ["a", "b"], r"predictions\[1\] must be a string, got NoneType"),
        (["a"], [[]], r"references\[0\] is empty"),
        (["a"], [["a", 3]], r"references\[0\] must be a string or a list of strings"),
    ],
)
def test_generation_invalid_input(preds, refs, match):
    with pytest.raises(ValueError, match=match):
        generation_metrics(preds, refs)


# -------------------------------------------------------------------------------------- SQuAD


@pytest.mark.parametrize(
    "text, normalised",
    [
        ("The Denver Broncos", "denver broncos"),
        ("  an  apple, a pear!  ", "apple pear"),
        ("Theatre", "theatre"),  # articles only as whole words
        ("the-the", "thethe"),  # punctuation goes first, as in the official script
    ],
)
def test_squad_normalisation(text, normalised):
    assert normalize_answer(text) == normalised


def test_squad_exact_values():
    result = squad_metrics(
        ["the Denver Broncos", "Denver Broncos won", "Carolina"],
        [["Denver Broncos"], ["Denver Broncos", "Broncos"], ["Panthers"]],
    )
    # EM 1, 0, 0.  F1 1; best of 0.8 ("denver broncos": p 2/3, r 1) and 0.5; 0
    assert result["exact_match"] == pytest.approx(100 / 3)
    assert result["f1"] == pytest.approx(100 * (1 + 0.8 + 0) / 3)


def test_squad_best_gold_answer_counts_and_empty_normalised_text_keeps_official_quirk():
    assert squad_metrics(["Broncos"], [["Denver Broncos", "broncos."]]) == {"exact_match": 100.0, "f1": 100.0}
    # both normalise to "": exact match, but the official F1 is 0 (no common token)
    assert squad_metrics(["The."], [["a"]]) == {"exact_match": 100.0, "f1": 0.0}


@pytest.mark.parametrize(
    "preds, answers, match",
    [
        (["a"], [["a"], ["b"]], "predictions and answers differ in length: 1 vs 2"),
        ([], [], "zero examples"),
        (["a"], [[]], r"answers\[0\] is empty; every example needs at least one reference"),
        ([None], [["a"]], r"predictions\[0\] must be a string"),
    ],
)
def test_squad_invalid_input(preds, answers, match):
    with pytest.raises(ValueError, match=match):
        squad_metrics(preds, answers)


# ------------------------------------------------------------------------------- final number


@pytest.mark.parametrize(
    "text, number",
    [
        ("Natalia sold 48/2 = 24 clips in May.\n48+24 = 72 clips.\n#### 72", "72"),
        ("so she pays $1,250.50 in total. #### $1,250.50", "1250.5"),
        ("The answer is 18.", "18"),
        ("It costs $5 and then 3.0 more", "3"),
        ("first 7 then #### 12 and later 99", "12"),  # the number after the marker wins
        ("I computed 42 ####", "42"),  # marker with nothing after it: last number
        ("a loss of -7 dollars", "-7"),
        ("it takes 3-4 days", "4"),  # a range, not minus four
        ("about .5 of it", "0.5"),
        ("007 agents and -0.0 degrees", "0"),
        ("CO2 is 1,2345", "2345"),  # misplaced separator: not one number
        ("no digits at all", None),
        ("", None),
    ],
)
def test_extract_final_number(text, number):
    assert extract_final_number(text) == number


def test_final_number_accuracy_exact_values():
    result = final_number_accuracy(
        ["so the answer is 72.", "#### 1,000", "I do not know", "it is 5"],
        ["... #### 72", "#### 1000", "#### 3", "#### 6"],
    )
    assert result == {"final_number_accuracy": 50.0, "answered": 75.0}


@pytest.mark.parametrize(
    "preds, refs, match",
    [
        (["1"], ["1", "2"], "predictions and references differ in length: 1 vs 2"),
        ([], [], "zero examples"),
        (["1", "2"], ["#### 1", "no answer here"], r"references\[1\] contains no number: 'no answer here'"),
        ([None], ["1"], r"predictions\[0\] must be a string"),
    ],
)
def test_final_number_accuracy_invalid_input(preds, refs, match):
    with pytest.raises(ValueError, match=match):
        final_number_accuracy(preds, refs)
