"""The repository port over the device's fleet link: requests on `repo/get`, answers on the device's blocks topic.

Each request goes out with an MQTT 5 response topic (`devices/{device}/blocks/{session}`, which the broker ACL lets
only this device read and only the repository write) and correlation data of its own; the answers are routed to the
request by their correlation data. The link hands the answers over on its network thread (a direct subscription),
where this port only puts them in the request's queue: nothing waits behind the link's command thread, and a
window of blocks is taken in at the speed it arrives.

Invariants: answers to an abandoned or unknown request are dropped (counted); a request made while the link is not
connected raises `LinkError` at once; the port holds no more than the answers of the requests in flight.
"""

from __future__ import annotations

import logging
import os
import queue
import secrets
import threading
import time
from collections.abc import Iterator

from agent.errors import LinkError
from agent.link import InboundMessage, Link
from agent.ota.port import Message
from agent.release.formats import RepoRequest

log = logging.getLogger("agent.ota")


class MqttRepoPort:
    """`RepoPort` over a running `Link`."""

    def __init__(self, link: Link) -> None:
        self._link = link
        self._response_topic = link.topics.blocks(secrets.token_hex(4))
        self._lock = threading.Lock()
        self._waiting: dict[bytes, queue.SimpleQueue[Message]] = {}
        self.unrouted = 0
        link.subscribe(self._response_topic, self._on_answer, qos=1, direct=True)

    def _on_answer(self, message: InboundMessage) -> None:
        """Network thread: hands one answer to the request it belongs to."""
        with self._lock:
            target = self._waiting.get(message.correlation or b"")
        if target is None:
            self.unrouted += 1
            return
        target.put((dict(message.user_properties), message.payload))

    def request(self, request: RepoRequest, timeout_s: float) -> Iterator[Message]:
        """Sends `request` now; the iterator yields its answers, or raises TimeoutError at the deadline."""
        correlation = os.urandom(8)
        answers: queue.SimpleQueue[Message] = queue.SimpleQueue()
        with self._lock:
            self._waiting[correlation] = answers
        payload = request.model_dump_json(by_alias=True).encode()
        try:
            sent = self._link.request(
                self._link.topics.repo_get,
                payload,
                response_topic=self._response_topic,
                correlation=correlation,
            )
        except Exception:
            self._forget(correlation)
            raise
        if not sent:
            self._forget(correlation)
            raise LinkError("the fleet link is not connected: the repository cannot be reached")
        return self._answers(correlation, answers, time.monotonic() + timeout_s)

    def _answers(
        self, correlation: bytes, answers: queue.SimpleQueue[Message], deadline: float
    ) -> Iterator[Message]:
        try:
            while True:
                try:
                    yield answers.get_nowait()
                    continue
                except queue.Empty:
                    pass
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError("the repository did not answer in time")
                try:
                    yield answers.get(timeout=left)
                except queue.Empty:
                    raise TimeoutError("the repository did not answer in time") from None
        finally:
            self._forget(correlation)

    def _forget(self, correlation: bytes) -> None:
        with self._lock:
            self._waiting.pop(correlation, None)


__all__ = ["MqttRepoPort"]
