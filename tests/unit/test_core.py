"""Errors, wire models and settings: the small core every part imports."""

from __future__ import annotations

from pathlib import Path

import pytest

from sandport import errors
from sandport.models import ExecResult, RuntimeTarget, SandboxInfo, SandboxPage, iso
from sandport.settings import ClientSettings, ServerSettings


@pytest.mark.parametrize("status, body, expected", [
    (404, {"error": "sandbox_not_found", "message": "m"}, errors.SandboxNotFound),
    (404, {"error": "image_not_found", "message": "m"}, errors.ImageNotFound),
    (404, {"error": "something_new", "message": "m"}, errors.NotFound),
    (409, {"error": "sandbox_not_running", "message": "m"}, errors.SandboxNotRunning),
    (400, {"error": "invalid_request", "message": "m"}, errors.ValidationFailed),
    (401, None, errors.Unauthorized),
    (413, "not json", errors.PayloadTooLarge),
    (500, {"error": "runtime_error", "message": "m"}, errors.RuntimeFailure),
    (502, {}, errors.SandportError),
    # a code that contradicts the status does not win
    (400, {"error": "sandbox_not_found", "message": "m"}, errors.BadRequest),
])
def test_error_from_wire(status: int, body: object, expected: type) -> None:
    err = errors.error_from_wire(status, body)
    assert type(err) is expected
    assert err.message


def test_every_error_renders_its_own_code() -> None:
    assert errors.SandboxNotRunning("x").to_wire() == {"error": "sandbox_not_running",
                                                       "message": "x"}
    assert errors.SandboxNotRunning.status == 409


def _info(**over: object) -> SandboxInfo:
    base = dict(id="a" * 20, team_id="t", status="active", image_name="python",
                created_at="c", updated_at="u", start_time=1000, end_time=None,
                close_reason=None, timeout_minutes=5, vcpus=1, mem_mib=512,
                disk_size_mib=4096, region="us", session_url="s",
                runtime=RuntimeTarget("regional_proxy", "h", "http://h/runtime/x"),
                token="spt_x", token_expires_at="e")
    base.update(over)
    return SandboxInfo(**base)  # type: ignore[arg-type]


def test_sandbox_info_round_trip() -> None:
    info = _info(end_time=61_000)
    wire = info.to_wire()
    assert wire["memMiB"] == 512 and wire["runtime"]["baseUrl"] == "http://h/runtime/x"
    assert wire["duration"] == 60
    assert SandboxInfo.from_wire(wire) == info
    assert "token" not in info.to_wire(with_token=False)


def test_page_and_exec_result_round_trip() -> None:
    page = SandboxPage([_info(token=None, token_expires_at=None)], 1, 1, 10)
    assert SandboxPage.from_wire(page.to_wire()) == page
    result = ExecResult("o", "e", 124, timed_out=True)
    assert result.to_wire()["result"]["timedOut"] is True
    assert ExecResult.from_wire(result.to_wire()) == result
    assert "timedOut" not in ExecResult("", "", 0).to_wire()["result"]


def test_iso_is_utc_with_millis() -> None:
    assert iso(0) == "1970-01-01T00:00:00.000Z"
    assert iso(None) is None


def test_client_settings_precedence() -> None:
    env = {"SANDPORT_BASE_URL": "http://env:1/", "SANDPORT_API_KEY": "envkey"}
    assert ClientSettings.load(environ=env) == ClientSettings("http://env:1", "envkey")
    assert ClientSettings.load("http://arg:2", "argkey", environ=env).api_key == "argkey"
    assert ClientSettings.load(environ={}).base_url == "http://127.0.0.1:8080"


def test_server_settings_precedence(tmp_path: Path) -> None:
    config = tmp_path / "sandport.toml"
    config.write_text('listen = "127.0.0.1:1111"\ndata-dir = "/from/file"\nregion = "eu"\n')
    env = {"SANDPORT_CONFIG": str(config), "SANDPORT_LISTEN": "127.0.0.1:2222"}
    s = ServerSettings.load({"data_dir": "/from/flag"}, environ=env)
    assert s.data_dir == Path("/from/flag")  # flag beats file
    assert s.listen == "127.0.0.1:2222"  # env beats file
    assert s.region == "eu"  # file beats default
    assert s.image_root == Path("/from/flag/images")
    assert s.base_url == "http://127.0.0.1:2222"
    assert ServerSettings.load(environ={}).listen == "127.0.0.1:8080"
    tls = ServerSettings.load({"tls_cert": "/c.pem", "tls_key": "/k.pem"}, environ={})
    assert tls.tls_cert == Path("/c.pem") and tls.base_url == "https://127.0.0.1:8080"
    assert tls.url_template == "https://{port}-{id}.localhost:8080"


@pytest.mark.parametrize("flags, message", [
    ({"listen": "nonsense"}, "listen"),
    ({"listen": "127.0.0.1:99999"}, "listen"),
    ({"subnet": "10.0.0.0/30"}, "subnet"),
    ({"subnet": "fd00::/64"}, "subnet"),
    ({"config": "/does/not/exist.toml"}, "config"),
    ({"default_timeout_minutes": "soon"}, "integer"),
    ({"dns_upstreams": "resolver.example"}, "dns_upstreams"),
    ({"dns_upstreams": "203.0.113.2:0"}, "dns_upstreams"),
    ({"build_timeout_s": "0"}, "build_timeout_s"),
    ({"tls_cert": "/c.pem"}, "tls_cert and tls_key go together"),
    ({"tls_key": "/k.pem"}, "tls_cert and tls_key go together"),
])
def test_server_settings_errors(flags: dict[str, str], message: str) -> None:
    with pytest.raises(errors.ValidationFailed, match=message):
        ServerSettings.load(flags, environ={})


def test_unknown_setting_in_file(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text("colour = 1\n")
    with pytest.raises(errors.ValidationFailed, match="colour"):
        ServerSettings.load({"config": str(config)}, environ={})
