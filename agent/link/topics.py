"""Every MQTT topic the agent uses, built and parsed in one place (pure: no I/O).

Layout (after the prefix, `edge/{fleet}/` by default):
    devices/{device}/status        retained online/offline (the offline one is also the last will)
    devices/{device}/telemetry     metrics snapshots
    devices/{device}/events        anomalies, drift, update progress, errors
    devices/{device}/results       decoded results, as the results policy admits them
    devices/{device}/desired       retained: the model release this device should run
    devices/{device}/cmd/{name}    command requests; replies go to the request's MQTT 5 response topic,
    devices/{device}/cmd/{name}/reply   or here when the request names none
    groups/{group}/desired         retained: the model release a group should run
    devices/{device}/blocks/{session}  the repository's answers to this device's requests (MQTT 5 response topic)
    repo/get                       block requests to the repository server

Invariants: an id (device, fleet, group, command or release name) matches `ID_PATTERN`, so it can never add a level,
a wildcard, a `$` system prefix or a NUL to a topic, and it is safe as an MQTT client id and as a file name. Every
topic built here is a valid MQTT topic name; `parse` returns None for anything not in the layout.
"""

from __future__ import annotations

import re
import string
from dataclasses import dataclass
from typing import Literal

from agent.link.errors import TopicError

ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
"""Device, fleet, group, command and release names: 1 to 64 characters, no `/ + # $`, spaces or control characters."""

MAX_TOPIC_BYTES = 65535
DEVICE_KINDS = ("status", "telemetry", "events", "results", "desired")

TopicKind = Literal[
    "status",
    "telemetry",
    "events",
    "results",
    "desired",
    "cmd",
    "cmd-reply",
    "group-desired",
    "blocks",
    "repo-get",
]


def validate_id(value: str, what: str = "id") -> str:
    """Returns `value` if it is a valid id, else raises TopicError naming `what`."""
    if not isinstance(value, str) or not ID_PATTERN.fullmatch(value):
        raise TopicError(
            f"invalid {what} {value!r}: expected 1 to 64 of A-Z a-z 0-9 . _ - (starting with a letter or digit), "
            "with no '/', '+', '#' or '$'"
        )
    return value


def validate_topic_name(topic: str) -> str:
    """Returns `topic` if it is a valid MQTT topic name to publish to (no wildcards, no NUL, not empty)."""
    if not topic:
        raise TopicError("empty topic")
    if "+" in topic or "#" in topic:
        raise TopicError(f"topic {topic!r} contains a wildcard")
    if "\x00" in topic:
        raise TopicError("topic contains a NUL character")
    if len(topic.encode("utf-8")) > MAX_TOPIC_BYTES:
        raise TopicError("topic longer than 65535 bytes")
    return topic


def render_prefix(template: str, fleet: str) -> str:
    """Fills `{fleet}` into a prefix template and checks the result (empty, or levels ending with `/`)."""
    validate_id(fleet, "fleet")
    names = [name for _, name, _, _ in string.Formatter().parse(template) if name is not None]
    unknown = sorted(set(names) - {"fleet"})
    if unknown:
        raise TopicError(
            f"topic prefix {template!r} uses unknown placeholders {unknown}; only {{fleet}} is known"
        )
    try:
        prefix = template.format(fleet=fleet)
    except (ValueError, IndexError) as problem:
        raise TopicError(f"topic prefix {template!r} is not a valid template: {problem}") from None
    if prefix == "":
        return prefix
    if not prefix.endswith("/"):
        raise TopicError(f"topic prefix {prefix!r} must end with '/'")
    if prefix.startswith("$"):
        raise TopicError(f"topic prefix {prefix!r} must not start with '$' (reserved for the broker)")
    if "//" in prefix or prefix.startswith("/"):
        raise TopicError(f"topic prefix {prefix!r} has an empty level")
    validate_topic_name(prefix)
    return prefix


@dataclass(frozen=True, slots=True)
class ParsedTopic:
    """What a topic in the layout names."""

    kind: TopicKind
    device: str | None = None
    group: str | None = None
    name: str | None = None
    """Command name or release name."""
    version: int | None = None


class Topics:
    """The topics of one device in one fleet."""

    def __init__(self, device: str, fleet: str, group: str, prefix_template: str = "edge/{fleet}/") -> None:
        self.device = validate_id(device, "device id")
        self.fleet = validate_id(fleet, "fleet")
        self.group = validate_id(group, "group")
        self.prefix = render_prefix(prefix_template, fleet)
        self._device_root = f"{self.prefix}devices/{device}/"

    @property
    def status(self) -> str:
        """Retained online/offline status (and last will)."""
        return self._device_root + "status"

    @property
    def telemetry(self) -> str:
        """Metrics snapshots."""
        return self._device_root + "telemetry"

    @property
    def events(self) -> str:
        """Events."""
        return self._device_root + "events"

    @property
    def results(self) -> str:
        """Decoded results."""
        return self._device_root + "results"

    @property
    def desired(self) -> str:
        """Retained desired state for this device."""
        return self._device_root + "desired"

    def cmd(self, name: str) -> str:
        """The request topic of command `name`."""
        return f"{self._device_root}cmd/{validate_id(name, 'command name')}"

    @property
    def cmd_filter(self) -> str:
        """Subscription filter for every command addressed to this device."""
        return self._device_root + "cmd/+"

    def cmd_reply(self, name: str) -> str:
        """Where a reply goes when the request names no response topic."""
        return self.cmd(name) + "/reply"

    def group_desired(self, group: str | None = None) -> str:
        """Retained desired state of a group (this device's by default)."""
        return f"{self.prefix}groups/{validate_id(group or self.group, 'group')}/desired"

    def blocks(self, session: str) -> str:
        """Where the repository answers this device's requests of one session (its response topic)."""
        return f"{self._device_root}blocks/{validate_id(session, 'session')}"

    @property
    def repo_get(self) -> str:
        """Block requests."""
        return self.prefix + "repo/get"

    def parse(self, topic: str) -> ParsedTopic | None:
        """What `topic` names in this fleet's layout, or None if it is not in the layout."""
        if not topic.startswith(self.prefix):
            return None
        levels = topic[len(self.prefix) :].split("/")
        if not all(ID_PATTERN.fullmatch(level) for level in levels):
            return None
        match levels:
            case ["devices", device, kind] if kind in DEVICE_KINDS:
                return ParsedTopic(kind=kind, device=device)  # type: ignore[arg-type]
            case ["devices", device, "cmd", name]:
                return ParsedTopic(kind="cmd", device=device, name=name)
            case ["devices", device, "cmd", name, "reply"]:
                return ParsedTopic(kind="cmd-reply", device=device, name=name)
            case ["groups", group, "desired"]:
                return ParsedTopic(kind="group-desired", group=group)
            case ["devices", device, "blocks", session]:
                return ParsedTopic(kind="blocks", device=device, name=session)
            case ["repo", "get"]:
                return ParsedTopic(kind="repo-get")
        return None


__all__ = [
    "ID_PATTERN",
    "ParsedTopic",
    "TopicKind",
    "Topics",
    "render_prefix",
    "validate_id",
    "validate_topic_name",
]
