"""SSRF guard for fetching user-supplied URLs.

Two layers, because neither is enough alone:

1. ``UrlGuard.check_url`` - syntax only, no DNS: http/https, a host, no credentials, a valid
   port, and literal addresses (including legacy spellings such as ``2130706433`` or ``0x7f.1``
   and the name ``localhost``) classified at once. Cheap enough for the request thread.
2. ``guarded_session`` - connect time: every new connection resolves its host once, classifies
   every resolved address and then connects to exactly those addresses. The check and the
   connect use the same resolution, so there is no DNS-rebinding window between them.

Policy: a host is refused if ANY of its resolved addresses is refused, not only the one we
would connect to first. A name that mixes public and private addresses is either misconfigured
or an attack, and refusing it outright keeps the outcome independent of address ordering.

``BlockedAddress`` is deliberately not an OSError: urllib3 and requests would otherwise wrap it
into a (retryable) connection error. ``fetch`` turns it into ``service.errors.UrlNotAllowed``.
"""
from __future__ import annotations

import ipaddress
import re
import socket
import sys
from dataclasses import dataclass, field
from typing import Callable
from urllib.parse import urljoin

import requests
from requests.adapters import HTTPAdapter
from requests.utils import requote_uri
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.exceptions import ConnectTimeoutError, LocationParseError, NameResolutionError, NewConnectionError
from urllib3.util import parse_url
from urllib3.util.connection import allowed_gai_family
from urllib3.util.timeout import _DEFAULT_TIMEOUT

from service.errors import UrlNotAllowed

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
# (address, port) -> refusal reason or None. Port is passed so tests can allow one local port.
Classifier = Callable[[IPAddress, int], "str | None"]

MAX_URL_LENGTH = 2048
ALLOWED_SCHEMES = {"http": 80, "https": 443}
REDIRECT_STATUSES = {301, 302, 303, 307, 308}
# Spaces, control characters and backslashes are where URL parsers disagree with each other.
_UNSAFE_URL_CHARS = re.compile(r"[\x00-\x20\x7f\\]")
# Hosts made only of these characters may be inet_aton spellings (2130706433, 0x7f.1, 0177.1).
_LEGACY_IPV4 = re.compile(r"[0-9a-fA-FxX.]+")

_net = ipaddress.ip_network
# First match wins, so the more specific ranges come first.
_IPV4_RULES = [
    (_net("0.0.0.0/8"), "unspecified"),
    (_net("127.0.0.0/8"), "loopback"),
    (_net("10.0.0.0/8"), "private"),
    (_net("172.16.0.0/12"), "private"),
    (_net("192.168.0.0/16"), "private"),
    (_net("100.64.0.0/10"), "shared"),
    (_net("169.254.0.0/16"), "link-local"),
    (_net("224.0.0.0/4"), "multicast"),
    (_net("255.255.255.255/32"), "broadcast"),
    (_net("240.0.0.0/4"), "reserved"),
    (_net("192.0.0.0/24"), "reserved"),
    (_net("192.88.99.0/24"), "reserved"),
    (_net("192.0.2.0/24"), "documentation"),
    (_net("198.51.100.0/24"), "documentation"),
    (_net("203.0.113.0/24"), "documentation"),
    (_net("198.18.0.0/15"), "benchmarking"),
]
_IPV6_RULES = [
    (_net("::/128"), "unspecified"),
    (_net("::1/128"), "loopback"),
    (_net("fe80::/10"), "link-local"),
    (_net("fec0::/10"), "site-local"),
    (_net("fc00::/7"), "private"),
    (_net("ff00::/8"), "multicast"),
    (_net("64:ff9b:1::/48"), "private"),
    (_net("2001:db8::/32"), "documentation"),
    (_net("100::/64"), "reserved"),
    (_net("::/8"), "reserved"),  # includes the deprecated IPv4-compatible ::a.b.c.d
]
_NAT64 = _net("64:ff9b::/96")


def _as_address(ip: "str | IPAddress") -> IPAddress:
    if isinstance(ip, (ipaddress.IPv4Address, ipaddress.IPv6Address)):
        return ip
    text = str(ip).strip()
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
    return ipaddress.ip_address(text)


def _embedded_ipv4(addr: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address a v6 address really reaches (mapped, NAT64, 6to4, Teredo client)."""
    if addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    if addr in _NAT64:
        return ipaddress.IPv4Address(int(addr) & 0xFFFFFFFF)
    if addr.sixtofour is not None:
        return addr.sixtofour
    if addr.teredo is not None:
        return addr.teredo[1]
    return None


def classify_address(ip: "str | IPAddress") -> str | None:
    """Why this address must not be fetched from ("loopback", "private", ...), or None if it
    is a public unicast address. Raises ValueError for something that is not an address."""
    addr = _as_address(ip)
    if addr.version == 6:
        embedded = _embedded_ipv4(addr)
        if embedded is not None:
            return classify_address(embedded)
    rules = _IPV4_RULES if addr.version == 4 else _IPV6_RULES
    for network, reason in rules:
        if addr in network:
            return reason
    # Anything else the stdlib does not consider globally reachable (IETF protocol ranges, ...).
    return None if addr.is_global else "reserved"


def _default_classifier(addr: IPAddress, port: int) -> str | None:
    return classify_address(addr)


class BlockedAddress(Exception):
    """A connection was refused because of the address the host resolved to."""

    def __init__(self, host: str, address: str, port: int, reason: str):
        super().__init__(f"Refusing to connect to {host} ({address}): {reason} address.")
        self.host, self.address, self.port, self.reason = host, address, port, reason


def _refused(message: str, code: str, **details) -> UrlNotAllowed:
    return UrlNotAllowed(message, code=code, details=details)


def _literal_address(host: str) -> IPAddress | None:
    """The address a host names without DNS: IP literals, inet_aton spellings, localhost."""
    # A trailing dot is the DNS root: "127.0.0.1." is still that address to a resolver.
    bare = host.lower().rstrip(".") if not host.startswith("[") else host
    try:
        return _as_address(bare)
    except ValueError:
        pass
    if bare == "localhost" or bare.endswith(".localhost"):  # RFC 6761: always loopback
        return ipaddress.IPv4Address("127.0.0.1")
    if _LEGACY_IPV4.fullmatch(bare):
        try:
            return ipaddress.IPv4Address(socket.inet_aton(bare))  # local parse, no network
        except OSError:
            return None
    return None


class UrlGuard:
    """The policy for outbound URLs. ``classify`` is a hook for tests (and nothing else) to
    allow a chosen local port; it is ignored, like all classification, when allow_private."""

    def __init__(self, allow_private: bool = False, *, classify: Classifier | None = None):
        self.allow_private = bool(allow_private)
        self._classify = classify or _default_classifier

    def refusal_reason(self, address: "str | IPAddress", port: int) -> str | None:
        if self.allow_private:
            return None
        return self._classify(_as_address(address), port)

    def check_resolved(self, host: str, port: int, addresses: list[str]) -> None:
        """Raise BlockedAddress if any resolved address is refused."""
        for address in addresses:
            reason = self.refusal_reason(address, port)
            if reason:
                raise BlockedAddress(host, address, port, reason)

    def check_url(self, url: str) -> str:
        """Validate a URL without DNS; return it unchanged or raise UrlNotAllowed."""
        if not isinstance(url, str) or not url:
            raise _refused("The URL must be a non-empty string.", "URL_INVALID")
        if len(url) > MAX_URL_LENGTH:
            raise _refused(f"The URL is longer than {MAX_URL_LENGTH} characters.", "URL_INVALID")
        if _UNSAFE_URL_CHARS.search(url):
            raise _refused("The URL must not contain spaces, control characters or backslashes.",
                           "URL_INVALID", url=url)
        try:
            # The parser requests and urllib3 use themselves, so we judge what they will fetch.
            parsed = parse_url(url)
        except LocationParseError:
            raise _refused("The URL cannot be parsed.", "URL_INVALID", url=url) from None
        scheme = (parsed.scheme or "").lower()
        if scheme not in ALLOWED_SCHEMES:
            raise _refused("Only http:// and https:// URLs are allowed.", "URL_SCHEME_NOT_ALLOWED",
                           url=url, scheme=scheme or None)
        if parsed.auth is not None:
            raise _refused("URLs with a user name or password are not allowed.",
                           "URL_CREDENTIALS_NOT_ALLOWED", url=url)
        if not parsed.host:
            raise _refused("The URL has no host.", "URL_INVALID", url=url)
        port = parsed.port if parsed.port is not None else ALLOWED_SCHEMES[scheme]
        if not 1 <= port <= 65535:
            raise _refused("The URL's port is out of range.", "URL_INVALID", url=url, port=port)
        address = _literal_address(parsed.host)
        if address is not None:
            reason = self.refusal_reason(address, port)
            if reason:
                raise _refused(f"{parsed.host} is a {reason} address.", "URL_NOT_ALLOWED",
                               url=url, host=parsed.host, address=str(address), reason=reason)
        return url


def _resolve(host: str, port: int) -> list[tuple]:
    """Module-level so tests can substitute a resolver and never touch real DNS."""
    return socket.getaddrinfo(host, port, allowed_gai_family(), socket.SOCK_STREAM)


class _PinnedConnectMixin:
    """Replaces urllib3's connect: resolve once, check every address, connect to those very
    addresses. TLS SNI and certificate checks still use the host name (self.host)."""

    url_guard: UrlGuard  # set on the per-guard subclasses made by _pool_classes_for

    def _new_conn(self) -> socket.socket:
        host = self._dns_host.strip("[]")
        try:
            infos = _resolve(host, self.port)
        except socket.gaierror as exc:
            raise NameResolutionError(self.host, self, exc) from exc
        self.url_guard.check_resolved(self.host, self.port, [info[4][0] for info in infos])
        last_error: OSError | None = None
        for family, socktype, proto, _canonname, sockaddr in infos:
            sock = socket.socket(family, socktype, proto)
            try:
                for option in self.socket_options or ():
                    sock.setsockopt(*option)
                if self.timeout is not _DEFAULT_TIMEOUT:
                    sock.settimeout(self.timeout)
                if self.source_address:
                    sock.bind(self.source_address)
                sock.connect(sockaddr)
            except OSError as exc:
                sock.close()
                last_error = exc
                continue
            sys.audit("http.client.connect", self, self.host, self.port)
            return sock
        if isinstance(last_error, TimeoutError):
            raise ConnectTimeoutError(
                self, f"Connection to {self.host} timed out. (connect timeout={self.timeout})") from last_error
        raise NewConnectionError(
            self, f"Failed to establish a new connection: {last_error or 'no addresses'}") from last_error


def _pool_classes_for(guard: UrlGuard) -> dict[str, type]:
    # Classes per guard because urllib3's pool keys refuse unknown connection kwargs.
    http_conn = type("GuardedHTTPConnection", (_PinnedConnectMixin, HTTPConnection), {"url_guard": guard})
    https_conn = type("GuardedHTTPSConnection", (_PinnedConnectMixin, HTTPSConnection), {"url_guard": guard})
    return {
        "http": type("GuardedHTTPConnectionPool", (HTTPConnectionPool,), {"ConnectionCls": http_conn}),
        "https": type("GuardedHTTPSConnectionPool", (HTTPSConnectionPool,), {"ConnectionCls": https_conn}),
    }


class GuardedAdapter(HTTPAdapter):
    def __init__(self, guard: UrlGuard, pool_size: int = 4):
        self._pool_classes = _pool_classes_for(guard)  # before super(): it builds the pool manager
        super().__init__(pool_connections=pool_size, pool_maxsize=pool_size, max_retries=0)

    def init_poolmanager(self, *args, **kwargs) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = self._pool_classes

    def proxy_manager_for(self, proxy, **proxy_kwargs):
        # Through a proxy we would only check the proxy's address, never the target's.
        raise RuntimeError("guarded sessions do not use proxies")


def guarded_session(guard: UrlGuard, pool_size: int = 4) -> requests.Session:
    """A requests.Session whose every connection is checked by ``guard`` at connect time."""
    session = requests.Session()
    session.trust_env = False  # HTTP(S)_PROXY and .netrc from the environment must not apply
    session.proxies.clear()
    adapter = GuardedAdapter(guard, pool_size)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return session


@dataclass
class Fetched:
    response: requests.Response
    # Each hop that answered with a redirect, in order: {"url": ..., "status": ...}.
    redirects: list[dict] = field(default_factory=list)


def fetch(session: requests.Session, url: str, guard: UrlGuard, *, max_redirects: int = 5,
          timeout: tuple[float, float] = (10.0, 30.0), headers: dict | None = None,
          stream: bool = True, check_hop: Callable[[str], None] | None = None) -> Fetched:
    """GET ``url``, following redirects ourselves so every hop passes ``guard.check_url``
    (and ``check_hop``, which may raise UrlNotAllowed for a caller's own rules: a crawl's
    scope and robots.txt).
    Addresses are checked when each connection is made by the guarded session. The caller
    closes the returned response. Raises UrlNotAllowed (codes URL_*, TOO_MANY_REDIRECTS) and
    requests' own exceptions for network failures."""
    redirects: list[dict] = []
    current = url
    while True:
        guard.check_url(current)
        try:
            response = session.get(current, headers=headers, timeout=timeout, stream=stream,
                                   allow_redirects=False)
        except BlockedAddress as exc:
            raise _refused(str(exc), "URL_NOT_ALLOWED", url=current, host=exc.host, address=exc.address,
                           reason=exc.reason, redirects=redirects) from exc
        location = session.get_redirect_target(response) if response.status_code in REDIRECT_STATUSES else None
        if not location:
            return Fetched(response, redirects)
        response.close()
        redirects.append({"url": current, "status": response.status_code})
        if len(redirects) > max_redirects:
            raise _refused(f"More than {max_redirects} redirects.", "TOO_MANY_REDIRECTS",
                           url=url, redirects=redirects)
        # Quoted the way requests would quote it, so check_url judges what is really requested.
        current = requote_uri(urljoin(response.url, location))
        if check_hop is not None:
            check_hop(current)
