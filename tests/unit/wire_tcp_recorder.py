"""Test-only recording TCP proxy: accepts on 127.0.0.1, relays each connection to a target port and
records every chunk moved as (ts_ns, connection number, "c2s" | "s2c", bytes)."""

from __future__ import annotations

import socket
import threading
import time


class RecordingProxy:
    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.records: list[tuple[int, int, str, bytes]] = []
        self._lock = threading.Lock()
        self._sock = socket.create_server(("127.0.0.1", 0))
        self.port = self._sock.getsockname()[1]
        self._conns = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._sock.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
            with self._lock:
                self._conns += 1
                n = self._conns
            threading.Thread(target=self._pump, args=(client, upstream, n, "c2s"), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, n, "s2c"), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, n: int, direction: str) -> None:
        while True:
            try:
                data = src.recv(65536)
            except OSError:
                data = b""
            if not data:
                try:
                    dst.shutdown(socket.SHUT_WR)
                except OSError:
                    pass
                return
            with self._lock:
                self.records.append((time.time_ns(), n, direction, data))
            dst.sendall(data)

    def close(self) -> None:
        self._sock.close()
