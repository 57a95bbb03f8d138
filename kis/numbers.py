"""KIS number strings → Python numbers: the one parser every part of the KIS client uses.

KIS sends every number as a string: "70000", "+1500", "-0100", " 12 ", "", a decimal "3450.00" for an
integer field now and then. Money and counts are integers (KRW, shares): a decimal rounds half up.
Ratios (PER, rates) are floats. A string that is not a number at all raises NumberError: a field we
cannot read is never silently zero (the caller decides: drop the frame, mark a reply doubtful)."""

from __future__ import annotations

import re
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation

_DECIMAL = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)")


class NumberError(ValueError):
    pass


def krw(s: str | None) -> int:
    """An integer field (KRW, shares, counts). '' and None → 0."""
    if not s:
        return 0
    try:
        return int(s)  # the common case: plain digits (a sign and surrounding blanks are fine too)
    except ValueError:
        pass
    t = s.strip()
    if not t:
        return 0
    if not _DECIMAL.fullmatch(t):  # KIS writes plain decimals: an exponent, NaN or inf is not a figure
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
    if not _DECIMAL.fullmatch(t):
        raise NumberError(f"not a number: {s!r}")
    return float(t)
