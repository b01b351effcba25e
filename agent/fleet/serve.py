"""`edge-fleet serve`: the block repository, answering devices' TUF metadata and block requests over MQTT 5.

The protocol (the shared format is `agent.release.formats`):
- A device publishes a `RepoRequest` (JSON, QoS 1) on `{prefix}repo/get` with an MQTT 5 response topic under its own
  `{prefix}devices/{device}/blocks/` and correlation data. The answers go to that response topic, at QoS 1, with the
  same correlation data, the raw bytes as payload, and user properties:
  - `metadata` / `target` (`path` under `metadata/` or `targets/`): the file in parts of `PART_BYTES`, each
    `status=200 part=i parts=n`; a file the store does not have: one `status=404`; a path that escapes its folder
    (`..`, absolute, a symlink out): one `status=400`; a file of more than `MAX_BLOCKS_PER_REQUEST` parts: `400`
    (an archive is fetched by its blocks).
  - `blocks` (`digest`: the archive's SHA-256, `blocks`: at most `MAX_BLOCKS_PER_REQUEST` indices): one message per
    asked block (each index once), `status=200 block=i`, the bytes at the index's offset and size; an unknown digest:
    one `404`; an index out of range or too many asked at once: one `400`, nothing else.
  - A request that is not JSON or breaks the schema: one `400` with `error`. More than `max_pending` messages waiting
    for one device: `429` (at most one a second), the request dropped.
  Every message but a 200 carries `error`. A request whose response topic is missing or outside the request's fleet's
  `devices/{device}/blocks/` is not answered (the server never publishes where a request points it, only there).
- The receiver paces the sender: exactly what was asked is sent, never more, so a device's window of requests is the
  bound on what waits for it at the broker (Mosquitto drops QoS 1 messages past `max_queued_messages`, 1000 by
  default). The server also holds its own publishes to `rate` per second (token bucket, AWS IoT Core's per-connection
  limit of 100/s by default) and to `window` unacknowledged (and never past the broker's Receive Maximum).
- Devices are served in turn, one message each (round robin), so a flood from one device delays another by at most
  its share; what waits is lazy (nothing is read before its turn), so memory is bounded by the window, not by the
  archive sizes; a lost connection forgets what was waiting (devices ask again).

Modules: `answers` (what a request gets, pure but for reading the store), `store` (the folder and its archive
index), `pacing` (round robin, bounds, rate), this one (the MQTT loop and the subcommand). Invariants: one thread;
paho only through `FleetClient`; a bad request never raises out of `Server.serve`; a lost broker is retried through
`agent.backoff.Backoff`; `stop` is checked at least every `LOOP_S`.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import signal
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

from agent.backoff import Backoff
from agent.fleet.answers import BadRequest, answer, parse_request, refusal
from agent.fleet.argtypes import rate, seconds, window
from agent.fleet.client import RECONNECT, ConnectionLost, FleetClient
from agent.fleet.errors import EXIT_OK, BrokerRefused, UsageError
from agent.fleet.options import ConnectOptions, add_connection_arguments
from agent.fleet.pacing import MAX_PENDING, MAX_PENDING_TOTAL, Job, KeyedLimiter, Scheduler, TokenBucket
from agent.fleet.store import Store
from agent.link.wire import ID_PATTERN, ConnectFailed, InboundMessage, TopicError, render_prefix

log = logging.getLogger("agent.fleet.serve")

REQUEST_LEVELS = "repo/get"
RATE_PER_S = 100.0
WINDOW = 100
RESCAN_S = 10.0
TICK_S = 60.0
LOOP_S = 0.1
WARN_EVERY_S = 60.0
BUSY_EVERY_S = 1.0
SHARE_GROUP = "repo"
MAX_RESPONSE_TOPIC_BYTES = 1024


def response_client(request_topic: str, response_topic: str | None) -> str:
    """The device a response topic belongs to; BadRequest unless it lies under the request's fleet's
    `devices/{device}/blocks/` (the only place answers go)."""
    if response_topic is None:
        raise BadRequest("no MQTT 5 response topic")
    if not request_topic.endswith(REQUEST_LEVELS) or any(c in response_topic for c in "+#\x00"):
        raise BadRequest(f"response topic {response_topic!r} is not a topic name")
    prefix = request_topic[: -len(REQUEST_LEVELS)]
    levels = response_topic[len(prefix) :].split("/") if response_topic.startswith(prefix) else []
    if (
        len(levels) < 3
        or levels[0] != "devices"
        or levels[2] != "blocks"
        or not ID_PATTERN.fullmatch(levels[1])
    ):
        raise BadRequest(f"response topic {response_topic!r} is not under {prefix}devices/{{device}}/blocks/")
    if len(response_topic.encode()) > MAX_RESPONSE_TOPIC_BYTES:
        raise BadRequest(f"response topic longer than {MAX_RESPONSE_TOPIC_BYTES} bytes")
    return levels[1]


# -- the MQTT loop ------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ServeSettings:
    """How `Server` subscribes and paces itself."""

    request_filter: str
    rate_per_s: float | None = RATE_PER_S
    window: int = WINDOW
    rescan_s: float = RESCAN_S
    tick_s: float = TICK_S
    max_pending: int = MAX_PENDING
    max_pending_total: int = MAX_PENDING_TOTAL


class Server:
    """Answers repository requests on one connected `FleetClient` until `stop` is set."""

    def __init__(
        self,
        client: FleetClient,
        store: Store,
        settings: ServeSettings,
        on_tick: Callable[[], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """`on_tick` runs every `settings.tick_s` seconds (its errors are logged): the timestamp re-signing hook."""
        self.client, self.store, self.settings = client, store, settings
        self.on_tick = on_tick
        self.stats: Counter[str] = Counter()
        self.in_loop = False
        """True while the loop checks `stop` by itself (a signal handler need not interrupt it)."""
        self._clock = clock
        self._scheduler = Scheduler(settings.max_pending, settings.max_pending_total)
        self._bucket = TokenBucket(settings.rate_per_s, clock())
        self._inflight: set[int] = set()
        self._warnings = KeyedLimiter(WARN_EVERY_S)
        self._busy = KeyedLimiter(BUSY_EVERY_S)

    @property
    def window(self) -> int:
        """Unacknowledged publishes allowed now: ours, capped by the broker's Receive Maximum."""
        return max(1, min(self.settings.window, self.client.receive_max or 65535))

    def serve(self, stop: threading.Event) -> None:
        """Subscribes, then answers until `stop`; reconnects with backoff whenever the broker goes away."""
        self.client.subscribe([self.settings.request_filter])
        rate = self.settings.rate_per_s
        log.info(
            "serving %d archives from %s on %s at %s (%s publishes/s, window %d)",
            len(self.store.archives),
            self.store.root,
            self.settings.request_filter,
            self.client.options.where,
            "no limit on" if rate is None else f"{rate:g}",
            self.window,
        )
        while not stop.is_set():
            try:
                self._run(stop)
            except ConnectionLost as problem:
                log.warning("lost the broker: %s; reconnecting", problem.reason)
                self._scheduler.clear()
                self._inflight.clear()
                if not self._reconnect(stop):
                    return

    def _run(self, stop: threading.Event) -> None:
        clock = self._clock
        next_rescan, next_tick = clock() + self.settings.rescan_s, clock() + self.settings.tick_s
        self.in_loop = True
        try:
            while not stop.is_set():
                for message in self.client.poll(self._wait_s(clock())):
                    self._accept(message, clock())
                for mid, reason in self.client.acked():
                    self._inflight.discard(mid)
                    if reason.is_failure:
                        self._warn("broker", f"the broker refused an answer: {reason}")
                self._send(clock())
                now = clock()
                if now >= next_rescan:
                    next_rescan = now + self.settings.rescan_s
                    self.store.rescan()
                if now >= next_tick:
                    next_tick = now + self.settings.tick_s
                    self._tick()
        finally:
            self.in_loop = False

    def _wait_s(self, now: float) -> float:
        if self._scheduler and len(self._inflight) < self.window:
            return min(LOOP_S, self._bucket.wait_s(now))
        return LOOP_S  # an ack or a request ends the wait early

    def _accept(self, message: InboundMessage, now: float) -> None:
        self.stats["requests"] += 1
        try:
            client = response_client(message.topic, message.response_topic)
        except BadRequest as problem:
            self.stats["unanswerable"] += 1
            self._warn(f"?{message.topic}", f"request on {message.topic} not answered: {problem}")
            return
        try:
            request = parse_request(message.payload)
        except BadRequest as problem:
            self._warn(client, f"bad request from {client}: {problem}")
            job = Job(message.response_topic or "", message.correlation, refusal(400, str(problem)), 1)
        else:
            cost = len(request.blocks) if request.kind == "blocks" else 1
            job = Job(message.response_topic or "", message.correlation, answer(self.store, request), cost)
        if self._scheduler.offer(client, job):
            return
        job.answer.close()
        self.stats["busy"] += 1
        if self._busy.allow(client, now) is not None:
            error = f"more than {self.settings.max_pending} messages already wait for {client}; ask for fewer"
            self._scheduler.offer(client, Job(job.topic, job.correlation, refusal(429, error), 1), force=True)

    def _send(self, now: float) -> None:
        while self._scheduler and len(self._inflight) < self.window and self._bucket.ready(now):
            item = self._scheduler.next()
            if item is None:
                return
            job, reply = item
            self._bucket.spend()
            mid = self.client.send(
                job.topic, reply.payload, correlation=job.correlation, user_properties=reply.properties()
            )
            self._inflight.add(mid)
            self.stats["messages"] += 1
            self.stats[f"status {reply.status}"] += 1
            self.stats["bytes"] += len(reply.payload)

    def _tick(self) -> None:
        if self.on_tick is None:
            return
        try:
            self.on_tick()
        except Exception as problem:  # the hook's failure is reported; serving goes on
            log.error("the periodic task failed: %s: %s", type(problem).__name__, problem)

    def _reconnect(self, stop: threading.Event) -> bool:
        backoff = Backoff(RECONNECT)
        while not stop.wait(backoff.next_delay()):
            try:
                self.client.connect()
                self.client.subscribe([self.settings.request_filter])
            except (ConnectFailed, BrokerRefused) as problem:
                self._warn("reconnect", f"still disconnected: {problem}")
                continue
            log.warning("reconnected to %s", self.client.options.where)
            return True
        return False

    def _warn(self, key: str, text: str) -> None:
        held = self._warnings.allow(key, self._clock())
        if held is not None:
            more = f" ({held} more like it in the last {WARN_EVERY_S:g} s)" if held else ""
            log.warning("%s%s", text, more)

    def summary(self) -> str:
        """One line of what was served."""
        statuses = ", ".join(
            f"{k.split()[1]}: {v}" for k, v in sorted(self.stats.items()) if k.startswith("status")
        )
        return (
            f"answered {self.stats['requests']} requests with {self.stats['messages']} messages "
            f"({self.stats['bytes']} bytes; {statuses or 'none'}); {self.stats['busy']} refused as busy, "
            f"{self.stats['unanswerable']} without a usable response topic"
        )


# -- the subcommand ----------------------------------------------------------------------------------------------------


def request_filter(options: ConnectOptions, fleet: str | None, share_group: str | None) -> str:
    """The subscription: `$share/{group}/` + `{prefix}repo/get`, the prefix with `+` for every fleet when no fleet."""
    template = options.prefix_template
    if fleet is not None:
        topic = render_prefix(template, fleet) + REQUEST_LEVELS
    else:
        render_prefix(template, "fleet")  # the template's own rules
        if "{fleet}" in template and (template.count("{fleet}") != 1 or "{fleet}" not in template.split("/")):
            raise UsageError(
                f"--prefix {template!r}: {{fleet}} must be one whole topic level to serve every fleet (or give --fleet)"
            )
        topic = template.replace("{fleet}", "+") + REQUEST_LEVELS
    return f"$share/{share_group}/{topic}" if share_group else topic


def tick_hook(args: argparse.Namespace, store: Store) -> Callable[[], None] | None:
    """What runs every `TICK_S` seconds in this copy: with `--sign-timestamp KEY` (exactly one copy of the fleet's
    servers is given it), the timestamp is re-signed before it expires (and the snapshot too, with `--sign-snapshot`);
    the other copies only read the store."""
    if args.sign_timestamp is None:
        return None
    from agent.fleet.keys import load_signer, read_passphrase
    from agent.fleet.trust import resign_timestamp

    passphrase = read_passphrase(args.passphrase_file, os.environ)
    timestamp = load_signer(args.sign_timestamp, passphrase)  # a bad key fails at start, not an hour later
    snapshot = load_signer(args.sign_snapshot, passphrase) if args.sign_snapshot is not None else None

    def resign() -> None:
        done = resign_timestamp(args.store, timestamp, snapshot)
        if done.timestamp is not None:
            log.info("timestamp re-signed: v%d, expires %s", done.timestamp, done.timestamp_expires)
            store.rescan()

    resign()  # at start too: a server that was down for a day starts with a fresh timestamp
    return resign


def add_serve_parser(sub: Any) -> None:
    """Adds `serve` to edge-fleet's subcommands (`sub`: argparse's subparsers action)."""
    serve = sub.add_parser(
        "serve",
        help="the block repository: answer devices' metadata and block requests",
        description="Answers devices' TUF metadata and block requests from a release store over MQTT 5. Without "
        "--fleet ($EDGE_FLEET_FLEET) it serves every fleet ($share/repo/edge/+/repo/get); copies side by side share "
        "the requests (one broker identity each). Stops on SIGTERM.",
    )
    serve.add_argument(
        "--store", type=Path, required=True, metavar="DIR", help="the release store (metadata/, targets/)"
    )
    serve.add_argument(
        "--rate",
        type=rate,
        default=RATE_PER_S,
        metavar="N",
        help=f"publishes per second at most (default {RATE_PER_S:g}, AWS IoT Core's limit; 0: no limit)",
    )
    serve.add_argument(
        "--window",
        type=window,
        default=WINDOW,
        metavar="N",
        help=f"answers unacknowledged at once (default {WINDOW}; the broker's Receive Maximum caps it)",
    )
    serve.add_argument(
        "--share-group",
        default=SHARE_GROUP,
        metavar="NAME",
        help=f"shared subscription group of the copies (default {SHARE_GROUP!r}; '' for a plain subscription)",
    )
    serve.add_argument(
        "--rescan",
        type=seconds,
        default=RESCAN_S,
        metavar="S",
        help=f"seconds between rescans of the store for new archives (default {RESCAN_S:g})",
    )
    serve.add_argument(
        "--sign-timestamp",
        type=Path,
        metavar="KEYFILE",
        help="re-sign the timestamp before it expires, with this online key (give it to exactly one copy)",
    )
    serve.add_argument(
        "--sign-snapshot", type=Path, metavar="KEYFILE", help="also re-sign the snapshot when it expires"
    )
    serve.add_argument(
        "--passphrase-file",
        type=Path,
        metavar="FILE",
        help="the keys' passphrase (else $EDGE_FLEET_KEY_PASSPHRASE)",
    )
    add_connection_arguments(serve, suppress=True)
    serve.set_defaults(handler=run_serve)


def run_serve(args: argparse.Namespace, options: ConnectOptions) -> int:
    """`edge-fleet serve`: answer repository requests until SIGTERM (exit 0) or Ctrl-C (130)."""
    fleet = getattr(args, "fleet", None) or os.environ.get("EDGE_FLEET_FLEET") or None
    share = args.share_group or None
    if share is not None and not ID_PATTERN.fullmatch(share):
        raise UsageError(f"--share-group {share!r}: expected 1 to 64 of A-Z a-z 0-9 . _ -")
    try:
        topic_filter = request_filter(options, fleet, share)
    except TopicError as problem:
        raise UsageError(f"--fleet/--prefix: {problem}") from None
    _log_to_stderr()
    store = Store(args.store)
    settings = ServeSettings(topic_filter, args.rate, args.window, args.rescan)
    stop = threading.Event()
    with FleetClient(dataclasses.replace(options, max_inflight=args.window)) as client:
        server = Server(client, store, settings, on_tick=tick_hook(args, store))

        def on_sigterm(_signum: int, _frame: FrameType | None) -> None:
            # Only a plain flag read is safe here: the loop polls `stop` (never waits on it) while `in_loop`;
            # anywhere else (connecting, waiting to reconnect) the handler ends the wait itself.
            if not server.in_loop:
                raise _Stopped
            stop.set()

        previous = signal.signal(signal.SIGTERM, on_sigterm)
        try:
            server.serve(stop)
        except _Stopped:
            pass
        finally:
            signal.signal(signal.SIGTERM, previous)
            log.info("stopped: %s", server.summary())
    return EXIT_OK


class _Stopped(BaseException):
    """SIGTERM outside the loop (while connecting or waiting to reconnect)."""


def _log_to_stderr() -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("edge-fleet serve: %(message)s"))
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False


__all__ = [
    "ServeSettings",
    "Server",
    "add_serve_parser",
    "request_filter",
    "response_client",
    "run_serve",
    "tick_hook",
]
