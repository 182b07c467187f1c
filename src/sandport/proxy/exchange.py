"""One request and its response as the edge proxy serves it, and the answers the proxy
writes about an exchange it could not complete (502, 504)."""

from __future__ import annotations

from . import pages
from .decide import Answer, Forward, RequestHead
from .limits import BodyRate


class Exchange:
    """One request and its response."""

    __slots__ = ("head", "keep_alive", "upgrade", "chunked", "is_head", "bodyless",
                 "body_done", "had_body", "pending", "pending_size", "streaming", "discard",
                 "forward", "reused", "received", "rate")

    def __init__(self, head: RequestHead, keep_alive: bool, upgrade: bool,
                 chunked: bool, bodyless: bool = False) -> None:
        self.head = head
        self.keep_alive = keep_alive
        self.upgrade = upgrade
        self.chunked = chunked
        self.is_head = head.method == b"HEAD"
        self.bodyless = bodyless  # framed with no body: done once the head is parsed
        self.body_done = False
        self.had_body = False
        self.pending: list[bytes] = []
        self.pending_size = 0
        self.streaming = False  # the head went upstream; body bytes follow directly
        self.discard = False  # answered without upstream: body bytes are dropped
        self.forward: Forward | None = None
        self.reused = False
        self.received = 0  # body bytes so far
        self.rate: BodyRate | None = None  # made by the first sweep that sees the body


def gateway_timeout(exchange: Exchange, forward: Forward, seconds: float) -> Answer:
    where = "the sandport API" if forward.port is None else \
        f"the server on port {forward.port} of the sandbox"
    message = f"{where} did not answer within {seconds:g} s"
    return Answer(lambda close: pages.error(504, "gateway_timeout", message,
                                            browser=is_browser(exchange), close=close))


def is_browser(exchange: Exchange) -> bool:
    return any(n.lower() == b"accept" and b"text/html" in v for n, v in exchange.head.headers)


def bad_gateway(exchange: Exchange, forward: Forward, *, garbled: bool = False,
                 closed: bool = False) -> Answer:
    browser = is_browser(exchange)
    if forward.port is None:
        message = "the sandport API is not answering"
    elif garbled:
        message = f"the server on port {forward.port} of the sandbox did not answer in HTTP"
    elif closed:
        message = f"the server on port {forward.port} of the sandbox closed the connection " \
            "without answering"
    else:
        message = f"nothing is listening on port {forward.port} of the sandbox (start a " \
            "server that listens on 0.0.0.0 there)"
    return Answer(lambda close: pages.error(502, "bad_gateway", message, browser=browser,
                                            close=close))


