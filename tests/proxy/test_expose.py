"""The expose API and what each answer means at the URL."""

from __future__ import annotations

import asyncio
import os
import urllib.request

import httpx
import pytest

from sandport import AsyncSandbox, ExecResult, Sandbox

from .._server import ServerProcess
from .conftest import Site, start_upstream, wait_for


def test_unknown_stopped_and_unexposed_look_the_same(site: Site, server: ServerProcess) -> None:
    never = os.urandom(10).hex()
    unknown = httpx.get(site.url(3000).replace(site.id, never), timeout=10)
    unexposed = httpx.get(site.url(3005), timeout=10)
    runtime_port = httpx.get(site.url(4001).rstrip("/") + "/p/4001/", timeout=10)
    assert unknown.status_code == unexposed.status_code == runtime_port.status_code == 404
    assert unknown.content == unexposed.content


def test_expose_answers_and_validation(site: Site, server: ServerProcess) -> None:
    with server.client() as api:
        base = f"/api/sandbox/{site.id}"
        for port, needle in ((4001, "reserved"), (80, "1024 and 65535"),
                             (70000, "1024 and 65535"), ("3000", "integer"), (True, "integer")):
            r = api.post(f"{base}/expose", json={"port": port})
            assert r.status_code == 400 and needle in r.json()["message"], r.text
        assert api.post(f"{base}/expose", json={"port": 3000, "x": 1}).status_code == 400
        assert api.post(f"{base}/expose", content=b"{").status_code == 400
        missing = api.post(f"/api/sandbox/{'0' * 20}/expose", json={"port": 3000})
        assert missing.status_code == 404
        r = api.post(f"{base}/expose", json={"port": 3000, "auth": False})
        assert r.status_code == 200
        body = r.json()
        assert body["url"] == f"http://3000-{site.id}.localhost:{server.port}/"
        assert set(body) == {"port", "auth", "url", "browserUrl", "browserUrlExpiresAt"}
        listed = api.get(base).json()["exposedPorts"]
        assert {"port": 3000, "auth": False} in [
            {"port": p["port"], "auth": p["auth"]} for p in listed]
    no_key = httpx.post(f"{server.base_url}/api/sandbox/{site.id}/expose", json={"port": 3000})
    assert no_key.status_code == 401


def test_unexpose_then_reexpose_with_other_auth(site: Site) -> None:
    site.sb.expose(3000, auth=False)
    assert httpx.get(site.url(3000, "/echo"), timeout=10).status_code == 200
    site.sb.unexpose(3000)
    assert httpx.get(site.url(3000, "/echo"), timeout=10).status_code == 404
    assert all(p.port != 3000 for p in site.sb.info.exposed_ports)
    site.sb.unexpose(3000)  # closing a closed port is success
    site.sb.expose(3000, auth=True)
    assert httpx.get(site.url(3000, "/echo"), timeout=10).status_code == 401
    site.sb.expose(3000, auth=False)  # idempotent, and auth may change back
    site.sb.expose(3000, auth=False)
    assert httpx.get(site.url(3000, "/echo"), timeout=10).status_code == 200


def test_exposed_at_create_masking_and_allow_ports(server: ServerProcess) -> None:
    with Sandbox.create(api_key=server.api_key, base_url=server.base_url,
                        exposed_ports={3000: False},
                        network={"maskRequestHost": "localhost:${PORT}",
                                 "ingress": {"allowPorts": [3000, 3001]}}) as sb:
        assert [(p.port, p.auth) for p in sb.info.exposed_ports] == [(3000, False)]
        start_upstream(sb, 3000)
        echo = httpx.get(sb.get_exposed_url(3000) + "echo", timeout=10).json()
        hosts = [v for k, v in echo["headers"] if k.lower() == "host"]
        forwarded = [v for k, v in echo["headers"] if k.lower() == "x-forwarded-host"]
        assert hosts == ["localhost:3000"]
        assert forwarded == [f"3000-{sb.id}.localhost:{server.port}"]
        with pytest.raises(Exception) as refused:
            sb.expose(5000)
        assert getattr(refused.value, "status", None) == 403
    with server.client() as api:
        bad = api.post("/api/sandbox", json={"exposedPorts": [{"port": 5000}],
                                             "network": {"ingress": {"allowPorts": [3000]}}})
        assert bad.status_code == 403
        for network in ({"maskRequestHost": "a\r\nb"}, {"openPorts": "yes"},
                        {"ingress": {"allowPorts": [22]}}, {"egress": {}}):
            r = api.post("/api/sandbox", json={"network": network})
            assert r.status_code == 400, (network, r.text)


def test_open_mode_serves_every_port(server: ServerProcess) -> None:
    with Sandbox.create(api_key=server.api_key, base_url=server.base_url,
                        network={"openPorts": True}) as sb:
        start_upstream(sb, 3000, 3001, 3333)
        for port in (3000, 3333):
            assert httpx.get(sb.get_exposed_url(port) + "echo", timeout=10).status_code == 200
        assert httpx.get(sb.get_exposed_url(4001), timeout=10).status_code == 404  # not a port
        # unexposing closes a port here too: neither an open nor a private one falls back
        # to open
        sb.expose(3001, auth=True)
        assert httpx.get(sb.get_exposed_url(3001) + "echo", timeout=10).status_code == 401
        for port in (3001, 3333):
            sb.unexpose(port)
            assert httpx.get(sb.get_exposed_url(port) + "echo", timeout=10).status_code == 404
        sb.expose(3333, auth=False)
        assert httpx.get(sb.get_exposed_url(3333) + "echo", timeout=10).status_code == 200
        assert httpx.get(sb.get_exposed_url(3000) + "echo", timeout=10).status_code == 200


def test_exposure_on_a_stopped_sandbox_is_409(server: ServerProcess) -> None:
    sb = Sandbox.create(api_key=server.api_key, base_url=server.base_url)
    sb.stop()
    sb.close()
    with server.client() as api:
        r = api.post(f"/api/sandbox/{sb.id}/expose", json={"port": 3000})
        assert r.status_code == 409


def test_sdk_urls_and_third_party_clients(site: Site) -> None:
    url = site.sb.get_exposed_url(3000)
    assert url == site.sb.expose(3000, auth=False).url
    # Hyperbrowser's rule: {port}-{runtime.host} on the runtime URL's scheme and port
    runtime = site.sb.info.runtime
    port = runtime.base_url.rsplit(":", 1)[1]
    assert url == f"http://3000-{runtime.host}:{port}/"
    with urllib.request.urlopen(url + "echo", timeout=10) as r:  # glibc resolution
        assert r.status == 200

    async def run() -> None:
        sb = await AsyncSandbox.get(site.id, api_key=site.server.api_key,
                                    base_url=site.server.base_url)
        assert sb.get_exposed_url(3000) == url
        exposed = await sb.expose(3001, auth=True)
        assert exposed.auth and exposed.browser_url
        assert (await sb.exec("echo hi")).stdout == "hi\n"
        await sb.close()
    asyncio.run(run())


def test_custom_url_template(fresh_server) -> None:  # type: ignore[no-untyped-def]
    srv: ServerProcess = fresh_server(
        env={"SANDPORT_PUBLIC_URL_TEMPLATE": "https://{port}-{id}.sandbox.example.test"})
    with Sandbox.create(api_key=srv.api_key, base_url=srv.base_url,
                        exposed_ports={3000: True}) as sb:
        assert sb.info.runtime.base_url == f"https://4001-{sb.id}.sandbox.example.test"
        url = sb.get_exposed_url(3000)
        assert url == f"https://3000-{sb.id}.sandbox.example.test/"
        runtime_host = {"Host": f"4001-{sb.id}.sandbox.example.test",
                        "Authorization": f"Bearer {sb.info.token}"}

        def run(command: str) -> ExecResult:  # the runtime host, by Host header: no DNS
            r = httpx.post(f"{srv.base_url}/sandbox/exec", headers=runtime_host,
                           json={"command": command}, timeout=30)
            return ExecResult.from_wire(r.json())
        start_upstream(sb, 3000, run=run)
        host = {"Host": f"3000-{sb.id}.sandbox.example.test"}
        wait_for(f"{srv.base_url}/echo", 401, headers=host)
        r = httpx.get(f"{srv.base_url}/echo", headers={**host,
                      "Authorization": f"Bearer {sb.info.token}"})
        assert r.status_code == 200
        proto = [v for k, v in r.json()["headers"] if k.lower() == "x-forwarded-proto"]
        assert proto == ["https"]
        grant = sb.expose(3000, auth=True).browser_url or ""
        assert grant.startswith(url + "_sandport/auth?grant=")
        redeemed = httpx.get(f"{srv.base_url}/_sandport/auth?{grant.split('?', 1)[1]}",
                             headers=host)
        assert "Secure" in redeemed.headers["set-cookie"]
