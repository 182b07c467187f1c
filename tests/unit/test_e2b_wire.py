"""The E2B face's wire shapes (e2b/wire.py): what the SDK sends, parsed; records rendered."""

from __future__ import annotations

from urllib.parse import quote, urlencode

import pytest

from sandport.control.requests import CreateSandbox
from sandport.e2b import wire
from sandport.errors import ValidationFailed
from sandport.store import SandboxRecord

BASE = CreateSandbox(image_name="python", timeout_minutes=5, vcpus=1, mem_mib=512,
                     disk_size_mib=4096)


def record(**changes: object) -> SandboxRecord:
    made = SandboxRecord(id="a" * 20, team_id="t", status="active", image_name="python",
                         vcpus=2, mem_mib=1024, disk_size_mib=4096, timeout_minutes=5,
                         token="x", token_expires_at=0.0, created_at=1000.0, updated_at=1000.0,
                         runtime="runc", started_at=1001.0, expires_at=1301.0,
                         metadata={"k": "v"})
    return made.evolve(**changes)


def test_a_create_as_the_sdk_sends_it() -> None:
    body = {"templateID": "base", "metadata": {"run": "7"}, "envVars": {"A": "1"},
            "timeout": 90, "autoPause": True, "autoPauseMemory": True,
            "autoResume": {"enabled": True},
            "allow_internet_access": False,
            "network": {"allowOut": ["198.51.100.7", "pypi.org"],
                        "maskRequestHost": "localhost:${PORT}"}}
    made = wire.parse_new_sandbox(body, BASE)
    assert (made.image_name, made.timeout_s, made.timeout_minutes) == ("e2b-base", 90, 2)
    assert made.metadata == {"run": "7"} and made.env == {"A": "1"}
    assert (made.on_timeout, made.auto_resume, made.internet_asked) == ("pause", True, False)
    assert made.network.allow_out == ("198.51.100.7/32",)
    assert made.network.allow_names == ("pypi.org",)
    assert made.network.open_ports is True  # every port public, as on E2B
    assert made.network.open_ports_auth is False
    closed = wire.parse_new_sandbox({"network": {"allowPublicTraffic": False}}, BASE)
    assert closed.network.open_ports and closed.network.open_ports_auth
    assert wire.detail(record(network=closed.network.to_wire()), None)["network"][
        "allowPublicTraffic"] is False
    plain = wire.parse_new_sandbox({"templateID": "node:22", "metadata": {}, "envVars": {}},
                                   BASE)
    assert (plain.image_name, plain.timeout_s, plain.internet_asked) == ("node:22", 300, None)


@pytest.mark.parametrize("body, words", [
    ({"templateID": 7}, "templateID"),
    ({"timeout": 0}, "timeout"),
    ({"timeout": True}, "timeout"),
    ({"timeout": 10**9}, "timeout"),
    ({"metadata": {"k": 1}}, "metadata"),
    ({"metadata": {"": "v"}}, "metadata"),
    ({"metadata": {f"k{i}": "v" for i in range(65)}}, "at most 64"),
    ({"envVars": {"A": 1}}, "envVars"),
    ({"volumeMounts": []}, "volumeMounts"),
    ({"mcp": {}}, "mcp"),
    ({"network": {"allowPublicTraffic": "no"}}, "allowPublicTraffic"),
    ({"network": {"egressProxy": {}}}, "egressProxy"),
    ({"network": {"denyOut": ["pypi.org"]}}, "denyOut"),
    ({"autoResume": {"enabled": 1}}, "enabled"),
    ({"autoPause": True, "autoPauseMemory": False}, "filesystem-only"),
    ([], "JSON object"),
])
def test_a_bad_create_says_what_is_wrong(body: object, words: str) -> None:
    with pytest.raises(ValidationFailed, match=words):
        wire.parse_new_sandbox(body, BASE)


def test_list_queries_as_the_sdk_encodes_them() -> None:
    # the SDK quotes each key and value, then encodes the pairs as one query value
    sent = urlencode({quote("team/x"): quote("a b&c"), "run": "7"})
    assert wire.parse_metadata_query(sent) == {"team/x": "a b&c", "run": "7"}
    assert wire.parse_states(None) == ("active", "creating", "paused")
    assert wire.parse_states("paused") == ("paused",)
    with pytest.raises(ValidationFailed):
        wire.parse_states("killed")
    assert wire.parse_limit(None) == 100 and wire.parse_limit("2") == 2
    for bad in ("0", "101", "x", "-1"):
        with pytest.raises(ValidationFailed):
            wire.parse_limit(bad)
    assert wire.parse_time("2024-01-01T12:00:00+00:00", "t") == 1704110400.0
    with pytest.raises(ValidationFailed):
        wire.parse_time("2024-01-01T12:00:00", "t")  # no offset
    assert wire.parse_template("base") == "e2b-base" and wire.parse_template("x") == "x"
    assert wire.template_of(record(image_name="e2b-base")) == "base"


def test_page_tokens_say_where_the_next_page_starts_and_nothing_else() -> None:
    token = wire.next_token(record())
    assert wire.parse_next_token(token) == (1000.0, "a" * 20)
    assert wire.parse_next_token(None) is None
    for bad in ("bm9wZQ", "!!!", wire.next_token(record())[:-3] + "x", "W10"):
        with pytest.raises(ValidationFailed):
            wire.parse_next_token(bad)


def test_records_as_the_sdk_reads_them() -> None:
    made = wire.sandbox(record(), "localhost:8080", "tok", "traffic")
    assert {"sandboxID", "templateID", "clientID", "envdVersion"} <= set(made)
    assert made["domain"] == "localhost:8080" and made["envdAccessToken"] == "tok"
    assert made["trafficAccessToken"] is None  # its ports are public
    private = wire.sandbox(record(network={"openPorts": True, "openPortsAuth": True}),
                           None, "tok", "traffic")
    assert private["trafficAccessToken"] == "traffic"
    listed = wire.listed(record(status="paused"))
    assert listed["state"] == "paused" and listed["metadata"] == {"k": "v"}
    assert listed["startedAt"] == "1970-01-01T00:16:41.000Z"
    assert listed["endAt"] == "1970-01-01T00:21:41.000Z"
    detail = wire.detail(record(network={"allowOut": ["10.0.0.0/8", "pypi.org"],
                                         "openPorts": True}, on_timeout="stop"), None)
    assert detail["network"]["allowOut"] == ["10.0.0.0/8", "pypi.org"]
    assert detail["lifecycle"] == {"autoResume": False, "onTimeout": "kill"}
    assert wire.error(404, "gone") == {"code": 404, "message": "gone"}
