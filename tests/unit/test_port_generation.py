"""Port cookies and browser links belong to the sandbox's port generation (pure parts,
and the grants service over a real SQLite store)."""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path

import pytest

from sandport.proxy import auth
from sandport.proxy.decide import Answer, Edge, Forward, Redeem, RequestHead
from sandport.proxy.grants import Grants
from sandport.proxy.routes import RouteTable, SandboxRoute, cookie_credential
from sandport.proxy.urls import PublicUrls
from sandport.store.sqlite import SqliteStore

SID = "0123456789abcdef0123"
SECRET = b"s" * 32
URLS = PublicUrls.parse("http://{port}-{id}.localhost:8080")
HOST = f"3001-{SID}.localhost".encode()


def _table(generation: int) -> RouteTable:
    table = RouteTable()
    table.put(SandboxRoute(SID, "10.77.0.2", "spt_tok", 2e9, {3001: True},
                           port_generation=generation))
    return table


def _with_cookie(value: str) -> RequestHead:
    cookie = f"sandport_auth_3001={value}".encode()
    return RequestHead(b"GET", b"/", b"1.1", [(b"Host", HOST), (b"Cookie", cookie)],
                       "192.0.2.7")


@pytest.mark.parametrize("cookie_generation, route_generation, opens", [
    (0, 0, True), (3, 3, True), (2, 3, False), (4, 3, False), (0, 1, False),
])
def test_a_cookie_opens_only_in_its_generation(cookie_generation: int, route_generation: int,
                                               opens: bool) -> None:
    edge = Edge(URLS, _table(route_generation), "/s", SECRET, clock=lambda: 1e9)
    value = auth.sign_session(SECRET, SID, 3001, int(2e9), generation=cookie_generation)
    decision = edge.decide(_with_cookie(value))
    assert isinstance(decision, Forward) == opens
    if isinstance(decision, Forward):  # known by its generation, to be cut when it ends
        assert decision.token == (SID, cookie_credential(route_generation))


def test_moving_the_generation_on_revokes_what_its_cookies_opened() -> None:
    table = _table(2)
    told: list[tuple[str, frozenset[str]]] = []
    table.watch_revocations(lambda sandbox_id, hashes: told.append((sandbox_id, hashes)))
    route = table.get(SID)
    assert route is not None
    table.put(dataclasses.replace(route, token_expires_at=3e9))  # same generation
    assert told == []
    table.put(dataclasses.replace(route, port_generation=3))
    assert told == [(SID, frozenset({cookie_credential(2)}))]


@pytest.mark.parametrize("grant, generation", [
    ("0.abc", 0), ("17.a.b", 17), ("abc", None), (".abc", None), ("x.abc", None),
    ("-1.abc", None), ("1" * 30 + ".abc", None), ("", None),
])
def test_grant_generation(grant: str, generation: int | None) -> None:
    assert auth.grant_generation(grant) == generation


def test_new_grants_name_their_generation() -> None:
    grant = auth.new_grant(5)
    assert auth.grant_generation(grant) == 5 and len(grant) > 40
    assert auth.new_grant(5) != grant


def test_a_link_minted_before_the_generation_moved_is_refused(tmp_path: Path) -> None:
    async def scenario() -> None:
        store = SqliteStore(tmp_path / "s.db")
        store.open()
        table = _table(0)
        grants = Grants(store, table, URLS, SECRET, 600, clock=lambda: 1e9)
        old_link, _ = await grants.mint(SID, 3001)
        route = table.get(SID)
        assert route is not None
        table.put(dataclasses.replace(route, port_generation=1))  # e.g. revoke {}
        new_link, _ = await grants.mint(SID, 3001)
        for link, redeemed in ((old_link, False), (new_link, True)):
            grant = link.partition("grant=")[2].partition("&")[0]
            answer = await grants.redeem(Redeem(grant, "/", SID, 3001, False))
            assert isinstance(answer, Answer)
            head = answer.render(False)
            assert (b" 302 " in head) == redeemed, head
            if redeemed:  # the cookie it sets is of the current generation
                value = head.split(b"sandport_auth_3001=")[1].split(b";")[0].decode()
                assert auth.session_opens(SECRET, value, SID, 3001, 1e9, generation=1)
                assert not auth.session_opens(SECRET, value, SID, 3001, 1e9, generation=0)
        store.close()

    asyncio.run(scenario())
