"""Pacing the outbox by acknowledgements: which rows to send next, which are in flight, which to delete (no I/O but
the outbox's own).

Invariants: at most `window` rows are unacknowledged (window = min(max_inflight, the broker's Receive Maximum));
the outbox hands rows out in send order and never twice while connected (`Outbox.claim` keeps track of what was
handed out, over the database and the rows held in memory alike, so the pacer holds no cursor of its own); a row
paho did not take is given back (`unsent`) and goes out next; a row leaves the outbox only through `settle` (its ack:
delete; a refusal: drop, counted) or `refused` (paho would not take it); `reset` (on a lost connection) forgets what
was in flight and releases it in the outbox, so sending resumes from the oldest row still waiting.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

from agent.link.outbox import Outbox, OutboxRow

log = logging.getLogger("agent.link")


@dataclass(frozen=True, slots=True)
class Ack:
    """paho's report for one message id: delivered, or refused by the broker (a PUBACK failure reason)."""

    mid: int
    refused: str | None = None


class Pacer:
    """The in-flight window over the outbox."""

    def __init__(self, outbox: Outbox, max_inflight: int) -> None:
        self.outbox = outbox
        self.max_inflight = max_inflight
        self.window = max_inflight
        self._inflight: dict[int, int] = {}

    def set_receive_max(self, receive_max: int | None) -> None:
        """Applies the broker's Receive Maximum from CONNACK (65535 when absent)."""
        self.window = min(self.max_inflight, receive_max or 65535)

    @property
    def inflight(self) -> int:
        """Rows sent and not yet acknowledged."""
        return len(self._inflight)

    def next_rows(self) -> list[OutboxRow]:
        """The rows to send now, in order, as many as the window has room for (handed out until settled)."""
        room = self.window - len(self._inflight)
        return self.outbox.claim(room) if room > 0 else []

    def sent(self, row: OutboxRow, mid: int) -> None:
        """Records that `row` went out as message `mid`."""
        self._inflight[mid] = row.id

    def unsent(self, rows: Sequence[OutboxRow]) -> None:
        """Rows from `next_rows` that paho did not take now: they stay next in line."""
        if rows:
            self.outbox.unclaim(rows)

    def refused(self, row: OutboxRow, why: str) -> None:
        """paho would not take `row` (invalid topic, too large): drop it, counted as rejected."""
        log.warning("outbox row %d refused by paho (%s); dropped", row.id, why)
        self.outbox.reject([row.id])

    def settle(self, acks: list[Ack]) -> None:
        """Deletes acknowledged rows; a row the broker refused is dropped and counted. Other mids are ignored."""
        delivered: list[int] = []
        for ack in acks:
            row_id = self._inflight.pop(ack.mid, None)
            if row_id is None:
                continue
            if ack.refused is not None:
                log.warning("broker refused outbox row %d: %s", row_id, ack.refused)
                self.outbox.reject([row_id])
            else:
                delivered.append(row_id)
        self.outbox.ack(delivered)

    def reset(self) -> None:
        """Forgets what was in flight (the connection is gone); those rows will be sent again."""
        self._inflight.clear()
        self.outbox.release()


__all__ = ["Ack", "Pacer"]
