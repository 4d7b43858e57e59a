"""A TCP proxy a test can cut: every open connection is reset and new ones are refused until
it is restored. Put it between the app and PostgreSQL to make the database "go away" without
touching the server other processes share."""

from __future__ import annotations

import socket
import threading

from tests.support.servers import free_port


class CuttableProxy:
    def __init__(self, target_host: str, target_port: int, port: int | None = None) -> None:
        self.target = (target_host, target_port)
        self.port = port or free_port()  # below the ephemeral range: see free_port
        self.port_chosen = port is not None
        self.started_once = False
        self._listener: socket.socket | None = None
        self._connections: set[socket.socket] = set()
        self._lock = threading.Lock()
        self.up = False

    def start(self) -> CuttableProxy:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        for attempt in range(10):
            try:
                listener.bind(("127.0.0.1", self.port))
                break
            except OSError:
                # Taken since free_port said it was free: a first start moves to another port
                # (a restore keeps its port, which its clients know).
                if self.started_once or self.port_chosen or attempt == 9:
                    listener.close()
                    raise
                self.port = free_port()
        listener.listen(128)
        self.started_once = True
        self._listener = listener
        self.up = True
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()
        return self

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            with self._lock:
                if not self.up:
                    client.close()
                    upstream.close()
                    continue
                self._connections |= {client, upstream}
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    def _pipe(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while chunk := source.recv(65536):
                sink.sendall(chunk)
        except OSError:
            pass
        finally:
            for sock in (source, sink):
                self._close(sock)

    def _close(self, sock: socket.socket) -> None:
        with self._lock:
            self._connections.discard(sock)
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        sock.close()

    def cut(self) -> None:
        """Refuse new connections and reset the open ones."""
        with self._lock:
            self.up = False
            listener, self._listener = self._listener, None
            open_ = list(self._connections)
        if listener is not None:
            try:
                # Wakes the thread blocked in accept(): a close alone may leave the port bound.
                listener.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            listener.close()
        for sock in open_:
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
            except OSError:
                pass
            self._close(sock)

    def restore(self) -> None:
        self.start()

    def stop(self) -> None:
        self.cut()
