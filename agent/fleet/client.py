"""edge-fleet's MQTT 5 client, driven from the caller's thread (no background thread), over the link's paho boundary.

Invariants:
- Every call into paho happens on the thread that made the `FleetClient`; paho's callbacks, wired by the link's paho
  boundary (`agent.link.wire.attach`, as for the device's session), run inside `Client.loop` and only record what
  happened. Connection state is what paho last reported: `connect` returns only after a success CONNACK, and a lost
  connection raises `ConnectionLost` from the next `poll`.
- No paho, ssl or socket exception leaves this module: each becomes a `ConnectFailed` subclass (the agent's own
  diagnosis, with the operator's flag names in the hints), a `BrokerRefused`, or `ConnectionLost`.
- Reconnection waits through `agent.backoff.Backoff`, the one retry policy of the agent.
- The operator's session is clean (clean start, no session expiry): nothing is queued for an operator who left.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import TypeVar

from agent.backoff import Backoff, BackoffConfig
from agent.fleet.errors import BrokerRefused
from agent.fleet.options import ConnectOptions
from agent.link.wire import (
    Callbacks,
    Connack,
    ConnectFailed,
    ConnectionRefused,
    InboundMessage,
    MQTTErrorCode,
    Reason,
    attach,
    build_client,
    connect,
    loop,
    lost,
    publish_properties,
    with_certificate,
)

ACK_TIMEOUT_S = 10.0
LOOP_S = 0.1
RECONNECT = BackoffConfig(initial_s=0.5, max_s=10.0, multiplier=2.0, jitter=0.5)
"""The operator's reconnection delays: 0.5 s doubling to 10 s, ±50 % (the link's jitter)."""
T = TypeVar("T")

OPERATOR_HINTS: dict[int, str] = {
    0x86: "bad user name or password: check --username and the password (--password-file, $EDGE_FLEET_PASSWORD)",
    0x87: "not authorized: the broker refuses these credentials; check --username, the password "
    "(--password-file, $EDGE_FLEET_PASSWORD) or the client certificate, and the broker's password file and ACL",
}
"""CONNACK hints that differ for an operator (the agent's name the device's password sources)."""
OPERATOR_WORDS: tuple[tuple[str, str], ...] = (
    ("tls.cert_file and tls.key_file", "--cert-file and --key-file"),
    ("tls.ca_file", "--ca-file"),
    ("is the device clock set?", "is this machine's clock set?"),
)
"""The agent's TLS hints name its config keys; an operator sets flags."""


class ConnectionLost(ConnectFailed):
    """An established connection closed (broker stopped, network gone, the broker disconnected us)."""


def for_operator(problem: ConnectFailed) -> ConnectFailed:
    """The same failure, its hint naming edge-fleet's flags instead of the agent's config keys."""
    reason = problem.reason
    if isinstance(problem, ConnectionRefused) and problem.rc in OPERATOR_HINTS:
        reason = reason.rsplit(": ", 1)[0] + ": " + OPERATOR_HINTS[problem.rc]
    for theirs, ours in OPERATOR_WORDS:
        reason = reason.replace(theirs, ours)
    return type(problem)(reason, rc=problem.rc)


class FleetClient:
    """An operator's MQTT 5 connection: connect, subscribe, publish, poll for messages, reconnect when asked."""

    def __init__(self, options: ConnectOptions) -> None:
        """Builds the client (LinkSetupError for unreadable TLS files); connects nothing yet."""
        self.options = options
        self._client, self._validity = build_client(
            options.link_config(), options.client_id, options.password
        )
        # build_client uses the device id as the user name when none is set; an operator sends none unless told.
        self._client.username_pw_set(
            options.username, options.password.get_secret_value() if options.password is not None else None
        )
        self._connack: Connack | None = None
        self._server_disconnect: str | None = None
        self._socket_error: str | None = None
        self._inbox: list[InboundMessage] = []
        self._subacks: dict[int, list[Reason]] = {}
        self._pubacks: dict[int, Reason] = {}
        self._filters: list[str] = []
        self._callbacks = Callbacks(
            connack=self._on_connack,
            message=self._on_message,
            puback=self._on_puback,
            suback=self._on_suback,
            server_disconnect=self._on_server_disconnect,
            socket_error=self._on_socket_error,
        )
        attach(self._client, self._callbacks)

    # -- paho callbacks (record only) ------------------------------------------------------------------------------

    def _on_connack(self, connack: Connack) -> None:
        self._connack = connack

    def _on_message(self, message: InboundMessage) -> None:
        self._inbox.append(message)

    def _on_puback(self, mid: int, reason: Reason) -> None:
        self._pubacks[mid] = reason

    def _on_suback(self, mid: int, reasons: list[Reason]) -> None:
        self._subacks[mid] = reasons

    def _on_server_disconnect(self, reason: str) -> None:
        self._server_disconnect = reason

    def _on_socket_error(self, text: str) -> None:
        self._socket_error = text

    # -- connection ------------------------------------------------------------------------------------------------

    def connect(self) -> None:
        """Connects and waits for a success CONNACK; raises a ConnectFailed subclass naming the cause."""
        where = self.options.where
        self._connack, self._server_disconnect, self._socket_error = None, None, None
        try:
            rc = connect(
                self._client,
                self.options.host,
                self.options.effective_port,
                keepalive_s=self.options.keepalive_s,
                clean_start=True,
            )
        except ConnectFailed as failure:  # socket, ssl and paho errors alike: one diagnosis
            cause = failure.__cause__
            if self.options.uses_tls and isinstance(cause, ConnectionResetError | ConnectionAbortedError):
                failure = ConnectFailed(f"{failure.reason} (TLS is on: is this the broker's TLS port?)")
            raise self._diagnosed(failure) from None
        if rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            self._drop()
            raise self._diagnosed(lost(self._socket_error or f"paho error {rc.name}", False))
        deadline = time.monotonic() + self.options.connect_timeout_s
        while self._connack is None:
            if time.monotonic() > deadline:
                self._drop()
                raise ConnectFailed(
                    f"no answer from the broker at {where} within {self.options.connect_timeout_s:g} s "
                    "(is it an MQTT port?)"
                )
            if not self._loop(LOOP_S) and self._connack is None:
                self._drop()
                raise self._diagnosed(lost(self._server_disconnect or self._socket_error, False))
        refusal = self._connack.refusal()
        if refusal is not None:
            self._drop()
            raise self._diagnosed(refusal)

    def reconnect(self, stop_at: float | None, notice: Callable[[str], None]) -> bool:
        """After a lost connection: retries with backoff until connected and resubscribed; False at `stop_at`."""
        backoff = Backoff(RECONNECT)
        filters = list(self._filters)
        self._drop()
        while True:
            delay = backoff.next_delay()
            if stop_at is not None and time.monotonic() + delay >= stop_at:
                return False
            time.sleep(delay)
            self._filters = []
            try:
                self.connect()
                self.subscribe(filters)  # a clean session: the broker forgot them
            except ConnectFailed as problem:
                self._filters = filters
                notice(f"still disconnected: {problem.reason}")
                continue
            notice(f"reconnected to {self.options.where}")
            return True

    def close(self) -> None:
        """Disconnects normally (idempotent, never raises)."""
        try:
            if self._client.is_connected():
                self._client.disconnect()
                for _ in range(10):
                    if not self._loop(0.05):
                        break
        finally:
            self._drop()

    def __enter__(self) -> FleetClient:
        self.connect()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    # -- traffic ---------------------------------------------------------------------------------------------------

    def subscribe(self, filters: list[str]) -> None:
        """Subscribes (QoS 1) and waits for the SUBACK; BrokerRefused if a filter is refused."""
        if not filters:
            return
        try:
            rc, mid = self._client.subscribe([(topic_filter, 1) for topic_filter in filters])
        except ValueError as problem:
            raise BrokerRefused(f"cannot subscribe to {filters}: {problem}") from None
        self._check(rc)
        assert mid is not None  # paho gives a mid whenever rc is success
        reasons = self._wait(lambda: self._subacks.pop(mid, None), "SUBACK")
        self._filters.extend(filters)
        for topic_filter, reason in zip(filters, reasons, strict=False):
            if reason.is_failure:
                raise BrokerRefused(f"the broker refused the subscription to {topic_filter}: {reason}")

    def publish(
        self,
        topic: str,
        payload: bytes,
        *,
        response_topic: str | None = None,
        correlation: bytes | None = None,
        retain: bool = False,
    ) -> None:
        """Publishes at QoS 1 (with MQTT 5 response topic and correlation data) and waits for the PUBACK."""
        properties = publish_properties(response_topic, correlation)
        try:
            info = self._client.publish(topic, payload, qos=1, retain=retain, properties=properties)
        except ValueError as problem:
            raise BrokerRefused(f"cannot publish to {topic}: {problem}") from None
        self._check(info.rc)
        reason = self._wait(lambda: self._pubacks.pop(info.mid, None), "PUBACK")
        if reason.is_failure:
            raise BrokerRefused(f"the broker refused the message to {topic}: {reason}")

    def send(
        self,
        topic: str,
        payload: bytes,
        *,
        correlation: bytes | None = None,
        user_properties: tuple[tuple[str, str], ...] = (),
    ) -> int:
        """Publishes at QoS 1 without waiting for the PUBACK; returns its mid, which `acked` reports later.

        For a caller that keeps a window of its own (`edge-fleet serve`); not to be mixed with `publish` on one client."""
        properties = publish_properties(None, correlation, user_properties)
        try:
            info = self._client.publish(topic, payload, qos=1, properties=properties)
        except ValueError as problem:
            raise BrokerRefused(f"cannot publish to {topic}: {problem}") from None
        self._check(info.rc)
        return info.mid

    def acked(self) -> list[tuple[int, Reason]]:
        """The PUBACKs received since last time (mid, reason) for messages `send` published."""
        acks, self._pubacks = list(self._pubacks.items()), {}
        return acks

    @property
    def receive_max(self) -> int | None:
        """The broker's MQTT 5 Receive Maximum from the last CONNACK (None: it sent none, so 65535)."""
        return None if self._connack is None else self._connack.receive_max

    def poll(self, timeout_s: float) -> list[InboundMessage]:
        """Runs the network for up to `timeout_s` (less when a message comes); the messages received since last time."""
        if not self._loop(timeout_s):
            self._lost()
        messages, self._inbox = self._inbox, []
        return messages

    def messages(
        self, stop_at: float | None, tick_s: float, notice: Callable[[str], None] | None = None
    ) -> Iterator[InboundMessage | None]:
        """Yields messages as they come, and None at least every `tick_s`, until `stop_at` (monotonic; None: never).

        With `notice`, a lost connection is reported through it and retried with backoff (subscriptions renewed);
        without, it raises ConnectionLost."""
        next_tick = time.monotonic() + tick_s
        while stop_at is None or time.monotonic() < stop_at:
            now = time.monotonic()
            wait = min(next_tick, stop_at if stop_at is not None else next_tick) - now
            try:
                batch = self.poll(max(0.0, wait))
            except ConnectionLost as problem:
                if notice is None:
                    raise
                notice(f"{problem.reason}; reconnecting")
                if not self.reconnect(stop_at, notice):
                    return
                batch = []
            yield from batch
            if time.monotonic() >= next_tick:
                next_tick = time.monotonic() + tick_s
                yield None

    # -- helpers ---------------------------------------------------------------------------------------------------

    def _loop(self, timeout_s: float) -> bool:
        """One run of paho's network loop; False when the connection is gone."""
        return loop(self._client, timeout_s, self._callbacks)

    def _wait(self, take: Callable[[], T | None], what: str) -> T:
        """Runs the network until `take` returns something (an ack paho recorded); ConnectFailed after a while."""
        deadline = time.monotonic() + ACK_TIMEOUT_S
        while True:
            found = take()
            if found is not None:
                return found
            if time.monotonic() > deadline:
                raise ConnectFailed(
                    f"no {what} from the broker at {self.options.where} within {ACK_TIMEOUT_S:g} s"
                )
            if not self._loop(LOOP_S):
                self._lost()

    def _check(self, rc: MQTTErrorCode) -> None:
        if rc == MQTTErrorCode.MQTT_ERR_NO_CONN:
            self._lost()
        if rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            raise BrokerRefused(f"paho refused the request: {rc.name}")

    def _lost(self) -> None:
        text = self._server_disconnect or self._socket_error
        self._drop()
        raise ConnectionLost(lost(text, connected=True).reason)

    def _diagnosed(self, problem: ConnectFailed) -> ConnectFailed:
        return for_operator(with_certificate(problem, self._validity))

    def _drop(self) -> None:
        """Closes the socket if paho has not already (after a failure), and forgets unacknowledged messages."""
        if self._client.socket() is not None:
            try:
                self._client.disconnect()
                self._client.loop(timeout=0.0)
            except Exception:  # closing a half-open socket can raise; nothing more to do
                pass
        self._client.drop_out_messages()


__all__ = ["ConnectionLost", "FleetClient", "for_operator"]
