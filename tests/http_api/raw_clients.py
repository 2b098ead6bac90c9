"""Clients made of raw sockets, for tests of what a misbehaving client does: send a request, never read.

`stalled_http_stream` speaks HTTP/1.1 with a tiny receive buffer. `RawH2` speaks just enough HTTP/2 to start
one gRPC call (hand-encoded HPACK literals, no Huffman) with a tiny stream window it never reopens: the
server may send `window` bytes of the response and then has to wait, as it would for a client that
stopped reading. Both block: run them off the event loop that serves the server.
"""

from __future__ import annotations

import json
import socket
import struct

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DATA, HEADERS, RST_STREAM, SETTINGS = 0x0, 0x1, 0x3, 0x4
REFUSED_STREAM = 0x7
END_STREAM, END_HEADERS, ACK = 0x1, 0x4, 0x1
SETTINGS_MAX_CONCURRENT_STREAMS, SETTINGS_INITIAL_WINDOW_SIZE = 0x3, 0x4


def stalled_http_stream(port: int, body: dict, path: str = "/v1/completions") -> socket.socket:
    """POST a streaming request and return the socket unread (the caller closes it)."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1024)  # before connect: the window stays small
    sock.connect(("127.0.0.1", port))
    raw = json.dumps(body).encode()
    sock.sendall(f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
                 f"Content-Length: {len(raw)}\r\n\r\n".encode() + raw)
    return sock


def frame(kind: int, flags: int, stream: int, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload))[1:] + bytes([kind, flags]) + struct.pack(">I", stream) + payload


def _literal(name: str, value: str) -> bytes:
    """HPACK 'literal header field without indexing, new name' (lengths < 127, no Huffman)."""
    n, v = name.encode(), value.encode()
    return b"\x00" + bytes([len(n)]) + n + bytes([len(v)]) + v


class RawH2:
    def __init__(self, port: int, window: int):
        self.port = port
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        self.sock.sendall(PREFACE + frame(SETTINGS, 0, 0, struct.pack(">HI", SETTINGS_INITIAL_WINDOW_SIZE, window)))
        self.server_settings = self._read_server_settings()
        self.sock.sendall(frame(SETTINGS, ACK, 0, b""))

    def _read_frame(self) -> tuple[int, int, int, bytes]:
        head = self._recv(9)
        length = int.from_bytes(head[:3], "big")
        return head[3], head[4], int.from_bytes(head[5:9], "big") & 0x7FFFFFFF, self._recv(length)

    def _recv(self, n: int) -> bytes:
        data = b""
        while len(data) < n:
            chunk = self.sock.recv(n - len(data))
            if not chunk:
                raise ConnectionError("server closed the connection")
            data += chunk
        return data

    def _read_server_settings(self) -> dict[int, int]:
        """The server's first SETTINGS frame (the handshake; the response itself is never read)."""
        while True:
            kind, flags, _, payload = self._read_frame()
            if kind == SETTINGS and not flags & ACK:
                return {struct.unpack(">H", payload[i:i + 2])[0]: struct.unpack(">I", payload[i + 2:i + 6])[0]
                        for i in range(0, len(payload), 6)}

    def start_call(self, stream: int, path: str, message: bytes) -> None:
        """HEADERS + one gRPC-framed message with END_STREAM: a unary-request call, e.g. a Generate."""
        block = b"".join(_literal(k, v) for k, v in [
            (":method", "POST"), (":scheme", "http"), (":path", path), (":authority", f"127.0.0.1:{self.port}"),
            ("content-type", "application/grpc"), ("te", "trailers")])
        self.sock.sendall(frame(HEADERS, END_HEADERS, stream, block)
                          + frame(DATA, END_STREAM, stream, b"\x00" + struct.pack(">I", len(message)) + message))

    def reset_code(self, stream: int) -> int:
        """Read frames until the server resets `stream`; its error code."""
        while True:
            kind, _, sid, payload = self._read_frame()
            if kind == RST_STREAM and sid == stream:
                return int.from_bytes(payload[:4], "big")

    def close(self) -> None:
        self.sock.close()
