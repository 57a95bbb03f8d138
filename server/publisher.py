"""PUB side: market data and public system events with per-topic sequence numbers.

ZMQ PUB drops at a subscriber's high-water mark for that subscriber alone (no XPUB_NODROP: one stuck
subscriber must not take the market from all, server/gateway.py); every frame carries its topic's
sequence number, so a subscriber that lost some sees the gap and heals with a snapshot. We send with
NOBLOCK (a send never waits on the loop) and count what could not be queued at all; XPUB tells us how
many subscribers each topic has. Every frame carries this gateway process's publisher token
(common/framing.py: how subscribers know it is ours)."""

from __future__ import annotations

import zmq

from common.framing import MAX_TOPIC, Codec
from common.schema import PubBody, Published


SNDHWM = 100_000  # messages queued per subscriber before ZMQ drops for it


def pub_socket(ctx: zmq.Context) -> zmq.Socket:
    """The gateway's XPUB socket (not bound). No XPUB_NODROP: with it one subscriber at its high-water
    mark (an agent hung in its strategy, alive, still connected) makes every send fail and every agent
    loses the market with it; without it ZMQ drops for that subscriber alone, which sees the gap in its
    topic's sequence and heals."""
    xpub = ctx.socket(zmq.XPUB)
    xpub.setsockopt(zmq.LINGER, 0)
    xpub.setsockopt(zmq.SNDHWM, SNDHWM)  # read at call time (a test lowers it)
    return xpub


class Publisher:
    def __init__(self, sock: zmq.Socket, codec: Codec, session: str) -> None:
        """`session`: the gateway process's session id (its headers' sid)."""
        self.sock = sock
        self.codec = codec
        self.token = codec.publisher_token(session)
        self.seq: dict[str, int] = {}
        self._heads: dict[str, bytes] = {}  # per topic: the frame up to the body (Codec.encode_pub)
        self.sent = 0
        self.dropped = 0

    def publish(self, topic: str, body: PubBody) -> int:
        seq = self.seq.get(topic, 0) + 1
        self.seq[topic] = seq
        raw = self.codec.encode_body(Published(topic=topic, seq=seq, body=body))
        head = self._heads.get(topic)
        if head is None:
            tb = topic.encode()
            if len(tb) > MAX_TOPIC or b"\0" in tb:  # a subscriber could not split it off: every one would drop it
                raise ValueError(f"topic {topic!r}: at most {MAX_TOPIC} bytes, no NUL")
            head = self._heads[topic] = Codec.encode_pub(tb, b"", self.token)
        try:
            self.sock.send(head + raw, zmq.NOBLOCK)
            self.sent += 1
        except zmq.Again:
            self.dropped += 1
        return seq
