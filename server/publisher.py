"""PUB side: market data and public system events with per-topic sequence numbers.

ZMQ PUB drops silently at the high-water mark; we send with NOBLOCK and count what could not be
queued, and XPUB tells us how many subscribers each topic has. Every frame carries this gateway
process's publisher token (common/framing.py: how subscribers know it is ours)."""

from __future__ import annotations

import zmq

from common.framing import MAX_TOPIC, Codec
from common.schema import PubBody, Published


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
