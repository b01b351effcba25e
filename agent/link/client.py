"""`Link`: the agent's one door to the fleet broker.

Threads (started by `start`, never at import; all stopped by `stop` through one stop event, joined with timeouts):
- `link-net` (session.py): the only thread that calls paho: connects, drains the outbox, publishes replies.
- `link-commands`: runs command handlers and subscription handlers, one at a time, from a bounded queue, so a slow
  handler never stalls the network; a full queue drops the request and counts it (`busy`).
- `link-upkeep`: every `UPKEEP_S`: expires and checkpoints the outbox and retries its storage when it failed (with
  backoff), takes telemetry snapshots when due, turns new outbox drops into one `error` event (at most one a minute),
  and reports the outbox's storage condition: one `critical` `error` event when it cannot store normally (read-only,
  full, unavailable), one `info` event when it recovers, and the retained status republished with `storage` (absent
  when ok); a corrupt outbox moved aside is one `error` event with the number of rows it held.

Invariants: `publish_event`, `publish_result` and `publish_telemetry` only write to the outbox: they never wait on
the network and never raise for a full disk, an unwritable state directory or a broken link (they return False and count it; while
the outbox cannot write, rows are held in memory up to `outbox.memory_max_bytes` and still sent). The link starts
and serves (status, commands, publishing) whatever the state directory's condition. A disabled link
(`enabled = false`) stores nothing and starts no thread; its state is `disabled`. Commands arrive on
`devices/{device}/cmd/+`; the reply goes to the request's MQTT 5 response topic with its correlation data, or to
`devices/{device}/cmd/{name}/reply` when the request names none.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from collections.abc import Callable, Hashable, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

from paho.mqtt.client import topic_matches_sub

import agent
from agent.link.commands import CommandRouter, Request
from agent.link.config import DeviceIdentity, LinkConfig, OutboxConfig, resolve_password
from agent.link.errors import LinkError, TopicError
from agent.link.mqtt import InboundMessage, Outgoing
from agent.link.outbox import Kind, Outbox
from agent.link.payloads import Event, ModelRef, Payload, Result, Status, Telemetry, UpdateBrief
from agent.link.policy import ResultGate, ResultsPolicy
from agent.link.session import Session
from agent.link.state import BirthCounter, LinkStatus, StateCell
from agent.link.topics import Topics, validate_topic_name

log = logging.getLogger("agent.link")

UPKEEP_S = 0.5
DROP_REPORT_S = 60.0
JOIN_S = 5.0

TelemetrySource = Callable[[], Mapping[str, Any]]
MessageHandler = Callable[[InboundMessage], None]
FIRST_TELEMETRY_S = 5.0
"""The first telemetry snapshot goes out this soon after start (or at the interval, if that is shorter)."""

_UNSET: Any = object()


class Link:
    """Publishes status, events, results and telemetry through a durable outbox, and answers commands."""

    def __init__(
        self,
        config: LinkConfig,
        identity: DeviceIdentity,
        state_dir: Path,
        *,
        outbox: OutboxConfig | None = None,
        router: CommandRouter | None = None,
        telemetry_source: TelemetrySource | None = None,
        agent_version: str = agent.__version__,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        self.config = config
        self.identity = identity
        self.state_dir = state_dir
        try:
            self.topics = Topics(identity.device, identity.fleet, identity.group, config.topic_prefix)
        except TopicError as problem:
            raise LinkError(f"invalid topic layout: {problem}") from None
        self.router = router or CommandRouter(config.commands)
        self.agent_version = agent_version
        self._environ = environ
        self._telemetry_source = telemetry_source
        self._state = StateCell("disconnected" if config.enabled else "disabled")
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._boot_time = time.time()
        self._started_mono = time.monotonic()
        self._gate = ResultGate(config.results, time.monotonic())
        self._model: ModelRef | None = None
        self._update: UpdateBrief | None = None
        self._sources: dict[str, str] = {}
        self._telemetry_seq = 0
        self._publish_errors = 0
        self._storage_was = "ok"
        self._storage_moved = 0
        self._subscriptions: list[tuple[str, MessageHandler, int]] = []
        self._direct: list[tuple[str, MessageHandler, int]] = []
        self._work: queue.Queue[Callable[[], None] | None] = queue.Queue(maxsize=config.commands.queue_max)
        self._threads: list[threading.Thread] = []
        self._session: Session | None = None
        self.outbox: Outbox | None = None
        self.birth = BirthCounter(state_dir)
        if config.enabled:
            self.outbox = Outbox((outbox or OutboxConfig()).resolve_path(state_dir), outbox or OutboxConfig())

    # -- life cycle ------------------------------------------------------------------------------------------------

    def start(self) -> None:
        """Starts connecting in the background; raises LinkSetupError for unusable TLS files or password sources."""
        if not self.config.enabled or self.outbox is None:
            log.info("fleet link disabled (link.enabled = false)")
            return
        if self._threads:
            return
        password = resolve_password(self.config, self._environ)
        self.birth.probe()  # before the first connection: an unwritable state directory means clock-based births
        self._session = Session(
            self.config,
            self.topics,
            self.outbox,
            self._state,
            self.birth,
            self._status_payload,
            self._deliver,
            password,
            self._stop,
        )
        with self._lock:
            for topic_filter, _handler, qos in [*self._subscriptions, *self._direct]:
                self._session.add_subscription(topic_filter, qos)
        for name, target in (
            ("link-net", self._session.run),
            ("link-commands", self._work_loop),
            ("link-upkeep", self._upkeep_loop),
        ):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)
        log.info(
            "fleet link starting: %s:%d as %s",
            self.config.host,
            self.config.effective_port,
            self.topics.device,
        )

    def stop(self, timeout_s: float = JOIN_S) -> None:
        """Publishes `offline`, disconnects, stops the threads and closes the outbox (idempotent)."""
        deadline = time.monotonic() + timeout_s
        if self._session is not None:
            # the network thread's clean stop ends early enough for its thread to be joined in time
            self._session.stop_deadline = deadline - min(0.3, timeout_s / 3)
        self._stop.set()
        with contextlib.suppress(queue.Full):
            self._work.put_nowait(None)
        for thread in self._threads:
            thread.join(max(0.1, deadline - time.monotonic()))
            if thread.is_alive():
                log.warning("thread %s did not stop within %.1f s", thread.name, timeout_s)
        self._threads.clear()
        if self.outbox is not None:
            self.outbox.close()
        if self.config.enabled:
            self._state.set("stopped")

    def __enter__(self) -> Link:
        self.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    # -- state -----------------------------------------------------------------------------------------------------

    def state(self) -> LinkStatus:
        """The connection state, as paho last reported it."""
        return self._state.get()

    def wait_connected(self, timeout_s: float) -> bool:
        """Waits up to `timeout_s` for a connection; True if connected."""
        return self._state.wait_for(("connected",), timeout_s).state == "connected"

    def stats(self) -> dict[str, Any]:
        """State, outbox depth and drops, command counters and results-policy counters, JSON-ready."""
        counters = self._gate.counters
        return {
            "link": self.state().to_dict(),
            "outbox": self.outbox.stats().to_dict() if self.outbox is not None else None,
            "commands": self.router.stats(),
            "results": {"seen": counters.seen, "sent": counters.admitted, "held": dict(counters.held)},
            "publish_errors": self._publish_errors,
        }

    # -- publishing (never blocks on the network) ------------------------------------------------------------------

    def publish_event(self, event: Event) -> bool:
        """Queues an event (QoS 1) in the outbox; False if it was not stored."""
        if event.device is None:
            event = event.model_copy(update={"device": self.topics.device})
        return self._put("event", self.topics.events, event)

    def publish_result(
        self,
        result: Mapping[str, Any],
        *,
        seq: int,
        captured_at: float | None = None,
        model: ModelRef | None = None,
        key: Hashable = None,
        score: float | None = None,
    ) -> bool:
        """Queues a decoded result if the results policy admits it (`key`: change key, `score`: for thresholds)."""
        with self._lock:
            admitted = self._gate.admit(time.monotonic(), key, score)
        if not admitted:
            return False
        try:
            payload = Result(
                seq=seq, time=captured_at or time.time(), model=model or self._model, result=dict(result)
            )
        except ValueError as problem:
            return self._bad_payload("result", problem)
        return self._put("result", self.topics.results, payload)

    def publish_telemetry(self, metrics: Mapping[str, Any]) -> bool:
        """Queues a telemetry snapshot (header, `metrics`, and the link's own state)."""
        with self._lock:
            seq = self._telemetry_seq
            self._telemetry_seq += 1
        stats = self.outbox.stats() if self.outbox is not None else None
        state = self.state()
        link: dict[str, Any] = {
            "state": state.state,
            "reconnects": state.reconnects,
            "outbox_rows": stats.total_rows if stats else 0,
            "outbox_bytes": stats.total_bytes if stats else 0,
            "outbox_dropped": stats.dropped if stats else {},
            "commands": self.router.stats(),
        }
        if stats is not None:
            link["storage"] = stats.storage
            if stats.storage != "ok":
                link["storage_reason"] = stats.storage_reason
            link["outbox_held_rows"] = sum(stats.held_rows.values())
            link["outbox_held_bytes"] = stats.held_bytes
        try:
            payload = Telemetry(
                device=self.topics.device,
                time=time.time(),
                seq=seq,
                uptime_s=round(time.monotonic() - self._started_mono, 3),
                metrics=dict(metrics),
                link=link,
            )
        except ValueError as problem:
            return self._bad_payload("telemetry", problem)
        return self._put("telemetry", self.topics.telemetry, payload)

    def _put(self, kind: Kind, topic: str, payload: Payload) -> bool:
        if self.outbox is None:
            return False
        try:
            data = payload.to_bytes()
        except ValueError as problem:
            return self._bad_payload(kind, problem)
        return self.outbox.put(kind, topic, data, qos=1)

    def _bad_payload(self, kind: str, problem: Exception) -> bool:
        with self._lock:
            self._publish_errors += 1
        log.warning("cannot publish %s: %s", kind, str(problem).splitlines()[0])
        return False

    def set_results_policy(self, policy: ResultsPolicy) -> None:
        """Replaces the results policy at run time."""
        with self._lock:
            self._gate.set_policy(policy, time.monotonic())

    @property
    def results_policy(self) -> ResultsPolicy:
        """The results policy in force."""
        return self._gate.policy

    def set_status(
        self,
        *,
        model: ModelRef | None = _UNSET,
        sources: Mapping[str, str] | None = None,
        update: UpdateBrief | None = _UNSET,
    ) -> None:
        """Updates what the retained `online` status says (active model, source states, update) and republishes it."""
        with self._lock:
            if model is not _UNSET:
                self._model = model
            if sources is not None:
                self._sources = dict(sources)
            if update is not _UNSET:
                self._update = update
        if self._session is not None:
            self._session.request_status()

    def _status_payload(self, state: str, birth: int, reason: str | None) -> bytes:
        with self._lock:
            model, sources, update = self._model, dict(self._sources), self._update
        storage = self.outbox.storage() if self.outbox is not None else None
        failing = storage is not None and storage.condition != "ok"
        return Status(
            state="online" if state == "online" else "offline",
            device=self.topics.device,
            birth=birth,
            time=time.time(),
            agent_version=self.agent_version,
            model=model,
            group=self.topics.group,
            sources=sources,
            boot_time=self._boot_time,
            reason=reason,
            storage=storage.condition if failing and storage is not None else None,
            storage_reason=storage.reason if failing and storage is not None else None,
            update=update,
        ).to_bytes()

    # -- inbound ---------------------------------------------------------------------------------------------------

    def subscribe(
        self, topic_filter: str, handler: MessageHandler, qos: int = 1, *, direct: bool = False
    ) -> None:
        """Calls `handler(message)` for every message matching `topic_filter`: on the command thread, or with
        `direct` on the network thread itself (for a handler that only hands the message on, e.g. repository
        answers that arrive a hundred at a time and must not wait behind commands)."""
        with self._lock:
            (self._direct if direct else self._subscriptions).append((topic_filter, handler, qos))
            session = self._session
        if session is not None:
            session.add_subscription(topic_filter, qos)

    def request(self, topic: str, payload: bytes, *, response_topic: str, correlation: bytes) -> bool:
        """Publishes a request (QoS 1, MQTT 5 response topic and correlation data) while connected; False if not."""
        validate_topic_name(topic)
        validate_topic_name(response_topic)
        session = self._session
        if session is None or self.state().state != "connected":
            return False
        session.send(Outgoing(topic, payload, qos=1, correlation=correlation, response_topic=response_topic))
        return True

    def _deliver(self, message: InboundMessage) -> None:
        """Called on the network thread for every inbound message: screens it and queues the work."""
        parsed = self.topics.parse(message.topic)
        if (
            parsed is not None
            and parsed.kind == "cmd"
            and parsed.device == self.topics.device
            and parsed.name
        ):
            request = self.router.accept(parsed.name, message.payload, message.correlation)
            if request is not None:
                self._queue_work(lambda: self._answer(request, message.response_topic), "busy")
            return
        with self._lock:
            direct = [h for f, h, _ in self._direct if topic_matches_sub(f, message.topic)]
            handlers = [h for f, h, _ in self._subscriptions if topic_matches_sub(f, message.topic)]
        for handler in direct:
            self._call_handler(handler, message)
        for handler in handlers:
            self._queue_work(lambda h=handler: self._call_handler(h, message), None)  # type: ignore[misc]

    def _queue_work(self, work: Callable[[], None], drop_reason: str | None) -> None:
        try:
            self._work.put_nowait(work)
        except queue.Full:
            if drop_reason is not None:
                self.router.count_drop(drop_reason)
            log.warning("link worker busy: inbound message dropped")

    def _answer(self, request: Request, response_topic: str | None) -> None:
        reply = self.router.run(request)
        topic = self.topics.cmd_reply(request.name)
        if response_topic:
            try:
                topic = validate_topic_name(response_topic)
            except TopicError as problem:
                log.warning(
                    "command %s: bad response topic (%s); replying on %s", request.name, problem, topic
                )
        if self._session is not None:
            self._session.send(Outgoing(topic, reply.payload, qos=1, correlation=request.correlation))

    def _call_handler(self, handler: MessageHandler, message: InboundMessage) -> None:
        try:
            handler(message)
        except Exception:
            log.exception("handler for %s failed", message.topic)

    # -- threads ---------------------------------------------------------------------------------------------------

    def _work_loop(self) -> None:
        while True:
            work = self._work.get()
            if work is None or self._stop.is_set():
                return
            try:
                work()
            except Exception:  # _answer and _call_handler catch their own; this is the last guard
                log.exception("link worker: unexpected failure")

    def _upkeep_loop(self) -> None:
        # the first snapshot soon after start (a device that just booted is worth a look), then on the interval
        next_telemetry = time.monotonic() + min(FIRST_TELEMETRY_S, self.config.telemetry.interval_s)
        next_report = time.monotonic() + DROP_REPORT_S
        reported = 0
        while self.outbox is not None:
            self._report_storage()
            if self._stop.wait(UPKEEP_S):
                return
            self.outbox.maintain()
            now = time.monotonic()
            if self._telemetry_source is not None and now >= next_telemetry:
                next_telemetry = now + self.config.telemetry.interval_s
                self._take_telemetry()
            if now >= next_report:
                next_report = now + DROP_REPORT_S
                reported = self._report_drops(reported)

    def _take_telemetry(self) -> None:
        assert self._telemetry_source is not None
        try:
            metrics = self._telemetry_source()
        except Exception:
            log.exception("telemetry source failed")
            return
        self.publish_telemetry(metrics)

    def _report_storage(self) -> None:
        """Publishes corrupt outboxes found, and one event per change of the storage condition."""
        assert self.outbox is not None
        for corrupt in self.outbox.take_corrupt():
            rows: int | str = "unknown" if corrupt.rows is None else corrupt.rows
            lost = (
                "an unknown number of"
                if corrupt.rows is None
                else f"{'' if corrupt.exact else 'about '}{rows}"
            )
            self.publish_event(
                Event(
                    type="error",
                    severity="error",
                    message=f"outbox was corrupt ({corrupt.problem}): moved aside, {lost} queued messages lost",
                    evidence={
                        "path": str(corrupt.path),
                        "moved_to": str(corrupt.moved_to),
                        "rows": rows,
                        "counted": "exact" if corrupt.exact else "from the pages that remain",
                        "problem": corrupt.problem,
                    },
                )
            )
        changes = self.outbox.take_storage_changes()
        if not changes:
            return
        now = self.outbox.storage()
        for change in changes:
            change = replace(change, held_rows=now.held_rows, held_bytes=now.held_bytes)
            evidence: dict[str, Any] = {
                "storage": change.condition,
                "reason": change.reason,
                "held_rows": change.held_rows,
                "held_bytes": change.held_bytes,
                "memory_max_bytes": change.memory_max_bytes,
                "path": str(self.outbox.path),
            }
            if change.condition == "ok":
                moved, self._storage_moved = change.moved - self._storage_moved, change.moved
                message = (
                    f"{change.describe()} (was {self._storage_was}); {moved} messages written from memory"
                )
                self.publish_event(Event(type="error", severity="info", message=message, evidence=evidence))
            else:
                self._storage_moved = change.moved
                self.publish_event(
                    Event(type="error", severity="critical", message=change.describe(), evidence=evidence)
                )
            self._storage_was = change.condition
        if changes[-1].condition == "ok":
            self.birth.retry()
        if self._session is not None:
            self._session.request_status()

    def _report_drops(self, reported: int) -> int:
        """Publishes one event when the outbox dropped messages since the last report; returns the new total."""
        assert self.outbox is not None
        stats = self.outbox.stats()
        total = sum(sum(reasons.values()) for reasons in stats.dropped.values())
        if total > reported:
            self.publish_event(
                Event(
                    type="error",
                    severity="warning",
                    message=f"outbox dropped {total - reported} messages",
                    evidence={
                        "dropped": stats.dropped,
                        "disk_full": stats.disk_full,
                        "max_bytes": stats.max_bytes,
                        "storage": stats.storage,
                    },
                )
            )
        return total


__all__ = ["InboundMessage", "Link", "MessageHandler", "TelemetrySource"]
