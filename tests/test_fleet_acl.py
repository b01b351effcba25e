"""The ACL generator (agent/fleet/acl.py) and its entry points, without a broker: the text it renders for a small
inventory (golden), every validation error, the prefix template, the shipped example being the example inventory
rendered, scripts/make_acl.py and scripts/make_certs.py --inventory. The rendered ACL's effect on a real Mosquitto is
tested in test_link_security.py and test_fleet_cli.py."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import NameOID

from agent.fleet.acl import Inventory, InventoryError, parse_inventory, render_acl

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = ROOT / "firmware-config" / "mosquitto"
TEST_INVENTORY = ROOT / "tests" / "data" / "fleet-inventory.toml"

SMALL = """
[fleets.f2]
devices = [{ id = "cam-02" }]

[fleets.f1]
devices = [{ id = "cam-01", groups = ["lobby", "dock", "lobby"] }]

[[operators]]
name = "ci"
fleets = ["f2"]

[[operators]]
name = "alice"
fleets = "all"

[[repository]]
name = "repo"
fleets = ["f1"]
"""

SMALL_ACL = """\
# Mosquitto ACL (acl_file) for an edge-agent fleet set-up.
# GENERATED from the inventory small.toml
# (agent/fleet/acl.py): edit the inventory, not this file, and regenerate it with
#   scripts/make_acl.py small.toml -o /etc/mosquitto/edge-fleet.acl
# or, making a client certificate for every identity as well,
#   scripts/make_certs.py OUT_DIR --inventory small.toml
# Mosquitto reads this file at start and again on SIGHUP (no connection is dropped):
#   systemctl reload mosquitto        or        kill -HUP $(pidof mosquitto)
#
# Who is who: a client's MQTT user name is its certificate CN (use_identity_as_username) and also its client id
# (use_username_as_clientid), so no one can take another's name or session. Each identity has a `user` block
# below. There are no `pattern` lines: Mosquitto 2.0 fills in only %u and %c, so a pattern cannot confine a device
# to its own fleet. A user name not listed here may publish and receive nothing.
# Topic prefix: edge/{fleet}/ (the topic layout: "The MQTT protocol" in README.md).
#
# Each device writes its own status (also its last will), telemetry, events, results and command replies
# (to cmd/+/reply, or to a response topic under its reply/); reads its own desired state, commands and model
# blocks (the repository's answers); writes its fleet's repo/get (metadata and block requests); reads the
# desired state of its own groups only. Nothing of another device, group or fleet.

# == fleet f1 (edge/f1/): 1 device ==

# device cam-01 (groups: dock, lobby)
user cam-01
topic write edge/f1/devices/cam-01/status
topic write edge/f1/devices/cam-01/telemetry
topic write edge/f1/devices/cam-01/events
topic write edge/f1/devices/cam-01/results
topic read edge/f1/devices/cam-01/desired
topic read edge/f1/devices/cam-01/cmd/+
topic write edge/f1/devices/cam-01/cmd/+/reply
topic write edge/f1/devices/cam-01/reply/#
topic read edge/f1/devices/cam-01/blocks/#
topic write edge/f1/repo/get
topic read edge/f1/groups/dock/desired
topic read edge/f1/groups/lobby/desired

# == fleet f2 (edge/f2/): 1 device ==

# device cam-02 (no groups)
user cam-02
topic write edge/f2/devices/cam-02/status
topic write edge/f2/devices/cam-02/telemetry
topic write edge/f2/devices/cam-02/events
topic write edge/f2/devices/cam-02/results
topic read edge/f2/devices/cam-02/desired
topic read edge/f2/devices/cam-02/cmd/+
topic write edge/f2/devices/cam-02/cmd/+/reply
topic write edge/f2/devices/cam-02/reply/#
topic read edge/f2/devices/cam-02/blocks/#
topic write edge/f2/repo/get

# == operators (edge-fleet, dashboards): one identity per person or tool, so tools run side by side ==
# Each reads and writes everything of its fleets.

# operator alice: every fleet
user alice
topic readwrite edge/#

# operator ci: fleets f2
user ci
topic readwrite edge/f2/#

# == block repository servers (edge-fleet serve; its copies may share one subscription, $share/repo/...) ==
# Each reads the block requests of the fleets it serves and writes blocks to their devices, nothing else.

# repository user repo: fleets f1
user repo
topic read edge/f1/repo/get
topic write edge/f1/devices/+/blocks/#
"""


def acl_lines(text: str) -> list[str]:
    """The ACL's rule lines (no comments, no blank lines)."""
    return [line for line in text.splitlines() if line and not line.startswith("#")]


def test_small_inventory_renders_the_golden_acl() -> None:
    assert render_acl(parse_inventory(SMALL), source="small.toml") == SMALL_ACL


def test_rendering_is_deterministic_whatever_the_inventory_order() -> None:
    reordered = """
[fleets.f1]
devices = [{ id = "cam-01", groups = ["dock", "lobby"] }]

[fleets.f2]
devices = [{ id = "cam-02", groups = [] }]

[[repository]]
name = "repo"
fleets = ["f1", "f1"]

[[operators]]
name = "alice"
fleets = "all"

[[operators]]
name = "ci"
fleets = ["f2"]
"""
    assert render_acl(parse_inventory(reordered), source="small.toml") == SMALL_ACL


def test_no_pattern_lines_and_every_rule_inside_a_user_block() -> None:
    text = render_acl(parse_inventory(TEST_INVENTORY.read_text()))
    lines = acl_lines(text)
    assert lines[0].startswith("user ")  # nothing for anonymous clients before the first user block
    assert not any(line.startswith("pattern") or "%u" in line or "%c" in line for line in lines)
    assert {line.split()[0] for line in lines} == {"user", "topic"}
    assert sorted(line.split()[1] for line in lines if line.startswith("user ")) == [
        "dev-a",
        "dev-b",
        "dev-x",
        "operator",
        "operator-watch",
        "ops-f1",
        "repo",
    ]


def test_a_device_block_is_the_old_patterns_with_its_own_fleet_and_groups() -> None:
    # The shipped ACL before generation: `pattern ... edge/+/devices/%u/...`, `edge/+/groups/+/desired`, ...
    old_patterns = [
        "write edge/+/devices/%u/status",
        "write edge/+/devices/%u/telemetry",
        "write edge/+/devices/%u/events",
        "write edge/+/devices/%u/results",
        "read edge/+/devices/%u/desired",
        "read edge/+/devices/%u/cmd/+",
        "write edge/+/devices/%u/cmd/+/reply",
        "write edge/+/devices/%u/reply/#",
        "read edge/+/devices/%u/blocks/#",
        "read edge/+/groups/+/desired",
        "write edge/+/repo/get",
    ]
    lines = acl_lines(render_acl(parse_inventory(SMALL)))
    start = lines.index("user cam-01")
    block = lines[start + 1 : start + 13]  # 11 old rules, the one group pattern becoming two
    expected = [f"topic {rule.replace('%u', 'cam-01').replace('+', 'f1', 1)}" for rule in old_patterns]
    expected.remove("topic read edge/f1/groups/+/desired")
    expected += ["topic read edge/f1/groups/dock/desired", "topic read edge/f1/groups/lobby/desired"]
    assert sorted(block) == sorted(expected)


def test_a_custom_prefix_template_is_used_for_every_fleet_and_for_all_fleets() -> None:
    text = render_acl(parse_inventory(SMALL), "site/{fleet}/mqtt/", source="small.toml")
    lines = acl_lines(text)
    assert "topic write site/f1/mqtt/devices/cam-01/events" in lines
    assert "topic readwrite site/#" in lines  # alice: every fleet
    assert "topic readwrite site/f2/mqtt/#" in lines  # ci
    assert "topic read site/f1/mqtt/repo/get" in lines
    assert "scripts/make_acl.py small.toml --prefix 'site/{fleet}/mqtt/'" in text
    assert not any(line.split()[-1].startswith("edge/") for line in lines)
    # With the fleet as the first level, "every fleet" is every topic (the broker's own $SYS stays out of `#`).
    assert "topic readwrite #" in acl_lines(render_acl(parse_inventory(SMALL), "{fleet}/"))


@pytest.mark.parametrize(
    ("template", "fragment"),
    [
        ("edge/", "has no {fleet}: every fleet would share one tree"),
        ("edge-{fleet}/", "{fleet} must be one whole topic level"),
        ("edge/{fleet}/{fleet}/", "{fleet} must be one whole topic level"),
        ("edge/{fleet}", "must end with '/'"),
        ("edge/{site}/", "unknown placeholders"),
        (
            "edge\nuser intruder\ntopic readwrite #\n/{fleet}/",
            "must not contain spaces or control characters",
        ),
        ("my edge/{fleet}/", "must not contain spaces or control characters"),
    ],
)
def test_a_prefix_template_that_cannot_keep_fleets_apart_is_an_error(template: str, fragment: str) -> None:
    with pytest.raises(InventoryError, match="topic prefix") as caught:
        render_acl(parse_inventory(SMALL), template)
    assert fragment in str(caught.value)


def test_the_inventory_name_cannot_add_a_line_to_the_acl() -> None:
    text = render_acl(parse_inventory(SMALL), source="inv.toml\nuser intruder\ntopic readwrite #")
    assert "user intruder" not in acl_lines(text) and "topic readwrite #" not in acl_lines(text)
    assert acl_lines(text) == acl_lines(SMALL_ACL)


def test_a_prefix_without_fleet_is_fine_for_a_single_fleet() -> None:
    one = parse_inventory(
        '[fleets.f1]\ndevices = [{ id = "cam-01" }]\n[[operators]]\nname = "alice"\nfleets = "all"\n'
    )
    lines = acl_lines(render_acl(one, ""))
    assert "topic write devices/cam-01/events" in lines and "topic readwrite #" in lines


@pytest.mark.parametrize(
    ("toml", "fragments"),
    [
        (
            '[fleets.f1]\ndevices = [{ id = "cam/01" }]',
            ["fleets.f1.devices.0.id", "invalid device id 'cam/01'"],
        ),
        ('[fleets.f1]\ndevices = [{ id = "cam-#" }]', ["invalid device id 'cam-#'"]),
        ('[fleets.f1]\ndevices = [{ id = "$SYS" }]', ["invalid device id '$SYS'"]),
        ('[fleets."f+1"]\ndevices = []', ["invalid fleet 'f+1'"]),
        ('[fleets.f1]\ndevices = [{ id = "cam-01", groups = ["a b"] }]', ["invalid group 'a b'"]),
        (
            'fleets = {}\n[[operators]]\nname = ""\nfleets = "all"',
            ["operators.0.name", "invalid user name ''"],
        ),
        ('fleets = {}\n[[repository]]\nname = "re/po"\nfleets = ["f1"]', ["invalid user name 're/po'"]),
    ],
)
def test_a_bad_id_is_an_error_naming_where_it_is(toml: str, fragments: list[str]) -> None:
    with pytest.raises(InventoryError) as caught:
        parse_inventory(toml, "inv.toml")
    assert str(caught.value).startswith("inv.toml: ")
    for fragment in fragments:
        assert fragment in str(caught.value)


def test_a_device_in_two_fleets_is_an_error() -> None:
    toml = '[fleets.f1]\ndevices = [{ id = "cam-01" }]\n[fleets.f2]\ndevices = [{ id = "cam-01" }]\n'
    with pytest.raises(InventoryError) as caught:
        parse_inventory(toml, "inv.toml")
    assert str(caught.value) == (
        "inv.toml: 'cam-01' is a device of fleet 'f1' and a device of fleet 'f2': a name is one MQTT client id and "
        "user name, one broker identity, so it is listed once only (a device belongs to one fleet)"
    )


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        (
            '[fleets.f1]\n[[operators]]\nname = "ci"\nfleets = ["f1", "f9"]',
            "operator 'ci': unknown fleet 'f9' (the inventory's fleets: f1)",
        ),
        (
            '[fleets.f1]\n[[repository]]\nname = "repo"\nfleets = ["f2"]',
            "repository user 'repo': unknown fleet 'f2' (the inventory's fleets: f1)",
        ),
        ('[fleets.f1]\n[[operators]]\nname = "ci"\nfleets = []', "operator 'ci' has no fleets"),
        (
            '[fleets.f1]\n[[repository]]\nname = "repo"\nfleets = []',
            "repository.0.fleets: List should have at least 1",
        ),
        (
            '[fleets.f1]\ndevices = [{ id = "cam-01" }, { id = "cam-01" }]',
            "'cam-01' is listed twice as a device of fleet 'f1'",
        ),
        (
            '[fleets.f1]\ndevices = [{ id = "alice" }]\n[[operators]]\nname = "alice"\nfleets = "all"',
            "'alice' is a device of fleet 'f1' and an operator",
        ),
        (
            '[fleets.f1]\n[[operators]]\nname = "ci"\nfleets = "all"\n[[operators]]\nname = "ci"\nfleets = ["f1"]',
            "'ci' is listed twice as an operator",
        ),
        ('[fleets.f1]\n[[operators]]\nname = "ci"\nfleets = "some"', "operators.0.fleets"),
        ('[fleets.f1]\ndevices = [{ id = "cam-01", group = "lobby" }]', "group: unknown key"),
        ("[fleet.f1]\ndevices = []", "fleet: unknown key"),
        ("[fleets.f1\n", "not valid TOML"),
    ],
)
def test_an_inventory_that_breaks_the_rules_is_an_error(toml: str, message: str) -> None:
    with pytest.raises(InventoryError) as caught:
        parse_inventory(toml, "inv.toml")
    assert message in str(caught.value)


def test_every_problem_is_reported_one_line_each() -> None:
    toml = """
[fleets.f1]
devices = [{ id = "cam-01" }]
[fleets.f2]
devices = [{ id = "cam-01" }]
[[operators]]
name = "ci"
fleets = ["f3"]
[[repository]]
name = "repo"
fleets = ["f4"]
"""
    with pytest.raises(InventoryError) as caught:
        parse_inventory(toml, "inv.toml")
    lines = str(caught.value).splitlines()
    assert len(lines) == 3 and all(line.startswith("inv.toml: ") for line in lines)
    assert "'f3'" in lines[1] and "'f4'" in lines[2]


def test_identities_are_every_name_once() -> None:
    inventory = parse_inventory(TEST_INVENTORY.read_text())
    assert isinstance(inventory, Inventory)
    assert inventory.identities() == [
        "dev-a",
        "dev-b",
        "dev-x",
        "operator",
        "operator-watch",
        "ops-f1",
        "repo",
    ]


def test_the_shipped_acl_is_the_example_inventory_rendered() -> None:
    source = "firmware-config/mosquitto/inventory.example.toml"
    inventory = parse_inventory((ROOT / source).read_text(), source)
    assert (SHIPPED / "edge-fleet.acl").read_text() == render_acl(inventory, source=source), (
        f"regenerate it: scripts/make_acl.py {source} -o firmware-config/mosquitto/edge-fleet.acl"
    )
    assert "use_username_as_clientid true" in (SHIPPED / "mosquitto.conf").read_text()
    assert "use_identity_as_username true" in (SHIPPED / "mosquitto.conf").read_text()


# -- entry points -----------------------------------------------------------------------------------------------------


def run_script(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, timeout=60, cwd=ROOT, check=False
    )


def test_make_acl_writes_the_file_or_prints_it(tmp_path: Path) -> None:
    expected = render_acl(parse_inventory(TEST_INVENTORY.read_text()), source=str(TEST_INVENTORY))
    printed = run_script("scripts/make_acl.py", str(TEST_INVENTORY))
    assert printed.returncode == 0 and printed.stdout == expected, printed.stderr
    target = tmp_path / "edge-fleet.acl"
    written = run_script("scripts/make_acl.py", str(TEST_INVENTORY), "-o", str(target))
    assert written.returncode == 0 and written.stdout == "", written.stderr
    assert target.read_text() == expected and "SIGHUP" in written.stderr
    assert [p.name for p in tmp_path.iterdir()] == ["edge-fleet.acl"]  # no temporary file left
    custom = run_script("scripts/make_acl.py", str(TEST_INVENTORY), "--prefix", "site/{fleet}/")
    assert "topic write site/f1/devices/dev-a/events" in custom.stdout


def test_make_acl_reports_an_invalid_inventory_one_line_per_problem(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('[fleets.f1]\ndevices = [{ id = "a/b" }]\n[[operators]]\nname = "c i"\nfleets = ["f1"]\n')
    result = run_script("scripts/make_acl.py", str(bad), "-o", str(tmp_path / "out.acl"))
    assert result.returncode == 1 and "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 2 and all(line.startswith(f"make_acl: error: {bad}: ") for line in lines)
    assert "invalid device id 'a/b'" in lines[0] and "invalid user name 'c i'" in lines[1]
    assert not (tmp_path / "out.acl").exists()
    missing = run_script("scripts/make_acl.py", str(tmp_path / "none.toml"))
    assert missing.returncode == 1 and "cannot read" in missing.stderr


def test_make_certs_with_an_inventory_makes_a_certificate_per_identity_and_the_acl(tmp_path: Path) -> None:
    out = tmp_path / "pki"
    result = run_script(
        "scripts/make_certs.py", str(out), "--inventory", str(TEST_INVENTORY), "--operator", "bob"
    )
    assert result.returncode == 0, result.stderr
    inventory = parse_inventory(TEST_INVENTORY.read_text())
    for name in [*inventory.identities(), "bob"]:
        cert = x509.load_pem_x509_certificate((out / f"{name}.crt").read_bytes())
        assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == name
        assert (out / f"{name}.key").stat().st_mode & 0o077 == 0
    assert (out / "edge-fleet.acl").read_text() == render_acl(inventory, source=str(TEST_INVENTORY))
    assert {"ca.crt", "broker.crt"} <= {p.name for p in out.iterdir()}


def test_make_certs_refuses_an_invalid_inventory_and_reserved_names(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('[fleets.f1]\ndevices = [{ id = "cam-01" }]\n[fleets.f2]\ndevices = [{ id = "cam-01" }]\n')
    result = run_script("scripts/make_certs.py", str(tmp_path / "pki"), "--inventory", str(bad))
    assert result.returncode == 1 and "listed once only" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "pki").exists()  # nothing written
    reserved = tmp_path / "reserved.toml"
    reserved.write_text('[fleets.f1]\ndevices = [{ id = "broker" }]\n')
    result = run_script("scripts/make_certs.py", str(tmp_path / "pki"), "--inventory", str(reserved))
    assert result.returncode == 2 and "broker: reserved" in result.stderr
