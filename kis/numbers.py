"""KIS number strings → Python numbers: the one parser every part of the KIS client uses.

KIS sends every number as a string: "70000", "+1500", "-0100", " 12 ", "", a decimal "3450.00" for an
integer field now and then, a figure with thousands separators ("130,000", groups of three) in an order
list row now and then. Money and counts are integers (KRW, shares): a decimal rounds half up.
Ratios (PER, rates) are floats. A string that is not a number at all raises NumberError: a field we
cannot read is never silently zero (the caller decides: drop the frame, mark a reply doubtful)."""

from __future__ import annotations

import re
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation

_DECIMAL = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)")
# thousands separators as a person writes them ("130,000", "-1,234,567.5"): groups of three, nothing else
_GROUPED = re.compile(r"[+-]?\d{1,3}(,\d{3})+(\.\d*)?", re.ASCII)


class NumberError(ValueError):
    pass


def krw(s: str | None) -> int:
    """An integer field (KRW, shares, counts). '' and None → 0."""
    if not s:
        return 0
    if "_" not in s:  # (int() would read "1_000" as 1000: Python's digit grouping, not KIS's)
        try:
            return int(s)  # the common case: plain digits (a sign and surrounding blanks are fine too)
        except ValueError:
            pass
    t = s.strip()
    if not t:
        return 0
    if _GROUPED.fullmatch(t):  # "130,000": a figure written with thousands separators
        t = t.replace(",", "")
    elif not _DECIMAL.fullmatch(t):  # KIS writes plain decimals: an exponent, NaN or inf is not a figure
        raise NumberError(f"not a number: {s!r}")
    try:
        return int(Decimal(t).to_integral_value(ROUND_HALF_UP))
    except InvalidOperation:
        raise NumberError(f"not a number: {s!r}") from None


def ratio(s: str | None) -> float:
    """A ratio field (PER, PBR, change %): not money, so a float. '' and None → 0.0."""
    t = (s or "").strip()
    if not t:
        return 0.0
    if _GROUPED.fullmatch(t):
        t = t.replace(",", "")
    elif not _DECIMAL.fullmatch(t):
        raise NumberError(f"not a number: {s!r}")
    return float(t)
