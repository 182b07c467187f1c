"""A test upstream that runs INSIDE a sandbox (stdlib only): python3 upstream.py PORT.

    any method /echo...    → JSON {method, path, headers, body_len}
    GET  /big?n=N          → N bytes (a repeating pattern), Content-Length
    GET  /chunked?n=N      → N bytes in 64 KiB chunks, Transfer-Encoding: chunked
    POST /sink             → JSON {received, sha256} of the body (length or chunked)
    GET  /sse?n=N&gap=S    → N server-sent events, S seconds apart, each stamped with
                             the time.time() at which it was written
    GET  /cookie           → sets two cookies, echoes the Cookie header it got
    GET  /status/CODE      → that status, small body
    GET  /ws               → WebSocket echo (text, binary, ping → pong, close)
    GET  /close-mid        → promises 1 MB, sends 10 KB, then closes the connection
    GET  /slow?s=S         → answers after S seconds
    any  /drop?key=K       → counts the request under K, closes without answering
    GET  /hits?key=K       → JSON {hits}: how many /drop requests K got
    GET  /te?h=A&h=B       → one Transfer-Encoding header per h, then a chunked-looking
                             body and a close
    GET  /raw (Upgrade)    → 101, then echoes bytes; on EOF half-closes and holds 5 s
"""

import base64
import hashlib
import json
import os
import socket
import socketserver
import struct
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler
from urllib.parse import parse_qs, urlsplit

PATTERN = bytes(range(256)) * 256  # 64 KiB
WS_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
HITS: dict[str, int] = {}
HITS_LOCK = threading.Lock()


class Server(socketserver.ThreadingMixIn, socketserver.TCPServer):
    daemon_threads = True
    allow_reuse_address = True


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def __getattr__(self, name):
        if name.startswith("do_"):
            return self.route
        raise AttributeError(name)

    def query(self):
        return {k: v[0] for k, v in parse_qs(urlsplit(self.path).query).items()}

    def send(self, status, body, kind="application/json", extra=()):
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        for name, value in extra:
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def read_body(self):
        digest, size = hashlib.sha256(), 0
        if "chunked" in self.headers.get("Transfer-Encoding", ""):
            while True:
                line = self.rfile.readline()
                n = int(line.split(b";")[0], 16)
                if n == 0:
                    while self.rfile.readline() not in (b"\r\n", b""):
                        pass
                    break
                left = n
                while left:
                    piece = self.rfile.read(min(left, 1 << 20))
                    digest.update(piece)
                    left -= len(piece)
                    size += len(piece)
                self.rfile.readline()
        else:
            left = int(self.headers.get("Content-Length") or 0)
            while left:
                piece = self.rfile.read(min(left, 1 << 20))
                if not piece:
                    break
                digest.update(piece)
                left -= len(piece)
                size += len(piece)
        return size, digest.hexdigest()

    def route(self):
        path = urlsplit(self.path).path
        if path == "/ws" and self.headers.get("Upgrade", "").lower() == "websocket":
            return self.websocket()
        if path == "/raw" and self.headers.get("Upgrade"):
            return self.raw_echo()
        if path == "/slow":
            time.sleep(float(self.query().get("s", "1")))
            return self.send(200, b'{"slow": true}')
        if path == "/drop":
            with HITS_LOCK:
                key = self.query().get("key", "")
                HITS[key] = HITS.get(key, 0) + 1
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        if path == "/hits":
            return self.send(200, json.dumps({"hits": HITS.get(self.query().get("key", ""),
                                                                0)}).encode())
        if path == "/te":
            codings = parse_qs(urlsplit(self.path).query).get("h", [])
            self.wfile.write(b"HTTP/1.1 200 OK\r\n" + b"".join(
                b"Transfer-Encoding: %s\r\n" % c.encode() for c in codings) + b"\r\n")
            self.wfile.write(b"5\r\nhello\r\n0\r\n\r\n")
            self.wfile.flush()
            self.close_connection = True
            return
        if path == "/big":
            return self.big(int(self.query().get("n", "1024")))
        if path == "/chunked":
            return self.chunked(int(self.query().get("n", "1024")))
        if path == "/sse":
            return self.sse(int(self.query().get("n", "3")), float(self.query().get("gap", "0.2")))
        if path == "/cookie":
            got = self.headers.get("Cookie", "")
            return self.send(200, json.dumps({"cookie": got}).encode(), extra=[
                ("Set-Cookie", "a=1; Path=/"), ("Set-Cookie", "b=2; Path=/; HttpOnly")])
        if path.startswith("/status/"):
            return self.send(int(path.rsplit("/", 1)[1]), b'{"status": true}')
        if path == "/close-mid":
            self.send_response(200)
            self.send_header("Content-Length", str(1 << 20))
            self.end_headers()
            self.wfile.write(b"x" * 10240)
            self.wfile.flush()
            self.close_connection = True
            self.connection.shutdown(2)
            return
        size, digest = self.read_body()
        if path == "/sink":
            return self.send(200, json.dumps({"received": size, "sha256": digest}).encode())
        headers = [[k, v] for k, v in self.headers.items()]
        self.send(200, json.dumps({"method": self.command, "path": self.path,
                                   "headers": headers, "body_len": size}).encode())

    def big(self, n):
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(n))
        self.end_headers()
        left = n
        while left:
            piece = PATTERN[: min(left, len(PATTERN))]
            self.wfile.write(piece)
            left -= len(piece)

    def chunked(self, n):
        self.send_response(200)
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        left = n
        while left:
            piece = PATTERN[: min(left, len(PATTERN))]
            self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
            left -= len(piece)
        self.wfile.write(b"0\r\n\r\n")

    def sse(self, n, gap):
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        for i in range(n):
            time.sleep(gap)
            event = f"id: {i}\ndata: {time.time():.6f}\n\n".encode()
            self.wfile.write(b"%x\r\n%s\r\n" % (len(event), event))
            self.wfile.flush()
        self.wfile.write(b"0\r\n\r\n")

    def websocket(self):
        accept = base64.b64encode(hashlib.sha1(
            (self.headers["Sec-WebSocket-Key"] + WS_GUID).encode()).digest()).decode()
        self.send_response(101)
        self.send_header("Upgrade", "websocket")
        self.send_header("Connection", "Upgrade")
        self.send_header("Sec-WebSocket-Accept", accept)
        self.end_headers()
        self.wfile.flush()
        self.close_connection = True
        while True:
            head = self.rfile.read(2)
            if len(head) < 2:
                return
            opcode, length = head[0] & 0x0F, head[1] & 0x7F
            if length == 126:
                length = struct.unpack("!H", self.rfile.read(2))[0]
            elif length == 127:
                length = struct.unpack("!Q", self.rfile.read(8))[0]
            mask = self.rfile.read(4)
            data = bytearray(self.rfile.read(length))
            for i in range(len(data)):
                data[i] ^= mask[i % 4]
            if opcode == 0x8:
                self.frame(0x8, bytes(data[:2]))
                return
            self.frame(0xA if opcode == 0x9 else opcode, bytes(data))

    def raw_echo(self):
        self.send_response(101)
        self.send_header("Upgrade", self.headers["Upgrade"])
        self.send_header("Connection", "Upgrade")
        self.end_headers()
        self.wfile.flush()
        self.close_connection = True
        while True:
            data = self.connection.recv(65536)
            if not data:
                break
            self.connection.sendall(data)
        self.connection.shutdown(socket.SHUT_WR)
        time.sleep(5)

    def frame(self, opcode, data):
        n = len(data)
        if n < 126:
            head = struct.pack("!BB", 0x80 | opcode, n)
        elif n < 65536:
            head = struct.pack("!BBH", 0x80 | opcode, 126, n)
        else:
            head = struct.pack("!BBQ", 0x80 | opcode, 127, n)
        self.wfile.write(head + data)
        self.wfile.flush()


if __name__ == "__main__":
    port = int(sys.argv[1])
    with Server(("0.0.0.0", port), Handler) as server:
        print("listening", port, os.getpid(), flush=True)
        server.serve_forever()
