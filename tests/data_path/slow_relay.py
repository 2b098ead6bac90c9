"""A TCP relay on 127.0.0.1 that hands the server's bytes to the client at a fixed, slow rate.

It plays a client that reads slowly (a loaded gateway): the server's replies back up in its socket, so a
server that closes a connection before the client has read everything is caught every time (the client's
next frame meets a closed socket, the kernel answers RST and drops the unsent tail). A reset is passed on
to the client as a reset and counted in `resets`.
"""

from __future__ import annotations

import socket
import struct
import threading
import time


class SlowRelay:
    def __init__(self, target_port: int, bytes_per_s: float, chunk: int = 65536):
        """Relay 127.0.0.1:<self.port> to 127.0.0.1:target_port; server-to-client bytes at `bytes_per_s`."""
        self.target_port, self.bytes_per_s, self.chunk = target_port, bytes_per_s, chunk
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.resets = 0
        self._threads = [threading.Thread(target=self._accept, daemon=True)]
        self._threads[0].start()

    def _accept(self):
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            server = socket.create_connection(("127.0.0.1", self.target_port))
            for src, dst, slow in ((client, server, False), (server, client, True)):
                t = threading.Thread(target=self._pump, args=(src, dst, slow), daemon=True)
                t.start()
                self._threads.append(t)

    def _pump(self, src, dst, slow):
        try:
            while True:
                data = src.recv(self.chunk)
                if not data:
                    dst.shutdown(socket.SHUT_WR)
                    return
                dst.sendall(data)
                if slow:
                    time.sleep(len(data) / self.bytes_per_s)
        except ConnectionResetError:
            self.resets += 1
            self._abort(dst)
        except OSError:
            self._abort(dst)

    @staticmethod
    def _abort(sock):
        """Pass a reset on: RST to the other peer (SO_LINGER 0), waking the pump blocked on it."""
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        sock.close()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def close(self) -> None:
        self.listener.close()
