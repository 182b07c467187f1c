"""A browser's cookie for an ``auth: true`` port belongs to the sandbox's port generation:
revoking all tokens, unexposing a port, or making a public port private again ends it
(and every browser link not yet used), as a browser with a cookie jar sees it."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
import websockets.sync.client as ws_client
from websockets.exceptions import ConnectionClosed

from .._server import ServerProcess
from .conftest import Site, make_site

CHROME = {"Accept": "text/html,application/xhtml+xml,*/*;q=0.8"}


@pytest.fixture(scope="module")
def site(server: ServerProcess) -> Iterator[Site]:
    made = make_site(server)  # its own: these tests end its cookies on purpose
    yield made
    made.sb.stop()
    made.sb.close()


@pytest.fixture
def browsers() -> Iterator[list[httpx.Client]]:
    made: list[httpx.Client] = []
    yield made
    for browser in made:
        browser.close()


def _browser(made: list[httpx.Client]) -> httpx.Client:
    """A client that keeps cookies, as a browser does."""
    made.append(httpx.Client(timeout=10, headers=CHROME))
    return made[-1]


def _signed_in_browser(site: Site, made: list[httpx.Client]) -> httpx.Client:
    """A browser that opened the port's browserUrl: it holds the port's cookie."""
    link = site.sb.expose(3001, auth=True).browser_url or ""
    browser = _browser(made)
    assert browser.get(link).status_code == 302
    assert "sandport_auth_3001" in browser.cookies
    assert browser.get(site.url(3001, "/echo")).status_code == 200
    return browser


def _control(site: Site, verb: str, body: dict) -> None:
    with site.server.client() as api:
        r = api.post(f"/api/sandbox/{site.id}/{verb}", json=body)
        assert r.status_code == 200, r.text


def test_revoking_all_tokens_ends_cookies_and_links(site: Site,
        browsers: list[httpx.Client]) -> None:
    browser = _signed_in_browser(site, browsers)
    unused = site.sb.expose(3001, auth=True).browser_url or ""
    _control(site, "revoke", {})
    refused = browser.get(site.url(3001, "/echo"))
    assert refused.status_code == 401, refused.text
    assert httpx.get(unused, timeout=10).status_code == 403  # the link minted before
    # A link minted after works: the sandbox's auth is reset, not broken.
    fresh = _signed_in_browser(site, browsers)
    assert fresh.get(site.url(3001, "/echo")).status_code == 200


def test_revoking_one_token_keeps_cookies(site: Site,
        browsers: list[httpx.Client]) -> None:
    browser = _signed_in_browser(site, browsers)
    with site.server.client() as api:
        token = api.post(f"/api/sandbox/{site.id}/refresh").json()["token"]
    _control(site, "revoke", {"token": token})
    assert browser.get(site.url(3001, "/echo")).status_code == 200


def test_unexpose_then_expose_again_ends_cookies_and_links(site: Site,
        browsers: list[httpx.Client]) -> None:
    browser = _signed_in_browser(site, browsers)
    unused = site.sb.expose(3001, auth=True).browser_url or ""
    site.sb.unexpose(3001)
    again = site.sb.expose(3001, auth=True)
    refused = browser.get(site.url(3001, "/echo"))
    assert refused.status_code == 401, refused.text
    assert httpx.get(unused, timeout=10).status_code == 403
    fresh = _browser(browsers)
    assert fresh.get(again.browser_url or "").status_code == 302
    assert fresh.get(site.url(3001, "/echo")).status_code == 200


def test_auth_false_then_true_ends_cookies(site: Site,
        browsers: list[httpx.Client]) -> None:
    browser = _signed_in_browser(site, browsers)
    site.sb.expose(3001, auth=False)
    assert httpx.get(site.url(3001, "/echo"), timeout=10).status_code == 200  # public now
    site.sb.expose(3001, auth=True)
    refused = browser.get(site.url(3001, "/echo"))
    assert refused.status_code == 401, refused.text


def test_exposing_again_with_auth_keeps_cookies(site: Site,
        browsers: list[httpx.Client]) -> None:
    """Exposing an auth port again (as clients do to get a new browserUrl) changes
    nothing for the browsers already in."""
    browser = _signed_in_browser(site, browsers)
    site.sb.expose(3001, auth=True)
    assert browser.get(site.url(3001, "/echo")).status_code == 200


def test_what_a_stale_cookie_opened_is_cut(site: Site, browsers: list[httpx.Client]) -> None:
    """A WebSocket opened with the cookie ends with it; one opened with the token stays,
    as the other port's cookies end when a port is unexposed."""
    cookie = _signed_in_browser(site, browsers).cookies["sandport_auth_3001"]
    ws_url = site.url(3001, "/ws").replace("http", "ws", 1)
    with site.server.client() as api:
        token = api.get(f"/api/sandbox/{site.id}").json()["token"]
    by_cookie = ws_client.connect(ws_url, open_timeout=10, ping_interval=None, legacy=True,
                                  additional_headers={"cookie": f"sandport_auth_3001={cookie}"})
    by_token = ws_client.connect(ws_url, open_timeout=10, ping_interval=None, legacy=True,
                                 additional_headers={"authorization": f"Bearer {token}"})
    try:
        for ws in (by_cookie, by_token):
            ws.send("ping")
            assert ws.recv(timeout=10) == "ping"
        site.sb.expose(3002, auth=True)
        site.sb.unexpose(3002)  # the generation moves on
        with pytest.raises(ConnectionClosed):
            by_cookie.send("again")
            by_cookie.recv(timeout=10)
        by_token.send("still")
        assert by_token.recv(timeout=10) == "still"
    finally:
        by_cookie.close()
        by_token.close()
