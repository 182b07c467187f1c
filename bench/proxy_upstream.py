"""The benchmark's upstream, run INSIDE a sandbox (stdlib asyncio, no parsing beyond
finding the end of a request head): python3 proxy_upstream.py PORT

    GET /          → 13-byte body, keep-alive
    GET /big?n=N   → N bytes
    GET /sse       → an SSE response whose first event is written at once
    GET /ws        → WebSocket echo
"""

import asyncio
import base64
import hashlib
import struct
import sys

SMALL = b"HTTP/1.1 200 OK\r\nContent-Length: 13\r\nContent-Type: text/plain\r\n\r\nhello, world\n"
BLOCK = b"x" * (1 << 20)
GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


async def handle(reader, writer):
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            line = head.split(b"\r\n", 1)[0]
            target = line.split(b" ")[1]
            if target.startswith(b"/big"):
                n = int(target.split(b"n=")[1])
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % n)
                while n:
                    piece = BLOCK[: min(n, len(BLOCK))]
                    writer.write(piece)
                    n -= len(piece)
                    await writer.drain()
            elif target.startswith(b"/sse"):
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                             b"Transfer-Encoding: chunked\r\n\r\n")
                event = b"data: first\n\n"
                writer.write(b"%x\r\n%s\r\n0\r\n\r\n" % (len(event), event))
            elif target.startswith(b"/ws"):
                key = next(v for k, _, v in (h.partition(b": ") for h in head.split(b"\r\n"))
                           if k.lower() == b"sec-websocket-key")
                accept = base64.b64encode(hashlib.sha1(key.strip() + GUID).digest())
                writer.write(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                             b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + accept +
                             b"\r\n\r\n")
                await echo(reader, writer)
                return
            else:
                writer.write(SMALL)
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        writer.close()


async def echo(reader, writer):
    while True:
        b0, b1 = await reader.readexactly(2)
        n = b1 & 0x7F
        if n == 126:
            n = struct.unpack("!H", await reader.readexactly(2))[0]
        elif n == 127:
            n = struct.unpack("!Q", await reader.readexactly(8))[0]
        mask = await reader.readexactly(4)
        data = bytes(b ^ mask[i % 4] for i, b in enumerate(await reader.readexactly(n)))
        opcode = b0 & 0x0F
        if opcode == 0x8:
            writer.write(b"\x88\x02" + data[:2])
            return
        head = struct.pack("!BB", 0x80 | opcode, n) if n < 126 else \
            struct.pack("!BBH", 0x80 | opcode, 126, n)
        writer.write(head + data)


async def main(port):
    server = await asyncio.start_server(handle, "0.0.0.0", port, backlog=1024)
    print("listening", port, flush=True)
    await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1])))
