"""The SSRF guard: address classification tables (no connections at all) and end-to-end checks
against real HTTP servers on loopback only.

Network rule: nothing here connects anywhere but 127.0.0.1 / ::1. Non-loopback ranges are only
ever passed to the classifier. Host names that are not numeric go through a fake resolver, and
a trap on socket.getaddrinfo fails the test instead of letting them reach real DNS.
"""
from __future__ import annotations

import ipaddress
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import requests
from urllib3.connection import HTTPConnection, HTTPSConnection

from service.errors import UrlNotAllowed
from service.net import ssrf
from service.net.ssrf import BlockedAddress, UrlGuard, classify_address, fetch, guarded_session

TIMEOUT = (2.0, 2.0)

REFUSED = [
    # IPv4
    ("127.0.0.1", "loopback"), ("127.255.255.254", "loopback"),
    ("10.0.0.1", "private"), ("10.255.255.255", "private"),
    ("172.16.0.1", "private"), ("172.31.255.255", "private"),
    ("192.168.0.1", "private"), ("192.168.255.255", "private"),
    ("169.254.169.254", "link-local"), ("169.254.0.1", "link-local"),
    ("100.64.0.0", "shared"), ("100.127.255.255", "shared"),
    ("224.0.0.1", "multicast"), ("239.255.255.250", "multicast"),
    ("240.0.0.1", "reserved"), ("255.255.255.254", "reserved"), ("255.255.255.255", "broadcast"),
    ("0.0.0.0", "unspecified"), ("0.1.2.3", "unspecified"),
    ("192.0.0.8", "reserved"), ("192.0.2.1", "documentation"), ("198.51.100.7", "documentation"),
    ("203.0.113.9", "documentation"), ("198.18.0.1", "benchmarking"), ("198.19.255.255", "benchmarking"),
    # IPv6
    ("::1", "loopback"), ("[::1]", "loopback"), ("::", "unspecified"),
    ("fe80::1", "link-local"), ("fe80::1%eth0", "link-local"), ("febf::1", "link-local"),
    ("fc00::1", "private"), ("fd00:ec2::254", "private"), ("fec0::1", "site-local"),
    ("ff02::1", "multicast"), ("ff05::1:3", "multicast"),
    ("2001:db8::1", "documentation"), ("100::1", "reserved"), ("::127.0.0.1", "reserved"),
    ("64:ff9b:1::1", "private"),
    # IPv6 forms that carry an IPv4 address: judged by the IPv4 address they reach
    ("::ffff:127.0.0.1", "loopback"), ("::ffff:7f00:1", "loopback"), ("::FFFF:10.1.2.3", "private"),
    ("::ffff:169.254.169.254", "link-local"), ("::ffff:0.0.0.0", "unspecified"),
    ("::ffff:100.64.0.1", "shared"), ("::ffff:224.0.0.1", "multicast"),
    ("64:ff9b::7f00:1", "loopback"), ("64:ff9b::a9fe:a9fe", "link-local"),
    ("2002:7f00:1::1", "loopback"), ("2002:a9fe:a9fe::", "link-local"), ("2002:c0a8:101::", "private"),
    ("2001:0:4136:e378:8000:63bf:3fff:fdd2", "documentation"),  # Teredo client 192.0.2.45
    ("2001:0:4136:e378:8000:63bf:80ff:fffe", "loopback"),        # Teredo client 127.0.0.1
]

ALLOWED = [
    "8.8.8.8", "1.1.1.1", "93.184.216.34", "11.0.0.1", "172.15.255.255", "172.32.0.1",
    "192.167.255.255", "192.169.0.1", "100.63.255.255", "100.128.0.1", "169.253.255.255",
    "223.255.255.255", "2606:4700:4700::1111", "2001:4860:4860::8888", "2a00:1450:4001::1",
    "::ffff:8.8.8.8", "64:ff9b::808:808", "2002:808:808::1",
]


@pytest.mark.parametrize("address,reason", REFUSED)
def test_refused_addresses(address, reason):
    assert classify_address(address) == reason


@pytest.mark.parametrize("address", ALLOWED)
def test_public_addresses_allowed(address):
    assert classify_address(address) is None


def test_classifier_accepts_address_objects_and_rejects_garbage():
    assert classify_address(ipaddress.ip_address("10.1.1.1")) == "private"
    assert classify_address(ipaddress.ip_address("::ffff:127.0.0.1")) == "loopback"
    with pytest.raises(ValueError):
        classify_address("not-an-ip")


def test_blocked_address_is_not_an_oserror():
    # Otherwise urllib3 would retry it and requests would wrap it as a ConnectionError.
    assert not issubclass(BlockedAddress, OSError)


# --- check_url: syntax and literal addresses, no DNS ------------------------------------------

@pytest.mark.parametrize("url,code", [
    ("ftp://example.com/x", "URL_SCHEME_NOT_ALLOWED"),
    ("file:///etc/passwd", "URL_SCHEME_NOT_ALLOWED"),
    ("gopher://example.com/", "URL_SCHEME_NOT_ALLOWED"),
    ("javascript:alert(1)", "URL_SCHEME_NOT_ALLOWED"),
    ("data:text/plain,hi", "URL_SCHEME_NOT_ALLOWED"),
    ("example.com/x", "URL_SCHEME_NOT_ALLOWED"),
    ("http://user:pw@example.com/", "URL_CREDENTIALS_NOT_ALLOWED"),
    ("http://example.com@127.0.0.1/", "URL_CREDENTIALS_NOT_ALLOWED"),
    ("", "URL_INVALID"), (None, "URL_INVALID"), ("http://", "URL_INVALID"), ("http:///x", "URL_INVALID"),
    ("http://:80/", "URL_INVALID"), ("http://exa mple.com/", "URL_INVALID"),
    ("http://example.com\\@127.0.0.1/", "URL_INVALID"), ("http://example.com/\r\nX: y", "URL_INVALID"),
    ("http://example.com:0/", "URL_INVALID"), ("http://example.com:99999/", "URL_INVALID"),
    ("http://[::1/", "URL_INVALID"), ("http://example.com/" + "a" * 3000, "URL_INVALID"),
    ("http://127.0.0.1/", "URL_NOT_ALLOWED"), ("http://[::1]:8080/", "URL_NOT_ALLOWED"),
    ("http://[::ffff:127.0.0.1]/", "URL_NOT_ALLOWED"), ("http://[fe80::1]/", "URL_NOT_ALLOWED"),
    ("http://2130706433/", "URL_NOT_ALLOWED"), ("http://0x7f.1/", "URL_NOT_ALLOWED"),
    ("http://017700000001/", "URL_NOT_ALLOWED"), ("http://127.1/", "URL_NOT_ALLOWED"),
    ("http://0/", "URL_NOT_ALLOWED"), ("http://0x0a000001/", "URL_NOT_ALLOWED"),
    ("http://localhost/", "URL_NOT_ALLOWED"), ("http://LOCALHOST./", "URL_NOT_ALLOWED"),
    ("http://api.localhost:9000/", "URL_NOT_ALLOWED"),
    ("http://169.254.169.254/latest/meta-data/", "URL_NOT_ALLOWED"),
    ("https://10.0.0.1/", "URL_NOT_ALLOWED"), ("http://100.64.0.1/", "URL_NOT_ALLOWED"),
    # a trailing dot (the DNS root) does not make an address a name
    ("http://127.0.0.1./", "URL_NOT_ALLOWED"), ("http://169.254.169.254./", "URL_NOT_ALLOWED"),
    ("http://0x7f.1./", "URL_NOT_ALLOWED"), ("http://2130706433./x", "URL_NOT_ALLOWED"),
])
def test_check_url_refusals(url, code):
    with pytest.raises(UrlNotAllowed) as info:
        UrlGuard().check_url(url)
    assert info.value.code == code


@pytest.mark.parametrize("url", [
    "http://example.com/", "https://example.com:8443/a/b?c=d#e", "HTTP://EXAMPLE.COM/",
    "http://8.8.8.8/", "http://[2606:4700:4700::1111]/", "http://134744072/",  # 8.8.8.8 spelled as one number
    "http://deadbeef.example/", "http://cafe/",
])
def test_check_url_accepts(url):
    assert UrlGuard().check_url(url) == url


def test_refusal_details_name_the_address_and_reason():
    with pytest.raises(UrlNotAllowed) as info:
        UrlGuard().check_url("http://0x7f.1:8080/x")
    assert info.value.details["address"] == "127.0.0.1"
    assert info.value.details["reason"] == "loopback"


def test_allow_private_skips_only_classification():
    guard = UrlGuard(allow_private=True)
    assert guard.check_url("http://127.0.0.1/") == "http://127.0.0.1/"
    assert guard.check_url("http://169.254.169.254/") == "http://169.254.169.254/"
    with pytest.raises(UrlNotAllowed) as info:
        guard.check_url("file:///etc/passwd")
    assert info.value.code == "URL_SCHEME_NOT_ALLOWED"


# --- end to end, loopback servers only --------------------------------------------------------

class LocalServer:
    """A ThreadingHTTPServer on loopback that records every request it receives."""

    def __init__(self, routes: dict, host: str = "127.0.0.1"):
        self.routes, self.requests = routes, []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                server.requests.append({"path": self.path, "headers": dict(self.headers)})
                route = server.routes.get(self.path.split("?")[0])
                if route is None:
                    self.send_response(404)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                else:
                    route(self)

            def log_message(self, *args):
                pass

        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        server_class = type("Server", (ThreadingHTTPServer,), {"address_family": family})
        self.httpd = server_class((host, 0), Handler)
        self.httpd.daemon_threads = True
        self.host = f"[{host}]" if ":" in host else host
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                       daemon=True)
        self.thread.start()

    @property
    def port(self) -> int:
        return self.httpd.server_address[1]

    def url(self, path: str = "/") -> str:
        return f"http://{self.host}:{self.port}{path}"

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def ok(handler, body=b"hello"):
    handler.send_response(200)
    handler.send_header("Content-Length", str(len(body)))
    handler.end_headers()
    handler.wfile.write(body)


def redirect_to(location, status=302):
    def route(handler):
        handler.send_response(status)
        handler.send_header("Location", location)
        handler.send_header("Content-Length", "0")
        handler.end_headers()
    return route


@pytest.fixture
def servers():
    started = []

    def start(routes=None, host="127.0.0.1"):
        server = LocalServer(routes or {"/": ok}, host)
        started.append(server)
        return server
    yield start
    for server in started:
        server.close()


def only_port(port):
    """A test classifier: 127.0.0.1 on ``port`` is fine, everything else as in production."""
    def classify(addr, p):
        if str(addr) == "127.0.0.1" and p == port:
            return None
        return classify_address(addr) or "not the allowed test port"
    return classify


@pytest.fixture
def fake_dns(monkeypatch):
    """Names -> lists of addresses for the guard's resolver; any other real lookup of a
    non-numeric name fails the test rather than reaching a DNS server."""
    table, calls = {}, []
    real_getaddrinfo = socket.getaddrinfo

    def resolve(host, port):
        if host not in table:  # numeric hosts only: AI_NUMERICHOST never asks a DNS server
            return real_getaddrinfo(host, port, 0, socket.SOCK_STREAM, 0, socket.AI_NUMERICHOST)
        calls.append(host)
        return [(socket.AF_INET6 if ":" in a else socket.AF_INET, socket.SOCK_STREAM, 6, "",
                 (a, port, 0, 0) if ":" in a else (a, port)) for a in table[host]]

    def trap(host, *args, **kwargs):
        if host in table:
            raise AssertionError(f"{host} was resolved outside the guard")
        return real_getaddrinfo(host, *args, **kwargs)
    monkeypatch.setattr(ssrf, "_resolve", resolve)
    monkeypatch.setattr(socket, "getaddrinfo", trap)
    return table, calls


def test_direct_loopback_refused_by_check_url(servers):
    server = servers()
    with guarded_session(UrlGuard()) as session, pytest.raises(UrlNotAllowed) as info:
        fetch(session, server.url(), UrlGuard(), timeout=TIMEOUT)
    assert info.value.code == "URL_NOT_ALLOWED"
    assert server.requests == []


def test_session_refuses_loopback_at_connect_time(servers):
    server = servers()
    with guarded_session(UrlGuard()) as session, pytest.raises(BlockedAddress) as info:
        session.get(server.url(), timeout=TIMEOUT)
    assert (info.value.address, info.value.reason) == ("127.0.0.1", "loopback")
    assert server.requests == []


@pytest.mark.parametrize("spelling", ["2130706433", "0x7f.1", "017700000001", "127.1", "0x7f000001", "0177.0.0.1"])
def test_numeric_spellings_resolve_to_loopback_and_are_refused(servers, spelling):
    # Precondition, checked without any network: the C library parses this spelling itself.
    if socket.getaddrinfo(spelling, 80, socket.AF_INET, socket.SOCK_STREAM, 0,
                          socket.AI_NUMERICHOST)[0][4][0] != "127.0.0.1":
        pytest.skip("this libc does not read the spelling as 127.0.0.1")
    server = servers()
    with guarded_session(UrlGuard()) as session, pytest.raises(BlockedAddress) as info:
        session.get(f"http://{spelling}:{server.port}/", timeout=TIMEOUT)  # bypasses check_url
    assert info.value.address == "127.0.0.1"
    assert server.requests == []


def test_ipv4_mapped_ipv6_literal_refused_at_connect_time(servers):
    if not socket.has_ipv6:
        pytest.skip("no IPv6")
    server = servers()
    with guarded_session(UrlGuard()) as session, pytest.raises(BlockedAddress) as info:
        session.get(f"http://[::ffff:127.0.0.1]:{server.port}/", timeout=TIMEOUT)
    assert info.value.reason == "loopback"
    assert server.requests == []


def test_ipv6_loopback_refused(servers):
    try:
        server = servers(host="::1")
    except OSError:
        pytest.skip("no IPv6 loopback here")
    with guarded_session(UrlGuard()) as session, pytest.raises(BlockedAddress):
        session.get(server.url(), timeout=TIMEOUT)
    assert server.requests == []


def test_https_connections_are_guarded_too(servers):
    server = servers()
    with guarded_session(UrlGuard()) as session:
        https_cls = session.get_adapter("https://x/").poolmanager.pool_classes_by_scheme["https"].ConnectionCls
        assert issubclass(https_cls, HTTPSConnection) and issubclass(https_cls, ssrf._PinnedConnectMixin)
        with pytest.raises(BlockedAddress):
            session.get(f"https://127.0.0.1:{server.port}/", timeout=TIMEOUT)
    assert server.requests == []


def test_allow_private_still_uses_pinned_connections(servers, fake_dns):
    table, calls = fake_dns
    server = servers()
    table["files.test"] = ["127.0.0.1"]
    guard = UrlGuard(allow_private=True)
    with guarded_session(guard) as session:
        http_cls = session.get_adapter("http://x/").poolmanager.pool_classes_by_scheme["http"].ConnectionCls
        assert issubclass(http_cls, HTTPConnection) and issubclass(http_cls, ssrf._PinnedConnectMixin)
        fetched = fetch(session, f"http://files.test:{server.port}/", guard, timeout=TIMEOUT)
        with fetched.response as response:
            assert response.content == b"hello"
    assert calls == ["files.test"]
    assert len(server.requests) == 1


def test_redirect_to_refused_port_is_stopped_on_the_hop(servers):
    target = servers()
    entry = servers({"/go": redirect_to(target.url("/secret"))})
    guard = UrlGuard(classify=only_port(entry.port))
    with guarded_session(guard) as session, pytest.raises(UrlNotAllowed) as info:
        fetch(session, entry.url("/go"), guard, timeout=TIMEOUT)
    assert info.value.code == "URL_NOT_ALLOWED"
    assert len(entry.requests) == 1
    assert target.requests == []


def test_redirect_to_name_resolving_to_refused_address_is_stopped_at_connect(servers, fake_dns):
    table, calls = fake_dns
    target = servers()
    table["internal.test"] = ["127.0.0.1"]
    entry = servers({"/go": redirect_to(f"http://internal.test:{target.port}/admin", status=307)})
    guard = UrlGuard(classify=only_port(entry.port))
    with guarded_session(guard) as session, pytest.raises(UrlNotAllowed) as info:
        fetch(session, entry.url("/go"), guard, timeout=TIMEOUT)
    assert info.value.code == "URL_NOT_ALLOWED"
    assert info.value.details["host"] == "internal.test"
    assert info.value.details["redirects"] == [{"url": entry.url("/go"), "status": 307}]
    assert calls == ["internal.test"]
    assert target.requests == []


@pytest.mark.parametrize("location", ["file:///etc/passwd", "gopher://127.0.0.1:70/", "ftp://example.com/"])
def test_redirect_to_other_scheme_refused(servers, location):
    entry = servers({"/go": redirect_to(location)})
    guard = UrlGuard(classify=only_port(entry.port))
    with guarded_session(guard) as session, pytest.raises(UrlNotAllowed) as info:
        fetch(session, entry.url("/go"), guard, timeout=TIMEOUT)
    assert info.value.code == "URL_SCHEME_NOT_ALLOWED"


def test_redirect_chain_is_followed_and_reported(servers):
    server = servers({"/a": redirect_to("/b", 301), "/b": redirect_to("/final?x=1", 308),
                      "/final": lambda h: ok(h, b"done")})
    guard = UrlGuard(classify=only_port(server.port))
    with guarded_session(guard) as session:
        fetched = fetch(session, server.url("/a"), guard, timeout=TIMEOUT)
        with fetched.response as response:
            assert response.content == b"done"
            assert response.url == server.url("/final?x=1")
    assert fetched.redirects == [{"url": server.url("/a"), "status": 301},
                                 {"url": server.url("/b"), "status": 308}]


def test_redirect_location_is_quoted_before_it_is_checked(servers):
    server = servers({"/a": redirect_to("/my file\\x"), "/my%20file%5Cx": lambda h: ok(h, b"quoted")})
    guard = UrlGuard(classify=only_port(server.port))
    with guarded_session(guard) as session:
        fetched = fetch(session, server.url("/a"), guard, timeout=TIMEOUT)
        with fetched.response as response:
            assert response.content == b"quoted"


def test_redirect_loop_stops(servers):
    server = servers({"/loop": redirect_to("/loop")})
    guard = UrlGuard(classify=only_port(server.port))
    with guarded_session(guard) as session, pytest.raises(UrlNotAllowed) as info:
        fetch(session, server.url("/loop"), guard, max_redirects=3, timeout=TIMEOUT)
    assert info.value.code == "TOO_MANY_REDIRECTS"
    assert len(server.requests) == 4


def test_one_resolution_per_connection_and_connect_goes_to_the_checked_address(servers, fake_dns):
    """DNS rebinding: the guard resolves once and connects to what it checked; nobody else
    resolves the name again (the getaddrinfo trap would fail the test)."""
    table, calls = fake_dns
    server = servers()
    table["rebind.test"] = ["127.0.0.1"]
    guard = UrlGuard(classify=only_port(server.port))
    with guarded_session(guard) as session:
        fetched = fetch(session, f"http://rebind.test:{server.port}/", guard, timeout=TIMEOUT)
        fetched.response.close()
    assert calls == ["rebind.test"]
    assert server.requests[0]["headers"]["Host"] == f"rebind.test:{server.port}"


def test_host_with_any_refused_address_is_refused(servers, fake_dns):
    table, _ = fake_dns
    server = servers()
    table["mixed.test"] = ["127.0.0.1", "10.0.0.1"]  # 10.0.0.1 is only classified, never dialled
    guard = UrlGuard(classify=only_port(server.port))
    with guarded_session(guard) as session, pytest.raises(UrlNotAllowed) as info:
        fetch(session, f"http://mixed.test:{server.port}/", guard, timeout=TIMEOUT)
    assert info.value.details["address"] == "10.0.0.1"
    assert server.requests == []


def test_environment_proxies_are_ignored(servers, monkeypatch):
    proxy = servers()
    server = servers()
    for name in ("HTTP_PROXY", "http_proxy", "ALL_PROXY"):
        monkeypatch.setenv(name, proxy.url())
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    guard = UrlGuard(allow_private=True)
    with guarded_session(guard) as session:
        fetch(session, server.url(), guard, timeout=TIMEOUT).response.close()
        with pytest.raises(RuntimeError):
            session.get(server.url(), proxies={"http": proxy.url()}, timeout=TIMEOUT)
    assert len(server.requests) == 1
    assert proxy.requests == []


def test_connection_refused_is_a_normal_requests_error():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    guard = UrlGuard(allow_private=True)
    with guarded_session(guard) as session, pytest.raises(requests.ConnectionError):
        session.get(f"http://127.0.0.1:{port}/", timeout=TIMEOUT)
