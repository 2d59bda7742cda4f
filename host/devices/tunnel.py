"""Local port forwarding through an SSH transport (what ``ssh -L`` does), so gRPC reaches an agent that
listens only on the board's loopback. Nothing is opened on the board: each local TCP connection becomes a
``direct-tcpip`` channel inside the existing SSH connection."""

from __future__ import annotations

import contextlib
import logging
import select
import socket
import threading

from host.errors import DeviceUnreachableError

log = logging.getLogger(__name__)

_CHUNK = 64 * 1024


class Tunnel:
    """Listens on 127.0.0.1 (a free port) and forwards every connection to ``remote_host:remote_port`` as
    seen from the board. ``close()`` stops listening and tears down open channels."""

    def __init__(self, transport, remote_host: str, remote_port: int) -> None:
        self._transport = transport
        self.remote = (remote_host, remote_port)
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(16)
        self.local_port: int = self._listener.getsockname()[1]
        self._closed = threading.Event()
        self._lock = threading.Lock()
        self._pairs: list[tuple[socket.socket, object]] = []
        self._thread = threading.Thread(target=self._accept_loop, name=f"tunnel-{self.local_port}", daemon=True)
        self._thread.start()
        log.debug("tunnel 127.0.0.1:%d -> %s:%d", self.local_port, remote_host, remote_port)

    @property
    def target(self) -> str:
        """gRPC target of the local end."""
        return f"127.0.0.1:{self.local_port}"

    @property
    def alive(self) -> bool:
        """False once closed or once the SSH transport died."""
        return not self._closed.is_set() and bool(self._transport.is_active())

    def _accept_loop(self) -> None:
        while not self._closed.is_set():
            try:
                sock, peer = self._listener.accept()
            except OSError:
                break  # listener closed
            try:
                channel = self._transport.open_channel("direct-tcpip", self.remote, peer, timeout=10)
            except Exception as exc:  # the agent is down or the transport died: refuse this connection
                log.debug("tunnel cannot open channel to %s:%d: %s", *self.remote, exc)
                sock.close()
                continue
            with self._lock:
                self._pairs.append((sock, channel))
            threading.Thread(target=self._pump, args=(sock, channel), daemon=True).start()

    def _pump(self, sock: socket.socket, channel) -> None:
        # Each direction ends on its own EOF (half-close), so bytes still in flight the other way are kept.
        sources = [sock, channel]
        try:
            while sources and not self._closed.is_set():
                readable, _, _ = select.select(sources, [], [], 1.0)
                if sock in readable:
                    data = sock.recv(_CHUNK)
                    if data:
                        channel.sendall(data)
                    else:
                        channel.shutdown_write()
                        sources.remove(sock)
                if channel in readable:
                    data = channel.recv(_CHUNK)
                    if data:
                        sock.sendall(data)
                    else:
                        with contextlib.suppress(OSError):
                            sock.shutdown(socket.SHUT_WR)
                        sources.remove(channel)
        except Exception as exc:  # either side vanished; closing both tells gRPC the connection is gone
            log.debug("tunnel connection ended: %s", exc)
        finally:
            channel.close()
            sock.close()
            with self._lock:
                if (sock, channel) in self._pairs:
                    self._pairs.remove((sock, channel))

    def check(self) -> None:
        """Raise DeviceUnreachableError when the SSH connection under the tunnel is gone."""
        if not self.alive:
            raise DeviceUnreachableError(f"SSH tunnel to {self.remote[0]}:{self.remote[1]} is closed")

    def close(self) -> None:
        """Stop forwarding; idempotent."""
        if self._closed.is_set():
            return
        self._closed.set()
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)
        self._listener.close()
        with self._lock:
            pairs, self._pairs = self._pairs, []
        for sock, channel in pairs:
            # the SSH link may already be dead (the board rebooted, sshd dropped us): closing its channels then
            # fails in paramiko (EOFError, socket errors, SSHException), which must not hide what happened before
            with contextlib.suppress(Exception):
                channel.close()
            with contextlib.suppress(OSError):
                sock.close()
        self._thread.join(timeout=2)
