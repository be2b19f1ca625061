"""The error a rejected report raises, and the reasons it is counted by."""

from __future__ import annotations

import enum


class RejectReason(enum.Enum):
    """The reason a sample or a whole snapshot was rejected, used as the `reason` label value."""

    UNKNOWN_FAMILY = "unknown_family"
    DERIVED_FAMILY = "derived_family"
    WRONG_TYPE = "wrong_type"
    WRONG_LABELS = "wrong_labels"
    BUCKET_BOUNDS = "bucket_bounds"
    NOT_FINITE = "not_finite"
    NEGATIVE = "negative"
    DECREASING = "decreasing"
    STALE = "stale"
    RETIRED_INCARNATION = "retired_incarnation"
    MALFORMED = "malformed"


class RejectedReportError(Exception):
    """A sample or snapshot that the aggregator rejected, with the reason."""

    def __init__(self, reason: RejectReason, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
