"""PUB side: market data and public system events with per-topic sequence numbers.

ZMQ PUB drops silently at the high-water mark; we send with NOBLOCK and count what could not be
queued, and XPUB tells us how many subscribers each topic has."""

from __future__ import annotations

import zmq

from common.framing import MAX_TOPIC, Codec
from common.schema import PubBody, Published


class Publisher:
    def __init__(self, sock: zmq.Socket, codec: Codec) -> None:
        self.sock = sock
        self.codec = codec
        self.seq: dict[str, int] = {}
        self._topics: dict[str, bytes] = {}  # encoded once per topic
        self.sent = 0
        self.dropped = 0

    def publish(self, topic: str, body: PubBody) -> int:
        seq = self.seq.get(topic, 0) + 1
        self.seq[topic] = seq
        msg = Published(topic=topic, seq=seq, body=body)
        raw = self.codec.encode_body(msg)
        tb = self._topics.get(topic)
        if tb is None:
            tb = topic.encode()
            if len(tb) > MAX_TOPIC or b"\0" in tb:  # a subscriber could not split it off: every one would drop it
                raise ValueError(f"topic {topic!r}: at most {MAX_TOPIC} bytes, no NUL")
            self._topics[topic] = tb
        try:
            self.sock.send(self.codec.encode_pub(tb, raw), zmq.NOBLOCK)
            self.sent += 1
        except zmq.Again:
            self.dropped += 1
        return seq
