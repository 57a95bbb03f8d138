"""`ktrader notify-test`: one test message through every channel of the gateway config's [notify], each told
delivered or why not (a wrong chat id, a password, a port, a certificate) before a real alert depends on it. The
gateway need not run; nothing of a running one's queue or de-duplication is touched."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from common.config import NotifyConfig
from common.enums import AlertKind
from server.notifier import Alert, Channel, SendError, channels_for, gateway_label, send_deadline


@dataclass(frozen=True)
class Tried:
    channel: str
    ok: bool
    why: str = ""  # what failed, and whether it is the configuration's (retrying would not heal it)


TEXT = "a test message from `ktrader notify-test`: this channel reaches you"


async def send_test(cfg: NotifyConfig, run_dir: str) -> list[Tried]:
    """Every channel at once (a slow one delays no other), each within its own deadline."""
    gateway = gateway_label(run_dir)
    channels = channels_for(cfg, gateway)
    alert = Alert(kind=AlertKind.OPERATOR, text=TEXT)

    async def one(ch: Channel) -> Tried:
        deadline = send_deadline(ch)
        try:
            await asyncio.wait_for(ch.send(alert, alert.line(gateway)), deadline)
            return Tried(ch.name, True)
        except SendError as e:
            return Tried(
                ch.name, False, f"{e}" + (": a configuration problem (fix it in [notify])" if e.config else "")
            )
        except TimeoutError:
            return Tried(ch.name, False, f"no answer within {deadline:.0f} s")
        finally:
            await ch.close()

    return list(await asyncio.gather(*(one(c) for c in channels)))
