"""Typed identifiers. Validation happens when msgspec decodes a message or a card (Meta patterns)
and through the `check_*` helpers for values built in code."""

from __future__ import annotations

import datetime as dt
import re
from typing import Annotated

import msgspec

from common.clock import date_of

AGENT_ID_PATTERN = r"^[a-z][a-z0-9_]{0,30}[a-z0-9]$"
# KRX short code: 6 characters; digits, and since 2024 alphanumeric codes (e.g. 0009K0) exist.
STOCK_CODE_PATTERN = r"^[0-9][0-9A-Z]{5}$"
# <agent-id>-<yyyymmdd>-<n>
CLIENT_ORDER_ID_PATTERN = r"^[a-z][a-z0-9_]{0,30}[a-z0-9]-[0-9]{8}-[0-9]{1,9}$"
BROKER_ORDER_ID_PATTERN = r"^[0-9]{1,10}$"  # KIS ODNO: up to 10 digits, zero-padded on the wire

AgentId = Annotated[str, msgspec.Meta(pattern=AGENT_ID_PATTERN, description="lower-case agent id")]
StockCode = Annotated[str, msgspec.Meta(pattern=STOCK_CODE_PATTERN, description="6-character KRX short code")]
ClientOrderId = Annotated[str, msgspec.Meta(pattern=CLIENT_ORDER_ID_PATTERN, description="<agent>-<yyyymmdd>-<n>")]
BrokerOrderId = Annotated[str, msgspec.Meta(pattern=BROKER_ORDER_ID_PATTERN, description="KIS ODNO")]
SessionId = Annotated[str, msgspec.Meta(min_length=8, max_length=64)]

EXTERNAL_AGENT = "external"  # owner of orders placed outside ktrader (HTS app, other programs)
# Order numbers from here up are issued by the gateway on an agent's behalf (flatten, end of day),
# so they never collide with the agent's own counter, which starts at 1 each day.
GATEWAY_ORDER_BASE = 900_000_000

_CODE_RE = re.compile(STOCK_CODE_PATTERN)
_COID_RE = re.compile(CLIENT_ORDER_ID_PATTERN)


class IdError(ValueError):
    pass


def check_stock_code(value: str) -> str:
    if not _CODE_RE.match(value):
        raise IdError(f"bad stock code {value!r}: a KRX short code is 6 characters, e.g. '005930'")
    return value


def make_client_order_id(agent: str, day: dt.date, n: int) -> str:
    return f"{agent}-{day:%Y%m%d}-{n}"


def parse_client_order_id(value: str) -> tuple[str, dt.date, int]:
    if not _COID_RE.match(value):
        raise IdError(f"bad client order id {value!r}: expected <agent>-<yyyymmdd>-<n>")
    agent, day, n = value.rsplit("-", 2)
    try:
        return agent, date_of(day), int(n)
    except ValueError:
        raise IdError(f"bad client order id {value!r}: {day} is not a date") from None


def placed_by_gateway(client_order_id: str) -> bool:
    """An order the gateway placed on an agent's behalf (a protective exit, a flatten sell): numbered
    from GATEWAY_ORDER_BASE up, apart from the agent's own."""
    _, _, n = client_order_id.rpartition("-")
    return n.isdigit() and int(n) >= GATEWAY_ORDER_BASE  # (an id not of ours -- a test's, a tool's -- is no exit)
