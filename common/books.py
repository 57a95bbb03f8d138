"""Per-agent books on one account: positions at average cost, realised P&L, cash use.

Pure arithmetic on integers (KRW); the OMS persists what it returns."""

from __future__ import annotations

from common.enums import Side
from common.schema import PositionView

_BUY = Side.BUY  # a module global: Side.BUY is a slow class-attribute lookup on Python 3.11, and this runs per fill


def apply_fill(pos: PositionView | None, code: str, side: Side, qty: int, price: int, fee: int = 0) -> PositionView:
    """The position after one fill of `qty` at `price`."""
    return apply_fill_value(pos, code, side, qty, qty * price, fee=fee)


def apply_fill_value(
    pos: PositionView | None, code: str, side: Side, qty: int, value: int, allow_short: bool = False, fee: int = 0
) -> PositionView:
    """The position after fills of `qty` shares worth `value` KRW in total, paying `fee` KRW
    (commission and tax, kept apart so cost and gross P&L stay comparable with the broker's).
    Sells take cost out at the average cost (floor), the rest of the proceeds is realised P&L.
    Agents cannot go short (the risk gate denies it); `allow_short` is for the 'external' owner,
    whose earlier holdings the books may never have seen (its short side carries no cost basis)."""
    cur = pos or PositionView(code=code, qty=0, cost=0, realized_pnl=0)
    fees = cur.fees + fee
    if side is _BUY:
        if cur.qty < 0:  # ('external' only) a buy first covers the short: its proceeds less this cost realised
            short, proceeds = -cur.qty, -cur.cost
            cover = min(qty, short)
            cover_value = value * cover // qty
            covered = proceeds * cover // short
            left = proceeds - covered  # of the short still open
            return PositionView(
                code=code,
                qty=cur.qty + qty,
                cost=-left if qty < short else value - cover_value,
                realized_pnl=cur.realized_pnl + covered - cover_value,
                fees=fees,
            )
        return PositionView(
            code=code, qty=cur.qty + qty, cost=cur.cost + value, realized_pnl=cur.realized_pnl, fees=fees
        )
    if qty > cur.qty:
        if not allow_short:
            raise ValueError(f"sell fill of {qty} {code} exceeds the position of {cur.qty}")
        # ('external': shares sold outside ktrader beyond what it is known to hold) the shares held are sold at
        # their average cost; the proceeds of the rest are the short's (negative) cost, so that its P&L at the
        # sale's price is 0 and what the sale brought in is in the books' cash (it was dropped: a sale of 8 shares
        # read as a loss of their whole value, 567,200 KRW)
        held = max(cur.qty, 0)
        removed = cur.cost if held else 0
        held_value = value * held // qty
        return PositionView(
            code=code,
            qty=cur.qty - qty,
            cost=(cur.cost if cur.qty < 0 else 0) - (value - held_value),
            realized_pnl=cur.realized_pnl + held_value - removed,
            fees=fees,
        )
    removed = cur.cost * qty // cur.qty if cur.qty else 0
    return PositionView(
        code=code,
        qty=cur.qty - qty,
        cost=cur.cost - removed,
        realized_pnl=cur.realized_pnl + value - removed,
        fees=fees,
    )


def reverse_fill_value(
    pos: PositionView | None, code: str, side: Side, qty: int, value: int, fee: int, cost_out: int = 0
) -> PositionView:
    """The position with a booked fill taken back (reconciliation: the broker does not have it).
    A buy gives back its shares and their cost; a sell gets its shares back with the cost it took out
    (`cost_out`, recorded when it was booked) and loses the P&L it realised. The fees it was charged
    are refunded. Shares sold since a bought fill are not there to give back: the quantity stops at 0."""
    cur = pos or PositionView(code=code, qty=0, cost=0, realized_pnl=0)
    fees = max(0, cur.fees - fee)
    if side is _BUY:
        left = max(0, cur.qty - qty)
        cost = max(0, cur.cost - value) if left else 0
        return PositionView(code=code, qty=left, cost=cost, realized_pnl=cur.realized_pnl, fees=fees)
    return PositionView(
        code=code,
        qty=cur.qty + qty,
        cost=cur.cost + cost_out,
        realized_pnl=cur.realized_pnl - (value - cost_out),
        fees=fees,
    )


def reprice_value(pos: PositionView | None, code: str, side: Side, value_delta: int, fee_delta: int) -> PositionView:
    """The position after reconciliation moved an order's filled value by `value_delta` KRW (the
    broker's value of the same shares) and its fees by `fee_delta`. A buy that cost more raises the
    cost basis while shares are held (else the P&L they realised absorbs it); a sell that brought more
    realises more. Either way `cost - realized_pnl`, what the fills drew from cash, moves by exactly
    what the broker's cash did."""
    cur = pos or PositionView(code=code, qty=0, cost=0, realized_pnl=0)
    fees = max(0, cur.fees + fee_delta)
    if side is _BUY and cur.qty > 0 and cur.cost + value_delta >= 0:
        return PositionView(
            code=code, qty=cur.qty, cost=cur.cost + value_delta, realized_pnl=cur.realized_pnl, fees=fees
        )
    realized = cur.realized_pnl - value_delta if side is _BUY else cur.realized_pnl + value_delta
    return PositionView(code=code, qty=cur.qty, cost=cur.cost, realized_pnl=realized, fees=fees)
