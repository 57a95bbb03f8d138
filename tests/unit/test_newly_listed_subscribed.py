"""A code an agent's card names that the gateway's stock master did not list at its registration (today's listing
while the gateway still had yesterday's master, a restart's background refresh) is subscribed once a newer master
lists it, the agent told (a hunt): the registration skipped it ("not subscribed") and nothing subscribed it later,
so the agent got none of its prints all day while its orders passed the gate."""

from __future__ import annotations

from kis.master import twin_master
from kis.port import MarketKind
from tests.unit.test_approvals_owner_revoke import Gateways, card, cards_dir, gateways  # noqa: F401 (fixtures)
from common.config import BrokerEnv


async def test_a_code_listed_after_the_registration_is_subscribed_then(gateways: Gateways) -> None:  # noqa: F811
    gw = gateways.start(BrokerEnv.SIM)
    master = twin_master()
    gw.sessions.listed = lambda code: False  # yesterday's master: the card's code not in it yet
    _, rec = gw.registry.register(card("alpha"), b"route", "session", 1, "h")
    gw.sessions._subscribe_card(rec)  # what a registration does
    key = (MarketKind.TRADES, "005930")
    assert "alpha" not in gw.subs.holders.get(key, set())
    gw._install_master(master)  # the day's master, downloaded: it lists the code
    assert "alpha" in gw.subs.holders[key]
    gw._install_master(master)  # again (the next refresh): nothing twice
    assert "alpha" in gw.subs.holders[key]
