"""Classification metrics against hand-computed values, and the checkpoint comparison rule."""

import json
import math

import pytest

from tuneforge.tasks.metrics import METRIC_DIRECTIONS, classification_metrics, metric_is_better

LABELS = ["neg", "neu", "pos"]
# Hand-worked example. Confusion matrix (rows = true, cols = predicted):
#          neg neu pos
#   neg  [  3,  1,  0 ]   support 4
#   neu  [  0,  2,  0 ]   support 2
#   pos  [  0,  1,  1 ]   support 2
# Column sums 3, 4, 1 -> precision 3/3, 2/4, 1/1; row sums 4, 2, 2 -> recall 3/4, 2/2, 1/2.
Y_TRUE = [0, 0, 0, 0, 1, 1, 2, 2]
Y_PRED = [0, 0, 0, 1, 1, 1, 2, 1]


def test_hand_computed_example():
    m = classification_metrics(Y_TRUE, Y_PRED, LABELS)

    assert m["accuracy"] == pytest.approx(6 / 8)
    assert m["macro_precision"] == pytest.approx((1 + 0.5 + 1) / 3)
    assert m["macro_recall"] == pytest.approx((0.75 + 1 + 0.5) / 3)
    # F1 = 2PR/(P+R): neg 6/7, neu 2/3, pos 2/3
    assert m["macro_f1"] == pytest.approx((6 / 7 + 2 / 3 + 2 / 3) / 3)
    assert m["per_class"]["neg"] == pytest.approx(
        {"precision": 1.0, "recall": 0.75, "f1": 6 / 7, "support": 4}
    )
    assert m["per_class"]["neu"] == pytest.approx(
        {"precision": 0.5, "recall": 1.0, "f1": 2 / 3, "support": 2}
    )
    assert m["per_class"]["pos"] == pytest.approx(
        {"precision": 1.0, "recall": 0.5, "f1": 2 / 3, "support": 2}
    )
    assert m["confusion_matrix"] == [[3, 1, 0], [0, 2, 0], [0, 1, 1]]
    assert m["label_names"] == LABELS
    assert m["num_examples"] == 8


def test_result_is_plain_json_in_label_order():
    m = classification_metrics(Y_TRUE, Y_PRED, LABELS)
    assert json.loads(json.dumps(m)) == m  # no numpy scalars sneak through
    assert list(m["per_class"]) == LABELS
    assert type(m["per_class"]["neg"]["support"]) is int
    assert all(type(v) is int for row in m["confusion_matrix"] for v in row)


def test_confusion_matrix_rows_are_true_labels():
    # Every "a" predicted as "b": the count must sit in row a, column b.
    m = classification_metrics([0, 0, 0], [1, 1, 1], ["a", "b"])
    assert m["confusion_matrix"] == [[0, 3], [0, 0]]


def test_class_never_predicted_gets_zero_precision():
    m = classification_metrics([0, 1, 2, 2], [0, 1, 1, 1], ["a", "b", "c"])
    assert m["per_class"]["c"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 2}
    assert m["per_class"]["b"]["precision"] == pytest.approx(1 / 3)


def test_class_absent_everywhere_still_listed_but_not_averaged():
    m = classification_metrics([0, 1], [0, 1], ["a", "b", "unused"])
    assert m["per_class"]["unused"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}
    assert m["confusion_matrix"] == [[1, 0, 0], [0, 1, 0], [0, 0, 0]]
    # Macro averages follow scikit-learn's default (classes seen in y_true or y_pred).
    assert m["macro_f1"] == pytest.approx(1.0)


@pytest.mark.parametrize(
    ("y_true", "y_pred", "names", "match"),
    [
        ([0, 1], [0], ["a", "b"], "length"),
        ([], [], ["a", "b"], "zero examples"),
        ([0, 2], [0, 1], ["a", "b"], "outside"),
        ([0, 1], [0, -1], ["a", "b"], "outside"),
    ],
)
def test_invalid_input_raises(y_true, y_pred, names, match):
    with pytest.raises(ValueError, match=match):
        classification_metrics(y_true, y_pred, names)


def test_metric_directions():
    from tuneforge.tasks import all_specs
    from tuneforge.tasks.multilabel import SPEC as MULTI_LABEL

    assert {"accuracy": "max", "macro_f1": "max", "loss": "min", "mse": "min", "entity_f1": "max"}.items() <= \
        METRIC_DIRECTIONS.items()
    # every metric a recipe may select on has a direction, and the same one in both tables
    for spec in [*all_specs(), MULTI_LABEL]:
        for name, direction in spec.selectable.items():
            assert METRIC_DIRECTIONS[name] == direction, (spec.name, name)


@pytest.mark.parametrize("name", ["accuracy", "macro_f1", "macro_precision", "macro_recall"])
def test_metric_is_better_for_max_metrics(name):
    assert metric_is_better(name, 0.8, 0.7)
    assert not metric_is_better(name, 0.6, 0.7)
    assert not metric_is_better(name, 0.7, 0.7)  # a tie is not an improvement
    assert metric_is_better(name, 0.0, None)


def test_metric_is_better_for_loss():
    assert metric_is_better("loss", 0.3, 0.4)
    assert not metric_is_better("loss", 0.5, 0.4)
    assert not metric_is_better("loss", 0.4, 0.4)
    assert metric_is_better("loss", 10.0, None)


def test_metric_is_better_with_nan():
    assert not metric_is_better("loss", math.nan, 0.4)
    assert not metric_is_better("loss", math.nan, None)
    assert metric_is_better("loss", 0.4, math.nan)


def test_metric_is_better_unknown_name_lists_known_ones():
    with pytest.raises(ValueError, match="unknown metric 'f2'") as info:
        metric_is_better("f2", 0.5, 0.4)
    for known in METRIC_DIRECTIONS:
        assert known in str(info.value)
