"""Reconciliation: local orders + the broker's reports of the day → the events that make our books
agree with the broker, and alerts for every discrepancy.

Pure: no I/O, no clock of its own. The broker is authoritative for what happened at the exchange
(fills, cancels, rejects, orders we did not place); we are authoritative for who owns what.

- A local order matched by ODNO (its chain includes revisions) takes the broker's cumulative fill
  quantity (missing fills are synthesised with the broker's value), its cancellation and rejection.
- A submit whose outcome is UNKNOWN is matched to an unclaimed broker order with the same code,
  side, quantity and price placed at or after our intent; if none appears within `grace_ns`, it
  never reached the exchange and is rejected locally (it can no longer fill).
- A broker order nobody claims is external (HTS app, another program): reported for attribution.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from common.orders import (
    Accept, Cancelled, Expire, Fill, OrderEvent, OrderState, Order, Reject, Replaced,
)
from kis.port import BrokerOrderReport

NOT_AT_BROKER = "NOT_AT_BROKER"


@dataclass
class ReconcileResult:
    events: dict[str, list[OrderEvent]] = field(default_factory=dict)  # client order id → events, in order
    external: list[BrokerOrderReport] = field(default_factory=list)  # broker orders nobody here placed
    alerts: list[str] = field(default_factory=list)

    def add(self, coid: str, ev: OrderEvent) -> None:
        self.events.setdefault(coid, []).append(ev)


def _hhmmss_ns(day_start_ns: int, hhmmss: str) -> int | None:
    if len(hhmmss) != 6 or not hhmmss.isdigit():
        return None
    h, m, s = int(hhmmss[:2]), int(hhmmss[2:4]), int(hhmmss[4:])
    return day_start_ns + ((h * 60 + m) * 60 + s) * 1_000_000_000


def reconcile(
    local: list[Order],
    reports: list[BrokerOrderReport],
    *,
    now_ns: int,
    grace_ns: int = 30_000_000_000,
    known_external: frozenset[str] = frozenset(),
) -> ReconcileResult:
    res = ReconcileResult()
    by_odno: dict[str, Order] = {}
    for o in local:
        for odno in o.broker_chain:
            by_odno[odno] = o
    originals = [r for r in reports if not r.is_cancel and not r.is_modify]
    claimed: set[str] = set()

    # revise/cancel lines belong to the order whose ODNO they name
    for r in reports:
        if r.is_cancel or r.is_modify:
            owner = by_odno.get(r.orig_broker_order_id)
            if owner is not None:
                claimed.add(r.broker_order_id)
                if r.is_modify and r.broker_order_id not in owner.broker_chain and owner.state is OrderState.PENDING_REPLACE:
                    res.add(owner.client_order_id, Replaced(ts_ns=now_ns, broker_order_id=r.broker_order_id,
                                                            price=r.price, qty=owner.filled_qty + r.qty))
            elif r.orig_broker_order_id in known_external or not by_odno:
                claimed.add(r.broker_order_id)

    # UNKNOWN / PENDING_SUBMIT orders without an ODNO: find their twin among unclaimed originals
    unresolved = [o for o in local if not o.broker_order_id and o.state in (OrderState.UNKNOWN, OrderState.PENDING_SUBMIT)]
    for o in sorted(unresolved, key=lambda x: x.created_ns):
        match = next((r for r in originals if r.broker_order_id not in by_odno and r.broker_order_id not in claimed
                      and (r.code, r.side, r.qty, r.price) == (o.code, o.side, o.qty, o.price)), None)
        if match is not None:
            claimed.add(match.broker_order_id)
            res.add(o.client_order_id, Accept(ts_ns=now_ns, broker_order_id=match.broker_order_id, org_no=match.org_no))
            by_odno[match.broker_order_id] = o
            res.alerts.append(f"{o.client_order_id}: outcome was unknown; the broker has it as {match.broker_order_id}")
        elif o.state is OrderState.UNKNOWN and now_ns - o.updated_ns > grace_ns:
            res.add(o.client_order_id, Reject(ts_ns=now_ns, code=NOT_AT_BROKER,
                                              reason="sent but never reached the exchange (not in the day's orders)"))
            res.alerts.append(f"{o.client_order_id}: outcome was unknown; not at the broker after the grace period: rejected")

    # every original the broker reports: bring the owning order to the broker's state
    for r in originals:
        owner = by_odno.get(r.broker_order_id)
        if owner is None:
            if r.broker_order_id not in claimed and r.broker_order_id not in known_external:
                res.external.append(r)
            continue
        claimed.add(r.broker_order_id)
        coid = owner.client_order_id
        pending = res.events.get(coid, [])
        local_filled = owner.filled_qty
        local_value = owner.filled_value
        if r.filled_qty > local_filled:
            qty = r.filled_qty - local_filled
            value = r.filled_value - local_value
            price = value // qty if qty and value > 0 else r.avg_fill_price or r.price
            # one synthesised fill for everything we missed; its id names the broker's cumulative
            # quantity, so a later notice of the same fill is refused as a duplicate in quantity
            res.add(coid, Fill(ts_ns=now_ns, fill_id=f"recon:{r.broker_order_id}:{r.filled_qty}", qty=qty, price=price,
                               broker_order_id=r.broker_order_id))
            res.alerts.append(f"{coid}: {qty} filled at the broker but missing here: added at {price}")
        elif r.filled_qty < local_filled:
            res.alerts.append(f"{coid}: we count {local_filled} filled, the broker {r.filled_qty} (left as is: check)")
        filled_after = max(local_filled, r.filled_qty)
        open_here = owner.state in (OrderState.ACCEPTED, OrderState.PARTIALLY_FILLED, OrderState.PENDING_CANCEL,
                                    OrderState.PENDING_REPLACE, OrderState.UNKNOWN) or any(isinstance(e, Accept) for e in pending)
        broker_done = r.remaining_qty == 0 and filled_after < owner.qty
        if open_here and broker_done:
            if r.rejected_qty and not r.filled_qty:
                res.add(coid, Reject(ts_ns=now_ns, code="BROKER_REJECTED", reason="rejected at the exchange"))
            elif r.cancelled_qty:
                res.add(coid, Cancelled(ts_ns=now_ns))
            else:
                res.add(coid, Expire(ts_ns=now_ns))
    return res
