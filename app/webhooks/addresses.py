"""Webhook receivers must be on the public internet, unless the operator says otherwise.

A webhook URL is chosen by an account, and the worker POSTs to it from inside the deployment:
without this check any account could make the service call its own admin ports, the cloud
metadata endpoint (169.254.169.254) or databases on the private network (server-side request
forgery). So a receiver whose address is loopback, private, link-local, multicast, reserved or
unspecified is refused: at registration when the host is an address or resolves to one, and
again at every delivery (the name may point elsewhere by then). WEBHOOK_ALLOW_PRIVATE_URLS=true
lifts the rule for deployments whose receivers live on the private network (and for tests).

What remains: a name that resolves to a public address when checked and to a private one a
moment later, when requests connects (DNS rebinding), is not caught.
"""

from __future__ import annotations

import ipaddress
import socket
from urllib.parse import urlsplit


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
