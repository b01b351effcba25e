"""The fleet broker's access control, generated from an inventory (pure: no I/O besides the text a caller passes).

An inventory names every broker identity of a fleet set-up: the devices of each fleet (with their groups), the
operators (people or tools: `alice`, `alice-watch`, `ci`), each limited to some fleets or given all, and the users of
the block repository server, each serving some fleets. `render_acl` turns it into a Mosquitto `acl_file`: one `user`
block per identity, and no `pattern` lines.

Why blocks and not patterns: a device's identity is its id alone (MQTT user name = client id = certificate CN, made
unforgeable by `use_identity_as_username` + `use_username_as_clientid`), and Mosquitto 2.0's `acl_file` fills in only
`%u` and `%c` in a `pattern` line. A pattern such as `edge/+/devices/%u/events` therefore lets a device write into every
fleet's tree; only a per-device block naming its own fleet confines it there. Mosquitto reads the file at start and
again on SIGHUP (`systemctl reload mosquitto`), so a device added to the inventory is admitted without a restart.

Invariants: every id passes `agent.link.topics.validate_id` (no `/ + # $`, so no id can widen a topic line); each
identity appears once in the whole inventory (a device in two fleets is an error: one client id, one broker identity);
operators and repository users name only fleets of the inventory; the output is deterministic (fleets, devices,
groups and users sorted) and a user not in the inventory is granted nothing.
"""

from __future__ import annotations

import sys
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, model_validator

from agent.errors import AgentError, ConfigError
from agent.link.wire import render_prefix, validate_id

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10 (JetPack 6)
    import tomli as tomllib

DEFAULT_PREFIX = "edge/{fleet}/"
ALL_FLEETS = "all"


class InventoryError(ConfigError):
    """The inventory is not valid TOML, breaks the model or its rules, or cannot be rendered with the prefix."""


def _checked(value: str, what: str) -> str:
    try:
        return validate_id(value, what)
    except AgentError as problem:  # agent.link's TopicError; pydantic reports a ValueError as a problem
        raise ValueError(str(problem)) from None


def _device_id(value: str) -> str:
    return _checked(value, "device id")


def _fleet_id(value: str) -> str:
    return _checked(value, "fleet")


def _group_id(value: str) -> str:
    return _checked(value, "group")


def _user_name(value: str) -> str:
    return _checked(value, "user name")


DeviceId = Annotated[str, AfterValidator(_device_id)]
FleetId = Annotated[str, AfterValidator(_fleet_id)]
GroupId = Annotated[str, AfterValidator(_group_id)]
UserName = Annotated[str, AfterValidator(_user_name)]


class Device(BaseModel):
    """One device of a fleet."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: DeviceId = Field(
        description="The device id: its MQTT client id, user name and certificate CN, and its level under devices/"
    )
    groups: list[GroupId] = Field(
        default_factory=list,
        description="Groups the device is in: it may read groups/{group}/desired of these groups only",
    )


class Fleet(BaseModel):
    """One fleet: a topic tree of its own (`edge/{fleet}/` by default)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    devices: list[Device] = Field(default_factory=list, description="The fleet's devices")


class Operator(BaseModel):
    """A person or a tool with operator rights (edge-fleet, a dashboard): one identity each, so tools run side by side."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: UserName = Field(
        description="MQTT user name: the certificate CN (or the password file's user name)"
    )
    fleets: list[FleetId] | Literal["all"] = Field(
        description='The fleets it may read and write everything of, or "all" (every fleet, present and future)'
    )


class RepositoryUser(BaseModel):
    """An identity of the block repository server (edge-fleet serve; each copy needs an identity of its own: the broker takes the certificate name as the client id, so two copies with one identity take over each other's session)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: UserName = Field(
        description="MQTT user name: the certificate CN (or the password file's user name)"
    )
    fleets: list[FleetId] = Field(
        min_length=1,
        description="The fleets it serves: it reads their repo/get and writes their devices' blocks, nothing else",
    )


class Inventory(BaseModel):
    """Every broker identity of a fleet set-up, and what each may touch."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    fleets: dict[FleetId, Fleet] = Field(description="The fleets by name, each with its devices")
    operators: list[Operator] = Field(default_factory=list, description="Operators (people or tools)")
    repository: list[RepositoryUser] = Field(
        default_factory=list, description="Users of the block repository server"
    )

    @model_validator(mode="after")
    def _one_identity_each(self) -> Inventory:
        problems: list[str] = []
        seen: dict[str, str] = {}  # identity -> where it was first seen

        def claim(name: str, where: str) -> None:
            first = seen.get(name)
            if first is None:
                seen[name] = where
            elif first == where:
                problems.append(f"{name!r} is listed twice as {where}")
            else:
                problems.append(
                    f"{name!r} is {first} and {where}: a name is one MQTT client id and user name, one broker "
                    "identity, so it is listed once only (a device belongs to one fleet)"
                )

        for fleet, content in self.fleets.items():
            where = f"a device of fleet {fleet!r}"
            for device in content.devices:
                claim(device.id, where)
        known = ", ".join(sorted(self.fleets)) or "none"
        for operator in self.operators:
            claim(operator.name, "an operator")
            if isinstance(operator.fleets, list):
                if not operator.fleets:
                    problems.append(f'operator {operator.name!r} has no fleets: list some, or give "all"')
                for fleet in operator.fleets:
                    if fleet not in self.fleets:
                        problems.append(
                            f"operator {operator.name!r}: unknown fleet {fleet!r} (the inventory's fleets: {known})"
                        )
        for user in self.repository:
            claim(user.name, "a repository user")
            for fleet in user.fleets:
                if fleet not in self.fleets:
                    problems.append(
                        f"repository user {user.name!r}: unknown fleet {fleet!r} (the inventory's fleets: {known})"
                    )
        if problems:
            raise ValueError("\n".join(problems))
        return self

    def identities(self) -> list[str]:
        """Every MQTT user name of the inventory (devices, operators, repository users), sorted."""
        names = [d.id for fleet in self.fleets.values() for d in fleet.devices]
        names += [operator.name for operator in self.operators]
        names += [user.name for user in self.repository]
        return sorted(set(names))


def _describe(error: ValidationError, origin: str) -> str:
    lines = []
    for problem in error.errors():
        where = ".".join(str(part) for part in problem["loc"])
        where = f"{origin}: {where}: " if where else f"{origin}: "
        message = str(problem["msg"]).removeprefix("Value error, ")
        if problem["type"] == "extra_forbidden":
            message = "unknown key; check its spelling and section"
        lines += [where + line for line in message.splitlines()]
    return "\n".join(lines)


def inventory_from_mapping(data: dict[str, Any], origin: str = "inventory") -> Inventory:
    """Validates an inventory mapping; InventoryError lists every problem, one line each, with its key path."""
    try:
        return Inventory.model_validate(data)
    except ValidationError as error:
        raise InventoryError(_describe(error, origin)) from None


def parse_inventory(text: str, origin: str = "inventory") -> Inventory:
    """An inventory from TOML text (`origin` names it in error messages, e.g. the file's path)."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as problem:
        raise InventoryError(f"{origin}: not valid TOML: {problem}") from None
    return inventory_from_mapping(data, origin)


# -- rendering --------------------------------------------------------------------------------------------------------


def _prefix(template: str, fleet: str) -> str:
    try:
        return render_prefix(template, fleet)
    except AgentError as problem:
        raise InventoryError(str(problem)) from None


def _all_fleets_filter(template: str, inventory: Inventory) -> str:
    """The topic filter over every fleet's tree: what comes before `{fleet}`, then `#` (`edge/#` by default)."""
    if any(char.isspace() or not char.isprintable() for char in template):
        # An ACL line ends at the end of the line: a line break in a topic would start a rule of its own.
        raise InventoryError(f"topic prefix {template!r} must not contain spaces or control characters")
    _prefix(template, "fleet")  # the template's own rules (placeholders, levels, no `$`)
    if "{fleet}" not in template:
        if len(inventory.fleets) > 1:
            raise InventoryError(
                f"topic prefix {template!r} has no {{fleet}}: every fleet would share one tree, and no ACL could "
                "keep them apart"
            )
        return f"{_prefix(template, 'fleet')}#"
    levels = template.split("/")
    if levels.count("{fleet}") != 1 or template.count("{fleet}") != 1:
        raise InventoryError(
            f"topic prefix {template!r}: {{fleet}} must be one whole topic level, once (e.g. 'edge/{{fleet}}/')"
        )
    head = levels[: levels.index("{fleet}")]
    return "/".join([*head, "#"])


def _header(source: str, template: str) -> list[str]:
    flag = "" if template == DEFAULT_PREFIX else f" --prefix '{template}'"
    return [
        "# Mosquitto ACL (acl_file) for an edge-agent fleet set-up.",
        f"# GENERATED from the inventory {source}",
        "# (agent/fleet/acl.py): edit the inventory, not this file, and regenerate it with",
        f"#   scripts/make_acl.py {source}{flag} -o /etc/mosquitto/edge-fleet.acl",
        "# or, making a client certificate for every identity as well,",
        f"#   scripts/make_certs.py OUT_DIR --inventory {source}{flag}",
        "# Mosquitto reads this file at start and again on SIGHUP (no connection is dropped):",
        "#   systemctl reload mosquitto        or        kill -HUP $(pidof mosquitto)",
        "#",
        "# Who is who: a client's MQTT user name is its certificate CN (use_identity_as_username) and also its client id",
        "# (use_username_as_clientid), so no one can take another's name or session. Each identity has a `user` block",
        "# below. There are no `pattern` lines: Mosquitto 2.0 fills in only %u and %c, so a pattern cannot confine a device",
        "# to its own fleet. A user name not listed here may publish and receive nothing.",
        f'# Topic prefix: {template} (the topic layout: "The MQTT protocol" in README.md).',
        "#",
        "# Each device writes its own status (also its last will), telemetry, events, results and command replies",
        "# (to cmd/+/reply, or to a response topic under its reply/); reads its own desired state, commands and model",
        "# blocks (the repository's answers); writes its fleet's repo/get (metadata and block requests); reads the",
        "# desired state of its own groups only. Nothing of another device, group or fleet.",
    ]


def _device_block(prefix: str, device: Device) -> list[str]:
    own = f"{prefix}devices/{device.id}/"
    groups = sorted(set(device.groups))
    lines = [
        f"# device {device.id}" + (f" (groups: {', '.join(groups)})" if groups else " (no groups)"),
        f"user {device.id}",
    ]
    lines += [f"topic write {own}{kind}" for kind in ("status", "telemetry", "events", "results")]
    lines += [
        f"topic read {own}desired",
        f"topic read {own}cmd/+",
        f"topic write {own}cmd/+/reply",
        f"topic write {own}reply/#",
        f"topic read {own}blocks/#",
        f"topic write {prefix}repo/get",
    ]
    lines += [f"topic read {prefix}groups/{group}/desired" for group in groups]
    return lines


def render_acl(
    inventory: Inventory, prefix_template: str = DEFAULT_PREFIX, *, source: str = "inventory.toml"
) -> str:
    """The Mosquitto ACL text for `inventory` (deterministic, with comments); `source` names the inventory file."""
    everything = _all_fleets_filter(prefix_template, inventory)
    source = "".join(char if char.isprintable() else "?" for char in source)  # it goes into comment lines
    prefixes = {fleet: _prefix(prefix_template, fleet) for fleet in sorted(inventory.fleets)}
    lines = _header(source, prefix_template)

    for fleet, prefix in prefixes.items():
        devices = sorted(inventory.fleets[fleet].devices, key=lambda device: device.id)
        lines += [
            "",
            f"# == fleet {fleet} ({prefix}): {len(devices)} device{'' if len(devices) == 1 else 's'} ==",
        ]
        for device in devices:
            lines += ["", *_device_block(prefix, device)]

    lines += [
        "",
        "# == operators (edge-fleet, dashboards): one identity per person or tool, so tools run side by side ==",
        "# Each reads and writes everything of its fleets.",
    ]
    if not inventory.operators:
        lines.append("# (none)")
    for operator in sorted(inventory.operators, key=lambda o: o.name):
        if isinstance(operator.fleets, list):
            fleets = sorted(set(operator.fleets))
            lines += ["", f"# operator {operator.name}: fleets {', '.join(fleets)}", f"user {operator.name}"]
            lines += [f"topic readwrite {prefixes[fleet]}#" for fleet in fleets]
        else:
            lines += ["", f"# operator {operator.name}: every fleet", f"user {operator.name}"]
            lines.append(f"topic readwrite {everything}")

    lines += [
        "",
        "# == block repository servers (edge-fleet serve; its copies may share one subscription, $share/repo/...) ==",
        "# Each reads the block requests of the fleets it serves and writes blocks to their devices, nothing else.",
    ]
    if not inventory.repository:
        lines.append("# (none)")
    for user in sorted(inventory.repository, key=lambda u: u.name):
        fleets = sorted(set(user.fleets))
        lines += ["", f"# repository user {user.name}: fleets {', '.join(fleets)}", f"user {user.name}"]
        for fleet in fleets:
            lines += [
                f"topic read {prefixes[fleet]}repo/get",
                f"topic write {prefixes[fleet]}devices/+/blocks/#",
            ]
    return "\n".join(lines) + "\n"


__all__ = [
    "ALL_FLEETS",
    "DEFAULT_PREFIX",
    "Device",
    "Fleet",
    "Inventory",
    "InventoryError",
    "Operator",
    "RepositoryUser",
    "inventory_from_mapping",
    "parse_inventory",
    "render_acl",
]
