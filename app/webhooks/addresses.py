"""Webhook receivers must be on the public internet, unless the operator says otherwise.

A webhook URL is chosen by an account, and the worker POSTs to it from inside the deployment:
without this check any account could make the service call its own admin ports, the cloud
metadata endpoint (169.254.169.254) or databases on the private network (server-side request
forgery). So a receiver whose address is loopback, private, link-local, multicast, reserved or
unspecified is refused: at registration when the host is an address or resolves to one, and
again at every delivery (the name may point elsewhere by then). WEBHOOK_ALLOW_PRIVATE_URLS=true
lifts the rule for deployments whose receivers live on the private network (and for tests).

A name can resolve to a public address when checked and to a private one a moment later, when
the delivery connects (DNS rebinding). So deliveries go through `public_only_session()`, which
checks the address each connection actually reached, before anything is sent on it. Through an
HTTP proxy (HTTP_PROXY / HTTPS_PROXY) the connection reaches the proxy, and only the check
of the name applies: the proxy does the resolving.
"""

from __future__ import annotations

import ipaddress
import socket
from urllib.parse import urlsplit

import requests
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool


class NotPublic(Exception):
    """A delivery's connection reached an address that is not a public one."""


def _problem(address: str) -> str | None:
    ip = ipaddress.ip_address(address.split("%", 1)[0])  # drop an IPv6 zone
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if not ip.is_global or ip.is_multicast:
        return f"{ip} is not a public address"
    return None


def private_address(url: str) -> str | None:
    """Why `url`'s host is not a public receiver, or None. A name that does not resolve passes:
    there is nothing to reach (yet), and a delivery to it fails to connect."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    try:
        return _problem(host)
    except ValueError:
        pass  # a name, not an address
    try:
        infos = socket.getaddrinfo(
            host, parts.port or (443 if parts.scheme == "https" else 80), type=socket.SOCK_STREAM
        )
    except (socket.gaierror, UnicodeError):
        return None
    for info in infos:
        problem = _problem(info[4][0])
        if problem:
            return f"{host} resolves to {problem.split(' is ')[0]}, which is not a public address"
    return None


class _PeerChecked:
    """A urllib3 connection that closes its socket, before any byte is sent (TLS included), when
    the address it connected to is not public."""

    def _new_conn(self) -> socket.socket:
        sock = super()._new_conn()  # type: ignore[misc]
        if self.proxy is None:  # type: ignore[attr-defined]
            problem = _problem(sock.getpeername()[0])
            if problem:
                sock.close()
                raise NotPublic(problem)
        return sock


class _PeerCheckedHTTP(_PeerChecked, HTTPConnection):
    pass


class _PeerCheckedHTTPS(_PeerChecked, HTTPSConnection):
    pass


class _HTTPPool(HTTPConnectionPool):
    ConnectionCls = _PeerCheckedHTTP


class _HTTPSPool(HTTPSConnectionPool):
    ConnectionCls = _PeerCheckedHTTPS


class _PublicOnlyAdapter(HTTPAdapter):
    def init_poolmanager(self, *args, **kwargs) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = {"http": _HTTPPool, "https": _HTTPSPool}


def public_only_session() -> requests.Session:
    """A requests session whose connections raise `NotPublic` when they reach a non-public
    address."""
    session = requests.Session()
    adapter = _PublicOnlyAdapter()
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return session
