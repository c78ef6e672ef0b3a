"""Warranty and entitlement: what the registration form is for.

The warranty runs for the configured number of months from the sale date a dealer recorded; until a
sale is recorded, from the manufacturing date (the unit is in stock, and its clock already runs).
The entitlement answer is the one sentence a dealer or support needs on the phone.
"""

from __future__ import annotations

import calendar
from dataclasses import dataclass
from datetime import date


def add_months(start: date, months: int) -> date:
    """Return the same day ``months`` later (the month's last day when it has no such day)."""
    month0 = start.month - 1 + months
    year, month = start.year + month0 // 12, month0 % 12 + 1
    return date(year, month, min(start.day, calendar.monthrange(year, month)[1]))


@dataclass(frozen=True)
class Warranty:
    """When a unit's warranty started, from what, and until when it runs."""

    start: date
    basis: str  # "sale" or "manufacturing"
    end: date
    entitled: bool

    def sentence(self) -> str:
        """Return the answer to "is this unit entitled to free support?"."""
        if self.entitled:
            return f"entitled to free support until {self.end.isoformat()}"
        return "not entitled"


def warranty(manufactured: date, sold_on: date | None, months: int, today: date) -> Warranty:
    """Return the warranty of a unit from its manufacturing and (if recorded) sale dates."""
    start, basis = (sold_on, "sale") if sold_on is not None else (manufactured, "manufacturing")
    end = add_months(start, months)
    return Warranty(start, basis, end, today <= end)
