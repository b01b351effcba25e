"""The fleet's topic layout seen from the operator's side: filters over every device, and reply topics (pure: no I/O).

Built on the agent's own `Topics` (through `agent.link.wire`), so the operator and the agent cannot disagree on a topic. Invariants: every id put into
a topic passes `validate_id` (a device or command name can never add a level or a wildcard); reply topics lie under
`devices/{device}/reply/`, where the shipped ACL lets a device write its replies.
"""

from __future__ import annotations

from agent.link.wire import ParsedTopic, Topics, render_prefix, validate_id

OPERATOR_ID = "edge-fleet"
"""Stand-in device id for the parser: `Topics.parse` reads every device's topics, whichever id it was built for."""
ALL = "+"


class FleetTopics:
    """The topics of one fleet, for any device."""

    def __init__(self, fleet: str, prefix_template: str = "edge/{fleet}/") -> None:
        self.fleet = validate_id(fleet, "fleet")
        self.prefix_template = prefix_template
        self.prefix = render_prefix(prefix_template, fleet)
        self._parser = Topics(OPERATOR_ID, fleet, "default", prefix_template)

    def device(self, device: str) -> Topics:
        """The topics of one device (its group does not matter to an operator)."""
        return Topics(device, self.fleet, "default", self.prefix_template)

    def filter(self, kind: str, device: str = ALL) -> str:
        """Subscription filter for `kind` (status, telemetry, events, results) of one device or of all (`+`)."""
        if device != ALL:
            validate_id(device, "device id")
        return f"{self.prefix}devices/{device}/{kind}"

    def reply(self, device: str, token: str) -> str:
        """A response topic for one request: `devices/{device}/reply/{token}`."""
        return f"{self.prefix}devices/{validate_id(device, 'device id')}/reply/{validate_id(token, 'reply token')}"

    def parse(self, topic: str) -> ParsedTopic | None:
        """What `topic` names in this fleet's layout, or None."""
        return self._parser.parse(topic)


__all__ = ["ALL", "FleetTopics"]
