"""The token registry's ``realm``: Docker's token flow, as auth.docker.io serves it, on
loopback HTTPS. Its JWTs are RS256, signed by a key whose certificate (from the test CA) is
in the ``x5c`` header; distribution 2.8 checks that chain against its ``rootcertbundle``,
then ``iss``, ``aud``, ``nbf``/``exp`` and the ``access`` list.

Policy: a known user gets whatever a scope asks for; an anonymous client gets pull on
repositories under ``public/`` and nothing elsewhere (the registry then answers 401), as
Docker Hub treats public and private repositories; wrong credentials get 401.
"""

from __future__ import annotations

import base64
import datetime
import json
import secrets
import ssl
import threading
import time
from collections.abc import Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from ._ca import TestCA

SERVICE = "sandport-test-registry"  # the token's audience, as "registry.docker.io" is Hub's
ISSUER = "sandport-test-token-issuer"
PUBLIC_PREFIX = "public/"


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class TokenServer:
    """The registry's ``realm``: GET /token?service=..&scope=.. → a JWT distribution accepts.

    Also POST /token (OAuth2 password grant). ``requests`` records (user, "" for anonymous,
    None for wrong credentials; the scopes asked) for tests that count token fetches."""

    def __init__(self, ca: TestCA, users: Mapping[str, str], log_path: Path) -> None:
        self.users = dict(users)
        self.signing_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        _, _, signing_cert = ca.issue("token-signer", self.signing_key)
        self.x5c = [base64.b64encode(signing_cert.public_bytes(serialization.Encoding.DER))
                    .decode()]
        cert_path, key_path, _ = ca.issue("token-server")
        tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        tls.load_cert_chain(cert_path, key_path)
        self.requests: list[tuple[str | None, list[str]]] = []
        self.log_path = log_path
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), _token_handler(self))
        self.httpd.socket = tls.wrap_socket(self.httpd.socket, server_side=True)
        self.host = f"127.0.0.1:{self.httpd.server_address[1]}"
        self.realm = f"https://{self.host}/token"
        # A short poll: shutdown() waits for the loop to look, 0.5 s by default.
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.02,),
                                       daemon=True, name="token-server")
        self.thread.start()

    def grant(self, user: str, scope: str) -> dict[str, object] | None:
        """The access entry one scope ("repository:name:pull,push") earns ``user``."""
        kind, _, rest = scope.partition(":")
        name, _, actions = rest.rpartition(":")
        if not name:
            return None
        asked = actions.split(",")
        if user:
            granted = asked
        elif kind == "repository" and name.startswith(PUBLIC_PREFIX):
            granted = [a for a in asked if a == "pull"]
        else:
            granted = []
        return {"type": kind, "name": name, "actions": granted}

    def token(self, user: str, scopes: list[str]) -> str:
        now = int(time.time())
        header = {"typ": "JWT", "alg": "RS256", "x5c": self.x5c}
        access = [a for a in (self.grant(user, s) for s in scopes) if a is not None]
        claims = {"iss": ISSUER, "sub": user, "aud": SERVICE, "exp": now + 300,
                  "nbf": now - 10, "iat": now, "jti": secrets.token_hex(8), "access": access}
        signing_input = ".".join(_b64url(json.dumps(part, separators=(",", ":")).encode())
                                 for part in (header, claims))
        signature = self.signing_key.sign(signing_input.encode(), padding.PKCS1v15(),
                                          hashes.SHA256())
        return f"{signing_input}.{_b64url(signature)}"

    def user_of(self, authorization: str | None) -> str | None:
        """"" for anonymous, the user for right Basic credentials, None for wrong ones."""
        if not authorization:
            return ""
        scheme, _, encoded = authorization.partition(" ")
        if scheme.lower() != "basic":
            return None
        user, _, password = base64.b64decode(encoded).decode(errors="replace").partition(":")
        return self.check(user, password)

    def check(self, user: str, password: str) -> str | None:
        known = self.users.get(user)
        return user if known is not None and secrets.compare_digest(known, password) else None

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)


def _token_handler(server: TokenServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's name)
            """Docker's token flow: Basic credentials (or none), service and scopes."""
            url = urlsplit(self.path)
            query = parse_qs(url.query)
            self._answer(url.path, query, server.user_of(self.headers.get("Authorization")))

        def do_POST(self) -> None:  # noqa: N802
            """OAuth2's password grant, which containerd tries first when it has credentials."""
            length = int(self.headers.get("Content-Length") or 0)
            form = parse_qs(self.rfile.read(length).decode())
            if form.get("grant_type") != ["password"]:
                return self._reply(400, {"error": "unsupported_grant_type"})
            user = server.check(form.get("username", [""])[0], form.get("password", [""])[0])
            self._answer(urlsplit(self.path).path, form, user)

        def _answer(self, path: str, query: dict[str, list[str]], user: str | None) -> None:
            if path != "/token":
                return self._reply(404, {"details": "not found"})
            if query.get("service") != [SERVICE]:
                return self._reply(400, {"details": "unknown service"})
            scopes = [s for value in query.get("scope", []) for s in value.split(" ") if s]
            server.requests.append((user, scopes))
            if user is None:
                return self._reply(401, {"details": "incorrect username or password"})
            token = server.token(user, scopes)
            self._reply(200, {"token": token, "access_token": token, "expires_in": 300,
                              "issued_at": datetime.datetime.now(datetime.UTC).isoformat()})

        def _reply(self, status: int, body: dict[str, object]) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: object) -> None:  # noqa: A002
            with open(server.log_path, "a") as log:
                log.write(f"{self.address_string()} {format % args}\n")

    return Handler
