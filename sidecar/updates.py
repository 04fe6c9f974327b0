"""Changes to a customer's cached usage, as the usage pipeline, Stigg's realtime push and the
other replicas describe them to the entitlement cache."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class UsageChange:
    """A report just accepted here or on another replica: counted before Stigg has it."""

    customer_id: str
    resource_id: str | None
    feature_id: str
    behavior: str  # DELTA adds ``value``; SET replaces the usage with it
    value: float


@dataclass(frozen=True, slots=True)
class UsageFigure:
    """Stigg's own usage of one feature (pushed, or answered to a delivered batch)."""

    customer_id: str
    resource_id: str | None
    feature_id: str
    current_usage: float
    period_start: float | None = None  # epoch seconds
    period_end: float | None = None
    # Stigg's answer to a delivered batch predates reports accepted since, which are counted
    # already: the higher figure wins for an incremental meter in the same period.
    answers_batch: bool = False


UsageUpdate = UsageChange | UsageFigure
