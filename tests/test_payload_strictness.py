"""Inbound payloads are validated strictly: a string is never taken for a number or a boolean, and the error says so."""

from __future__ import annotations

import pytest

from agent.link.errors import PayloadError
from agent.link.payloads import CommandRequest, SetLogLevelArgs, SnapshotArgs, parse
from agent.link.policy import ResultsPolicy

REFUSED = [
    (CommandRequest, b'{"schema": "1"}', "schema"),
    (CommandRequest, b'{"schema": true}', "schema"),
    (SnapshotArgs, b'{"max_bytes": "50000"}', "max_bytes"),
    (SnapshotArgs, b'{"max_bytes": 5e4}', "max_bytes"),
    (ResultsPolicy, b'{"mode": "every", "max_per_s": "5"}', "max_per_s"),
    (SetLogLevelArgs, b'{"level": 10}', "level"),
]


@pytest.mark.parametrize(("model", "data", "field"), REFUSED, ids=[r[1].decode() for r in REFUSED])
def test_a_loosely_typed_request_is_refused_naming_the_field(model, data, field):
    with pytest.raises(PayloadError, match=field):
        parse(model, data)


def test_well_typed_requests_still_pass_and_an_integer_is_a_valid_float():
    assert parse(CommandRequest, b'{"schema": 1, "args": {"x": "1"}}').args == {"x": "1"}
    assert parse(SnapshotArgs, b'{"max_bytes": 50000}').max_bytes == 50000
    assert parse(ResultsPolicy, b'{"mode": "max_rate", "max_per_s": 5}').max_per_s == 5.0
