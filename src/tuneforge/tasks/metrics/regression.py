"""Regression metrics: error sizes (MSE, RMSE, MAE), agreement (Pearson, Spearman) and R².

Errors say how far predictions are in the target's own unit; correlations say whether the model
orders examples correctly, which is what STS-B-style benchmarks report. scipy is imported inside
the function: the trainer imports the metric modules at start-up and should not pay for it.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from tuneforge.tasks.metrics.inputs import check_lengths, finite_array

REGRESSION_METRICS: tuple[str, ...] = ("mse", "rmse", "mae", "pearson", "spearman", "r2")


def regression_metrics(preds: Sequence[float] | np.ndarray, targets: Sequence[float] | np.ndarray) -> dict:
    """MSE, RMSE, MAE, Pearson r, Spearman rho and R² of 1-D predictions against targets.

    Undefined correlations are reported as 0.0, not NaN: Pearson and Spearman divide by the
    spread of both inputs, so they do not exist when the predictions or the targets are all equal
    (a freshly initialised head often predicts one value; one example is always constant). 0.0 is
    the score of a predictor with no relation to the targets, it keeps reports valid JSON, and a
    run selecting checkpoints on ``pearson`` is not stuck with "no best checkpoint" because
    ``metric_is_better`` never prefers NaN. R² with constant targets follows scikit-learn: 1.0 for
    a perfect fit, else 0.0.
    """
    check_lengths("preds", preds, "targets", targets)
    p = finite_array("preds", preds, ndim=1)
    t = finite_array("targets", targets, ndim=1)
    errors = p - t
    mse = float(np.mean(errors**2))
    ss_res = float(np.sum(errors**2))
    ss_tot = float(np.sum((t - t.mean()) ** 2))
    if ss_tot == 0.0:
        r2 = 1.0 if ss_res == 0.0 else 0.0
    else:
        r2 = 1.0 - ss_res / ss_tot
    return {
        "mse": mse,
        "rmse": float(np.sqrt(mse)),
        "mae": float(np.mean(np.abs(errors))),
        "pearson": _correlation("pearson", p, t),
        "spearman": _correlation("spearman", p, t),
        "r2": r2,
    }


def _correlation(kind: str, p: np.ndarray, t: np.ndarray) -> float:
    """Pearson or Spearman coefficient; 0.0 when undefined (see ``regression_metrics``)."""
    # Checked before calling scipy, which would warn and return NaN for constant input.
    if np.ptp(p) == 0.0 or np.ptp(t) == 0.0:
        return 0.0
    from scipy.stats import pearsonr, spearmanr  # deferred: see module docstring

    result = pearsonr(p, t) if kind == "pearson" else spearmanr(p, t)
    return float(result.statistic)
