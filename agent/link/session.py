"""The link's network thread: connects with backoff, drains the outbox paced by acks, sends replies and status.

Invariants:
- Every call into paho happens on this one thread (`link-net`); other threads hand work over through `send`,
  `request_status` and `add_subscription`, and get state through the `StateCell`. paho's callbacks run inside
  `Client.loop` on this thread and only record what happened; this thread acts on it right after.
- The outbox is paced by the `Pacer` (pacer.py): at most min(max_inflight, the broker's Receive Maximum) rows
  unacknowledged; a row is deleted only when its PUBACK arrives (or, for QoS 0, when paho wrote it). On a lost
  connection paho's unacknowledged messages are dropped and the pacer reset (the outbox forgets what it handed out),
  so the outbox (its database, and the rows it holds in memory while the database cannot be written) is the only
  source of truth and sending resumes from the oldest unacknowledged row, in order.
- The last will (retained `offline`, reason `lost`) is set before every connect with the birth number that connection
  will use; the number is committed to disk before the retained `online` status goes out. A clean stop publishes
  `offline` (reason `stopped`) itself, waits for its PUBACK, then sends DISCONNECT with reason 0, which discards the will.
- No paho, ssl or socket exception leaves this module; each failure becomes a `ConnectFailed` subclass (wrapped at
  the paho boundary, mqtt.py, which also wires paho's callbacks), one log line, and the `refused` or `disconnected`
  state.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from paho.mqtt.enums import MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from pydantic import SecretStr

from agent.backoff import Backoff
from agent.link import diagnose
from agent.link.config import LinkConfig
from agent.link.errors import ConnectFailed, TlsFailure
from agent.link.mqtt import (
    Callbacks,
    Connack,
    InboundMessage,
    Outgoing,
    Reason,
    attach,
    build_client,
    certificate_problem,
    connect,
    connect_properties,
    loop,
    publish_properties,
    with_certificate,
)
from agent.link.outbox import Outbox
from agent.link.pacer import Ack, Pacer
from agent.link.state import BirthCounter, StateCell
from agent.link.topics import Topics

log = logging.getLogger("agent.link")

LOOP_TIMEOUT_S = 0.05
"""Longest wait in paho's select; bounds the delay between a put and its send when the link is idle."""
STABLE_S = 10.0
"""A connection that held this long resets the backoff to initial_s."""
STOP_ACK_TIMEOUT_S = 1.0
STOP_DRAIN_SHARE = 0.6
"""Of a clean stop's time, the share spent sending what waits in the outbox before the offline status."""


@dataclass
class _Events:
    """What paho's callbacks recorded during one `loop` call."""

    connack: Connack | None = None
    acks: list[tuple[int, Reason]] = field(default_factory=list)
    server_disconnect: str | None = None
    socket_error: str | None = None


StatusPayload = Callable[[str, int, "str | None"], bytes]
"""(state, birth, reason) -> the JSON status payload."""


class Session:
    """Owns the paho client and the network thread's loop."""

    def __init__(
        self,
        config: LinkConfig,
        topics: Topics,
        outbox: Outbox,
        state: StateCell,
        birth: BirthCounter,
        status_payload: StatusPayload,
        deliver: Callable[[InboundMessage], None],
        password: SecretStr | None,
        stop: threading.Event,
    ) -> None:
        self.config = config
        self.topics = topics
        self.outbox = outbox
        self.state = state
        self.birth = birth
        self._status_payload = status_payload
        self._stop = stop
        self._backoff = Backoff(config.backoff)
        self._outgoing: queue.SimpleQueue[Outgoing] = queue.SimpleQueue()
        self._status_wanted = threading.Event()
        self._subscriptions: dict[str, int] = {topics.cmd_filter: 1}
        self._new_subscriptions: queue.SimpleQueue[tuple[str, int]] = queue.SimpleQueue()
        self._events = _Events()
        self.pacer = Pacer(outbox, config.max_inflight)
        self._current_birth = 0
        # Set by Link.stop before it signals the stop: the clean stop (offline, PUBACK wait, DISCONNECT) ends by then.
        self.stop_deadline: float | None = None
        self.client, self._client_cert = build_client(config, topics.device, password)
        self._callbacks = Callbacks(
            connack=self._on_connack,
            message=deliver,
            puback=self._on_puback,
            suback=self._on_suback,
            server_disconnect=self._on_server_disconnect,
            socket_error=self._on_socket_error,
        )
        attach(self.client, self._callbacks)
        problem = certificate_problem(self._client_cert)
        if problem is not None:
            log.warning("%s: the broker will refuse it", problem)

    # -- other threads ---------------------------------------------------------------------------------------------

    def send(self, message: Outgoing) -> None:
        """Queues a message for the network thread (dropped if the connection is down when its turn comes)."""
        self._outgoing.put(message)

    def request_status(self) -> None:
        """Asks for the retained online status to be published again (model or sources changed)."""
        self._status_wanted.set()

    def add_subscription(self, topic_filter: str, qos: int) -> None:
        """Subscribes now if connected, and on every later connect."""
        self._new_subscriptions.put((topic_filter, qos))

    # -- paho callbacks (record only) ------------------------------------------------------------------------------

    def _on_connack(self, connack: Connack) -> None:
        self._events.connack = connack

    def _on_server_disconnect(self, reason: str) -> None:
        self._events.server_disconnect = reason

    def _on_puback(self, mid: int, reason: Reason) -> None:
        self._events.acks.append((mid, reason))

    def _on_suback(self, _mid: int, reasons: list[Reason]) -> None:
        for reason in reasons:
            if reason.is_failure:
                log.error("broker refused a subscription: %s (%d)", reason.name, reason.value)

    def _on_socket_error(self, text: str) -> None:
        self._events.socket_error = text

    # -- the thread ------------------------------------------------------------------------------------------------

    def run(self) -> None:
        """The network thread's body: attempt, serve, back off, until stopped."""
        try:
            while not self._stop.is_set():
                try:
                    held_s = self._attempt()
                except (
                    Exception
                ) as problem:  # a bug must cost one connection, not the link: log, back off, retry
                    log.exception("link network thread: unexpected failure; reconnecting")
                    self._close()
                    self._reset_flight()
                    self.state.set(
                        "disconnected", reason=f"internal error: {type(problem).__name__}", rc=None
                    )
                    held_s = 0.0
                if self._stop.is_set():
                    break
                if held_s >= STABLE_S:
                    self._backoff.reset()
                self._stop.wait(self._backoff.next_delay())
        finally:
            self.state.set("stopped")

    def _attempt(self) -> float:
        """One connection: returns how long it held after CONNACK (0 if it never got one)."""
        birth = self.birth.peek_next()
        where = f"{self.config.host}:{self.config.effective_port}"
        self._events = _Events()
        self.client.will_set(
            self.topics.status, self._status_payload("offline", birth, "lost"), qos=1, retain=True
        )
        attempts = self.state.get().attempts + 1
        self.state.set("connecting", attempts=attempts)
        log.debug("connecting to %s (attempt %d)", where, attempts)
        try:
            rc = connect(
                self.client,
                self.config.host,
                self.config.effective_port,
                keepalive_s=self.config.keepalive_s,
                clean_start=self.config.clean_start,
                properties=connect_properties(self.config),
            )
        except ConnectFailed as problem:
            self._failed(problem, connected=False)
            return 0.0
        if rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            text = self._events.socket_error or f"paho error {rc.name}"
            self._close()
            self._failed(diagnose.lost(text, False), connected=False)
            return 0.0
        return self._serve(birth)

    def _serve(self, birth: int) -> float:
        started = time.monotonic()
        connected_at: float | None = None
        refusal: ConnectFailed | None = None
        while True:
            alive = loop(self.client, LOOP_TIMEOUT_S, self._callbacks)
            connack, self._events.connack = self._events.connack, None
            if connack is not None:
                refusal = connack.refusal()
                if refusal is None:
                    connected_at = time.monotonic()
                    self._on_connected(connack, birth)
            self._settle()
            if not alive or refusal is not None:
                break
            if connected_at is None:
                if self._stop.is_set():
                    self._close()
                    self._reset_flight()
                    return 0.0
                if time.monotonic() - started > self.config.connect_timeout_s:
                    self._events.socket_error = f"no CONNACK within {self.config.connect_timeout_s:g} s"
                    break
                continue
            if self._stop.is_set():
                self._clean_stop(birth)
                return time.monotonic() - connected_at
            self._service()
        text = self._events.server_disconnect or self._events.socket_error
        self._close()
        self._reset_flight()
        if refusal is None:
            refusal = diagnose.lost(text, connected=connected_at is not None)
        self._failed(refusal, connected=connected_at is not None)
        return 0.0 if connected_at is None else time.monotonic() - connected_at

    def _on_connected(self, connack: Connack, birth: int) -> None:
        try:
            self.birth.commit(birth)
        except OSError as problem:
            log.warning("cannot record birth number %d in %s: %s", birth, self.birth.path, problem)
        self._current_birth = birth
        self.pacer.set_receive_max(connack.receive_max)
        # Subscribe before announcing `online`: the broker handles one client's packets in order, so an operator who
        # reacts to the online status finds the command subscription already in place.
        while not self._new_subscriptions.empty():
            topic_filter, qos = self._new_subscriptions.get_nowait()
            self._subscriptions[topic_filter] = qos
        self._subscribe(list(self._subscriptions.items()))
        self._publish(self.topics.status, self._status_payload("online", birth, None), qos=1, retain=True)
        self._status_wanted.clear()
        previous = self.state.get()
        self.state.set("connected", reason=None, rc=None, connects=previous.connects + 1, birth=birth)
        log.info(
            "connected to %s:%d as %s (birth %d, session %s)",
            self.config.host,
            self.config.effective_port,
            self.topics.device,
            birth,
            "resumed" if connack.session_present else "new",
        )

    def _service(self) -> None:
        """While connected: new subscriptions, status, replies, then outbox rows up to the window."""
        fresh: list[tuple[str, int]] = []
        while not self._new_subscriptions.empty():
            topic_filter, qos = self._new_subscriptions.get_nowait()
            self._subscriptions[topic_filter] = qos
            fresh.append((topic_filter, qos))
        if fresh:
            self._subscribe(fresh)
        if self._status_wanted.is_set():
            self._status_wanted.clear()
            self._publish(
                self.topics.status, self._status_payload("online", self._current_birth, None), 1, True
            )
        while not self._outgoing.empty():
            message = self._outgoing.get_nowait()
            properties = publish_properties(
                response_topic=message.response_topic, correlation=message.correlation
            )
            self._publish(message.topic, message.payload, message.qos, message.retain, properties)
        self._drain()
        self._settle()

    def _drain(self) -> None:
        rows = self.pacer.next_rows()
        for index, row in enumerate(rows):
            try:
                info = self.client.publish(row.topic, row.payload, qos=row.qos, retain=row.retain)
            except ValueError as problem:
                self.pacer.refused(row, str(problem))
                continue
            if info.rc == MQTTErrorCode.MQTT_ERR_SUCCESS:
                self.pacer.sent(row, info.mid)
            elif info.rc in (MQTTErrorCode.MQTT_ERR_NO_CONN, MQTTErrorCode.MQTT_ERR_QUEUE_SIZE):
                self.pacer.unsent(rows[index:])  # not taken: these rows stay next in line
                break
            else:
                self.pacer.refused(row, info.rc.name)

    def _settle(self) -> None:
        """Hands paho's acks to the pacer (deleting delivered rows)."""
        acks, self._events.acks = self._events.acks, []
        self.pacer.settle([Ack(mid, str(reason) if reason.is_failure else None) for mid, reason in acks])

    def _clean_stop(self, birth: int) -> None:
        deadline = time.monotonic() + STOP_ACK_TIMEOUT_S
        if self.stop_deadline is not None:
            deadline = min(deadline, self.stop_deadline)
        self._flush(time.monotonic() + STOP_DRAIN_SHARE * max(0.0, deadline - time.monotonic()))
        info = self._publish(self.topics.status, self._status_payload("offline", birth, "stopped"), 1, True)
        acked = info is None
        while not acked and time.monotonic() < deadline:
            if self.client.loop(timeout=LOOP_TIMEOUT_S) != MQTTErrorCode.MQTT_ERR_SUCCESS:
                break
            acked = any(mid == info for mid, _ in self._events.acks)
            self._settle()
        self.client.disconnect()
        flush_until = max(deadline, time.monotonic() + 0.1)
        for _ in range(20):
            if time.monotonic() > flush_until:
                break
            if self.client.loop(timeout=LOOP_TIMEOUT_S) != MQTTErrorCode.MQTT_ERR_SUCCESS:
                break
        self._settle()
        self._close()
        self._reset_flight()
        log.info("disconnected from %s:%d (stopped)", self.config.host, self.config.effective_port)

    def _flush(self, until: float) -> None:
        """Before the offline status: sends what waits (replies, then outbox rows in their order) and takes the acks.

        What is not acknowledged by `until` stays in the outbox and goes out after the next start.
        """
        while time.monotonic() < until:
            self._service()
            if self.pacer.inflight == 0 and self._outgoing.empty() and not self.outbox.pending(1):
                return
            if self.client.loop(timeout=LOOP_TIMEOUT_S) != MQTTErrorCode.MQTT_ERR_SUCCESS:
                return
            self._settle()

    # -- helpers ---------------------------------------------------------------------------------------------------

    def _publish(
        self, topic: str, payload: bytes, qos: int, retain: bool, properties: Properties | None = None
    ) -> int | None:
        try:
            info = self.client.publish(topic, payload, qos=qos, retain=retain, properties=properties)
        except ValueError as problem:
            log.warning("cannot publish to %s: %s", topic, problem)
            return None
        if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            log.warning("cannot publish to %s: %s", topic, info.rc.name)
            return None
        return info.mid

    def _subscribe(self, filters: list[tuple[str, int]]) -> None:
        try:
            rc, _mid = self.client.subscribe(filters)
        except ValueError as problem:
            log.error("cannot subscribe to %s: %s", filters, problem)
            return
        if rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            log.warning("cannot subscribe to %s: %s", filters, rc.name)

    def _reset_flight(self) -> None:
        self.client.drop_out_messages()
        self.pacer.reset()
        self._events.acks.clear()

    def _close(self) -> None:
        # Reason 0x04 "disconnect with will message": if the socket is still open, the broker publishes the will.
        try:
            self.client.disconnect(reasoncode=ReasonCode(PacketTypes.DISCONNECT, identifier=4))
        except Exception as problem:  # closing a half-open socket can raise; nothing more to do
            log.debug("closing the connection: %s", problem)
        # paho closes the socket once the DISCONNECT is written; let it, without waiting on the network.
        if self.client.socket() is not None:
            try:
                self.client.loop(timeout=0.0)
            except Exception as problem:
                log.debug("closing the connection: %s", problem)

    def _failed(self, problem: ConnectFailed, connected: bool) -> None:
        """Records a failed attempt or a lost connection; one log line (repeats of a network failure at debug)."""
        problem = with_certificate(problem, self._client_cert)
        refused = isinstance(problem, TlsFailure) or problem.rc is not None
        repeated = self.state.get().reason == problem.reason
        self.state.set("refused" if refused else "disconnected", reason=problem.reason, rc=problem.rc)
        if refused:
            log.error("%s", problem.reason)
        elif connected or not repeated:
            log.warning("%s", problem.reason)
        else:
            log.debug("%s", problem.reason)


__all__ = ["Session"]
