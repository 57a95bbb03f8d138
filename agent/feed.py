"""Per-topic sequence tracking for the PUB/SUB feed: detects gaps so the runtime can heal them
with a fresh snapshot (PUB drops silently at its high-water mark)."""

from __future__ import annotations


class SequenceTracker:
    def __init__(self) -> None:
        self.last: dict[str, int] = {}
        self.gaps = 0
        self.missed = 0

    def see(self, topic: str, seq: int) -> int:
        """Record `seq` for `topic`; returns how many messages were missed before it (0 = none).
        The first message seen on a topic sets the baseline. Old/duplicate messages return -1."""
        last = self.last.get(topic)
        if last is None:
            self.last[topic] = seq
            return 0
        if seq <= last:
            return -1
        self.last[topic] = seq
        missed = seq - last - 1
        if missed:
            self.gaps += 1
            self.missed += missed
        return missed
