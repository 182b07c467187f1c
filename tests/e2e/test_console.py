"""The web console in a real browser (Debian's Chromium, driven by Playwright), against a
real ``sandport serve``: sign in, create a sandbox from the page, see it listed, open a
server inside it through an ``auth: true`` port, stop it; and the forms refuse what did
not come from the console."""

from __future__ import annotations

import base64
import json
import struct
import zlib
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import websockets.sync.client as ws_client
from playwright.sync_api import Browser, Page, expect, sync_playwright
from websockets.exceptions import InvalidStatus

from sandport import Sandbox

from .._server import ServerProcess

CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = Path(__file__).resolve().parents[2] / ".artifacts"


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, headless=True)
        yield launched
        launched.close()


def _sign_in(page: Page, server: ServerProcess, key: str) -> None:
    page.goto(f"{server.base_url}/console")
    page.fill("input[name=key]", key)
    page.click("form button[type=submit]")


def test_sign_in_create_open_stop(server: ServerProcess, browser: Browser) -> None:
    context = browser.new_context()
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    # script errors and CSP refusals (not the statuses of pages, such as the 401 of a
    # refused sign-in)
    page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error"
            and not msg.text.startswith("Failed to load resource") else None)

    page.goto(f"{server.base_url}/console/sandboxes")
    assert "/console/login" in page.url  # not signed in: the sign-in page
    _sign_in(page, server, "spk_not_a_key")
    assert "not valid" in page.locator(".error").inner_text()
    _sign_in(page, server, server.api_key)
    assert page.url.endswith("/console/sandboxes")
    assert server.api_key not in page.content() and server.api_key not in page.url
    cookie = next(c for c in context.cookies() if c["name"] == "sandport_console")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"
    assert server.api_key not in cookie["value"]

    page.click("#create button[type=submit]")  # the defaults: python, 5 minutes
    page.wait_for_url("**/console/sandbox/*")
    sandbox_id = page.url.rsplit("/", 1)[1]
    assert page.locator("[data-field=status]").inner_text() == "active"
    page.goto(f"{server.base_url}/console/sandboxes")
    assert page.locator(f"tr[data-id='{sandbox_id}'] .status").inner_text() == "active"

    sb = Sandbox.get(sandbox_id, api_key=server.api_key, base_url=server.base_url)
    try:
        ran = sb.exec("mkdir -p /srv/www && echo 'hello from the sandbox' > /srv/www/index.html"
                      " && cd /srv/www && (setsid python3 -m http.server 3000"
                      " >/dev/null 2>&1 &) && for i in $(seq 50); do"
                      " python3 -c 'import socket; socket.create_connection((\"127.0.0.1\","
                      " 3000), 0.2)' 2>/dev/null && break; sleep 0.1; done")
        assert ran.exit_code == 0, ran.stderr
        page.goto(f"{server.base_url}/console/sandbox/{sandbox_id}")
        page.fill("#expose input[name=port]", "3000")
        page.check("#expose input[name=auth]")
        page.click("#expose button[type=submit]")
        assert "token" in page.locator("tr[data-port='3000']").inner_text()
        # Without the console's link the port wants auth...
        outsider = browser.new_page()
        outsider.goto(sb.get_exposed_url(3000))
        assert "hello from the sandbox" not in outsider.content()
        outsider.close()
        # ...through it, the browser gets in and reads the sandbox's server.
        with page.expect_popup() as opened:
            page.click("#open-3000")
        popup = opened.value
        popup.wait_for_load_state()
        assert "hello from the sandbox" in popup.content()
        popup.close()

        # The terminal: a shell in the sandbox, typed into like a person would.
        expect(page.locator("#terminal-state")).to_have_text("connected", timeout=15000)
        page.click("#terminal")
        page.keyboard.type("echo $((6*7)) > /tmp/from-the-console; echo done-$((40+2))\n")
        # what xterm.js rendered: the command's own output on a line of its own
        expect(page.locator(".xterm-rows")).to_contain_text("done-42", timeout=15000)
        rows = page.locator(".xterm-rows > div").all_inner_texts()
        assert any(row.strip() == "done-42" for row in rows), rows
        assert sb.files.read("/tmp/from-the-console") == "42\n"

        # A process started from the page, its output read live while it runs
        page.fill("#run input[name=command]", "for i in 1 2 3; do echo tick-$i; sleep 1; done")
        page.click("#run button[type=submit]")
        expect(page.locator("#process-output")).to_contain_text("tick-1", timeout=15000)
        assert "exited" not in page.locator("#process-list tr.selected").inner_text()
        expect(page.locator("#process-output")).to_contain_text("tick-3", timeout=15000)
        expect(page.locator("#process-list tr.selected")).to_contain_text("exited (0)",
                                                                         timeout=15000)

        # Files: browse, upload a file from the browser, see it listed, view it
        sb.exec("mkdir -p /data/inner && echo 'seen in the console' > /data/note.txt")
        page.click("#browse")
        page.click("#files a:text-is('data/')")
        expect(page.locator("#cwd")).to_have_text("/data")
        assert page.locator("tr[data-name='inner'] td").first.inner_text() == "inner/"
        upload = ARTIFACTS / "upload-me.txt"
        ARTIFACTS.mkdir(exist_ok=True)
        upload.write_text("uploaded through the browser\n")
        page.set_input_files("#upload input[type=file]", str(upload))
        page.click("#upload button[type=submit]")
        expect(page.locator("tr[data-name='upload-me.txt']")).to_be_visible(timeout=15000)
        assert sb.files.read("/data/upload-me.txt") == "uploaded through the browser\n"
        page.click("tr[data-name='note.txt'] a:text-is('view')")
        expect(page.locator("#content")).to_have_text("seen in the console\n")
        page.goto(f"{server.base_url}/console/sandbox/{sandbox_id}")

        # CPU and memory use, from the sandbox's cgroup, drawn as it comes
        expect(page.locator("#mem-now")).to_contain_text("MiB", timeout=15000)
        expect(page.locator("#cpu-now")).to_contain_text("%", timeout=15000)
        assert page.locator("#usage polyline.cpu").get_attribute("points")

        page.fill("input[name=minutes]", "30")
        page.click("#extend")
        assert page.locator("[data-field=timeLeft]").inner_text().startswith("29m")
        shot = page.screenshot(full_page=True)
        ARTIFACTS.mkdir(exist_ok=True)
        (ARTIFACTS / "console-sandbox.png").write_bytes(shot)
        assert _distinct_bytes(shot) > 16, "the screenshot is blank"

        page.click("#stop")
        assert page.locator("[data-field=status]").inner_text() == "closed"
        assert sb.refresh().status == "closed"
    finally:
        sb.stop()
        sb.close()
    assert errors == []  # no script errors, no CSP violations
    page.click("form.signout button")
    assert "/console/login" in page.url
    assert not [c for c in context.cookies() if c["name"] == "sandport_console"]
    page.goto(f"{server.base_url}/console/sandboxes")
    assert "/console/login" in page.url  # signed out
    context.close()


def test_forms_refuse_what_the_console_did_not_send(server: ServerProcess,
                                                    browser: Browser) -> None:
    sb = Sandbox.create(api_key=server.api_key, base_url=server.base_url)
    try:
        with httpx.Client(base_url=server.base_url) as client:
            signed = client.post("/console/login", data={"key": server.api_key})
            assert signed.status_code == 303 and "sandport_console" in client.cookies
            page = client.get("/console/sandboxes")
            assert page.status_code == 200
            csp = page.headers["content-security-policy"]
            assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp
            assert "<script>" not in page.text  # no inline script
            # a form without the session's CSRF token, or with another's, changes nothing
            for token in (None, "forged"):
                data = {} if token is None else {"csrf": token}
                refused = client.post(f"/console/sandbox/{sb.id}/stop", data=data)
                assert refused.status_code == 403 and "text/html" in refused.headers[
                    "content-type"]
            assert sb.refresh().status == "active"
            # bad input: a message in the page, not JSON or a trace
            csrf = page.text.split('name="csrf" value="')[1].split('"')[0]
            bad = client.post(f"/console/sandbox/{sb.id}/expose",
                              data={"csrf": csrf, "port": "80"})
            assert bad.status_code == 400 and "class=\"error\"" in bad.text
            assert "1024" in bad.text and not bad.text.lstrip().startswith("{")
            missing = client.get("/console/sandbox/00000000000000000000")
            assert missing.status_code == 404 and "<h1>" in missing.text
            # the terminal's WebSocket: only with the session, and from the console's pages
            ws_url = f"ws://127.0.0.1:{server.port}/console/sandbox/{sb.id}/terminal"
            session = f"sandport_console={client.cookies['sandport_console']}"
            for headers, status in (({"origin": "http://evil.example"}, 401),
                                    ({"cookie": session, "origin": "http://evil.example"}, 403),
                                    ({"origin": server.base_url}, 401)):
                with pytest.raises(InvalidStatus) as denied:
                    ws_client.connect(ws_url, additional_headers=headers,
                                      open_timeout=10).close()
                assert denied.value.response.status_code == status, headers
            with ws_client.connect(ws_url, open_timeout=10, additional_headers={
                    "cookie": session, "origin": server.base_url}) as ws:
                ws.send('{"type": "input", "data": "echo via-$((1+1))\\n"}')
                seen = b""
                while b"via-2" not in seen:
                    message = json.loads(ws.recv(timeout=10))
                    if message["type"] == "output":
                        seen += base64.b64decode(message["data"])
            # files: the upload needs the token; paths stay inside the sandbox
            target = f"/console/sandbox/{sb.id}/files/upload?path=/tmp/x"
            for headers in ({}, {"x-csrf-token": "forged"}):
                assert client.put(target, content=b"x", headers=headers).status_code == 403
            assert client.put(target, content=b"ok", headers={"x-csrf-token": csrf}
                              ).status_code == 200
            assert sb.files.read("/tmp/x") == "ok"
            secret = Path(f"/tmp/sandport-host-secret-{sb.id}")
            secret.write_text("host only")
            try:
                sb.exec(f"ln -s {secret} /tmp/escape")
                for path in ("/tmp/escape", f"/../../..{secret}", "/proc/1/environ"):
                    shown = client.get(f"/console/sandbox/{sb.id}/files/view",
                                       params={"path": path})
                    assert shown.status_code in (403, 404), (path, shown.status_code)
                    assert "host only" not in shown.text and "<h1>" in shown.text
            finally:
                secret.unlink()
            # bad input anywhere in the console: a page with a message, never a 500 or JSON
            for method, url, data in (
                    ("POST", f"/console/sandbox/{sb.id}/timeout", {"minutes": "5000000"}),
                    ("POST", f"/console/sandbox/{sb.id}/timeout", {"minutes": "0"}),
                    ("POST", f"/console/sandbox/{sb.id}/timeout", {"minutes": "\u00b2"}),
                    ("POST", f"/console/sandbox/{sb.id}/expose", {"port": "\u00b2"}),
                    ("POST", "/console/sandboxes", {"timeoutMinutes": "9" * 30}),
                    ("GET", "/console/sandboxes?page=%C2%B2", None),
                    ("GET", "/console/no-such-page", None),
                    ("GET", "/console/logout", None)):
                answer = client.request(method, url, data=None if data is None else
                                        {"csrf": csrf, **data})
                assert 400 <= answer.status_code < 500, (url, data, answer.status_code)
                assert "text/html" in answer.headers["content-type"], (url, data)
            assert client.post(f"/console/sandbox/{sb.id}/stop",
                               content=b"csrf=" + b"x" * 70000, headers={
                                   "content-type": "application/x-www-form-urlencoded"}
                               ).status_code == 413
            assert sb.refresh().status == "active"
            # opening a port mints a grant: not without the session's token
            assert client.get(f"/console/sandbox/{sb.id}/open/3000").status_code == 403
            # no signing in from another site's page
            with httpx.Client(base_url=server.base_url) as other:
                forged = other.post("/console/login", data={"key": server.api_key},
                                    headers={"origin": "http://evil.example"})
                assert forged.status_code == 403 and "sandport_console" not in other.cookies
                assert other.get("/console/sandboxes", headers={
                    "cookie": "sandport_console=t.9" + "9" * 5000 + ".n.m"}).status_code == 303
            # a planted second cookie: signed out rather than guessing which is ours
            doubled = client.get("/console/sandboxes", headers={"cookie": (
                f"sandport_console={client.cookies['sandport_console']}; "
                "sandport_console=planted")})
            assert doubled.status_code == 303
            # signing out ends the session itself: the same cookie no longer works
            kept = client.cookies["sandport_console"]
            assert client.post("/console/logout", data={"csrf": csrf}).status_code == 303
            with httpx.Client(base_url=server.base_url) as replay:
                assert replay.get("/console/sandboxes", headers={
                    "cookie": f"sandport_console={kept}"}).status_code == 303
            client.post("/console/login", data={"key": server.api_key})
            # another's session cookie, forged: signed out
            client.cookies.set("sandport_console", "team_x.9999999999.n.forged",
                               path="/console")
            assert client.get("/console/sandboxes").status_code == 303
    finally:
        sb.stop()
        sb.close()


def _distinct_bytes(png: bytes) -> int:
    """How many distinct byte values the image's pixel data holds (a blank page: few)."""
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    offset, data = 8, b""
    while offset < len(png):
        length, kind = struct.unpack(">I4s", png[offset:offset + 8])
        if kind == b"IDAT":
            data += png[offset + 8:offset + 8 + length]
        offset += 12 + length
    return len(set(zlib.decompress(data)))
