"""Medians, spreads, percentiles and ratios: the numbers every benchmark reports."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0-100), linear between closest ranks, as numpy's default does."""
    if not values:
        raise ValueError("percentile of nothing")
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low, high = math.floor(rank), math.ceil(rank)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


@dataclass(frozen=True)
class Summary:
    """Repetitions of one measurement: the median is the value, min..max the spread."""

    samples: tuple[float, ...]

    @property
    def median(self) -> float:
        return percentile(self.samples, 50)

    @property
    def low(self) -> float:
        return min(self.samples)

    @property
    def high(self) -> float:
        return max(self.samples)

    @property
    def spread(self) -> float:
        """(max - min) / median: how much to trust the median on this noisy machine."""
        median = self.median
        return (self.high - self.low) / median if median else 0.0

    def as_dict(self) -> dict:
        return {
            "median": self.median,
            "min": self.low,
            "max": self.high,
            "spread": self.spread,
            "samples": list(self.samples),
        }


def summarize(samples: Sequence[float]) -> Summary:
    return Summary(tuple(float(s) for s in samples))


@dataclass
class Row:
    """One line of the results table: the project's number, its comparator's, and the goal.

    `ratio` is project / comparator in the row's unit; `goal` is (op, value) on the ratio or,
    for rows without a comparator, on the project's median (e.g. p99 <= 50 ms).
    """

    bench: str
    metric: str
    unit: str
    project: Summary
    comparator_name: str | None = None
    comparator: Summary | None = None
    goal: tuple[str, float] | None = None
    goal_on: str = "ratio"  # "ratio" or "value"
    note: str = ""
    error: str | None = None  # set when the row could not be measured (a failure)
    extra: dict = field(default_factory=dict)

    @property
    def ratio(self) -> float | None:
        if self.comparator is None or not self.comparator.median:
            return None
        return self.project.median / self.comparator.median

    @property
    def ratio_range(self) -> tuple[float, float] | None:
        """The worst and best pairing of samples: how far noise could move the ratio."""
        c = self.comparator
        if c is None or c.low <= 0 or c.high <= 0:
            return None
        p = self.project
        return (p.low / c.high, p.high / c.low)

    @property
    def met(self) -> bool | None:
        if self.error is not None:
            return False
        if self.goal is None:
            return None
        value = self.ratio if self.goal_on == "ratio" else self.project.median
        if value is None:
            return False
        op, limit = self.goal
        return value >= limit if op == ">=" else value <= limit

    def goal_text(self) -> str:
        if self.goal is None:
            return ""
        op, limit = self.goal
        unit = "x" if self.goal_on == "ratio" else f" {self.unit}"
        return f"{op} {limit:g}{unit}"

    def as_dict(self) -> dict:
        data = asdict(self)
        data["project"] = self.project.as_dict()
        data["comparator"] = self.comparator.as_dict() if self.comparator else None
        data["ratio"] = self.ratio
        data["ratio_range"] = self.ratio_range
        data["met"] = self.met
        data["goal"] = list(self.goal) if self.goal else None
        return data

    @classmethod
    def from_dict(cls, data: dict) -> Row:
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        known["project"] = summarize(data["project"]["samples"])
        if data.get("comparator"):
            known["comparator"] = summarize(data["comparator"]["samples"])
        if data.get("goal"):
            known["goal"] = (data["goal"][0], float(data["goal"][1]))
        return cls(**known)


def failed(bench: str, metric: str, error: str) -> Row:
    """A row for a measurement that could not run: it fails the suite, never reads as a pass."""
    return Row(bench, metric, "", summarize([0.0]), error=error)
