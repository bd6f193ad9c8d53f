"""What a prediction holds per task: the one owner of the task → prediction-field mapping.

Serving answers, batch-prediction columns, the package signature, the pre-exposure contract test and the canary's
prediction histogram all name their fields from here.
"""

from __future__ import annotations

__all__ = ["PREDICTION_FIELDS", "prediction_fields", "score_field"]

# The score first (what quality metrics and prediction-shift histograms read), then the decided label.
PREDICTION_FIELDS: dict[str, tuple[str, ...]] = {
    "binary": ("probability", "label"),
    "multiclass": ("probabilities", "label"),
    "regression": ("value",),
}


def prediction_fields(task: str) -> tuple[str, ...]:
    """The fields of one prediction for ``task`` (binary, multiclass or regression)."""
    return PREDICTION_FIELDS[task]


def score_field(task: str) -> str:
    """The field holding the score: the probability, the class probabilities, or the regressed value."""
    return PREDICTION_FIELDS[task][0]
