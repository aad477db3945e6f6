"""What no web page may do with the HTTP API, and what no slow client may do to the server.

Binding to 127.0.0.1 keeps the network out, not the pages that a browser on the same machine opens (a robot's kiosk
browser, the operator's laptop running the node). Those pages can send requests to the API; this module decides
which of them are served:

- Host allow-list (DNS rebinding): a page from `evil.example` whose name later resolves to 127.0.0.1 sends
  `Host: evil.example`. Served: IP literals (a page at an IP address is that address's own origin), `localhost`,
  and the names in `http.allowed_hosts`. Anything else is a 400 before any handler runs.
- Origin policy for every state-changing request (anything but GET/HEAD/OPTIONS: speech, uploads, deletes):
  requests without `Origin` (curl, SDKs, ROS bridges) and from the page itself pass; any other origin, `null`
  included, and any browser request that says it is cross-site (`Sec-Fetch-Site`), is a 403.
- Content types: a request body must be JSON (`application/json`, `...+json`), or multipart on the upload
  endpoints, whatever the FastAPI version: a 415 otherwise (a `no-cors` fetch can only send text/plain, urlencoded
  or multipart bodies).
- Concurrent uploads are bounded (503 with Retry-After beyond), before their bodies are read.
- Headers on every response: a Content-Security-Policy that allows only the page's own assets and forbids framing,
  `X-Content-Type-Options: nosniff`, `Referrer-Policy: no-referrer`, and cross-origin isolation of the responses.
- API keys come from `http.api_key`, `http.api_key_file` or the environment (CHATTERBOX_API_KEY,
  CHATTERBOX_API_KEY_FILE), so that they need not appear on a command line; binding beyond loopback without a key
  refuses to start unless `http.allow_unauthenticated_lan` is true.
- Slow clients: `guarded_protocol()` closes a connection whose request header has not arrived within
  `http.header_timeout_s` and answers 503 to connections beyond `http.max_connections`.

Everything here is plain ASGI and plain functions (no FastAPI), unit-tested without a server.
"""
from __future__ import annotations

import asyncio
import ipaddress
import json
import os
from pathlib import Path
from typing import Any, Awaitable, Callable, Dict, Iterable, List, Mapping, Optional, Tuple, Union

from ..settings import HttpSettings, Settings

API_KEY_ENV = "CHATTERBOX_API_KEY"
API_KEY_FILE_ENV = "CHATTERBOX_API_KEY_FILE"
LOOPBACK_NAMES = frozenset({"localhost", "ip6-localhost", "ip6-loopback"})
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
FORM_PATHS = frozenset({"/v1/audio/voices"})  # the endpoints that take multipart/form-data (voice uploads)
# Fetch metadata a browser attaches; only these may change state (absent: not a browser, or an old one).
BROWSER_SITES_ALLOWED = frozenset({"same-origin", "none"})

CONTENT_SECURITY_POLICY = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
                           "media-src 'self' blob:; connect-src 'self'; form-action 'self'; base-uri 'none'; "
                           "frame-ancestors 'none'")
SECURITY_HEADERS: Tuple[Tuple[bytes, bytes], ...] = (
    (b"content-security-policy", CONTENT_SECURITY_POLICY.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),                        # framing, for browsers without frame-ancestors
    (b"cross-origin-opener-policy", b"same-origin"),
    (b"cross-origin-resource-policy", b"same-origin"),   # no <audio src> or <img> of the API from other sites
)

# Documented in /openapi.json for every operation (see document_responses).
REFUSALS = {400: "Host not allowed (see http.allowed_hosts), or invalid request",
            403: "Cross-origin request refused (a state-changing request from another web origin)",
            415: "The body must be JSON (Content-Type: application/json)",
            503: "Too many concurrent uploads or connections (see Retry-After)"}


class SecurityError(ValueError):
    """A security setting cannot be honoured (unreadable key file, unauthenticated LAN bind): do not serve."""


HttpSettingsSource = Union[HttpSettings, Settings, Callable[[], HttpSettings], None]


def _http(settings: HttpSettingsSource) -> HttpSettings:
    """The HTTP settings from HttpSettings, the node's whole Settings, a callable returning the current
    HttpSettings, or None (the defaults)."""
    if callable(settings):
        settings = settings()
    if settings is None:
        return HttpSettings()
    if isinstance(settings, Settings):
        return settings.http
    if not isinstance(settings, HttpSettings):
        raise TypeError(f"expected HttpSettings, not {type(settings).__name__}")
    return settings


# -- Host and Origin ------------------------------------------------------------------------------------------------
def split_host(value: str) -> Tuple[str, Optional[int]]:
    """'Name:8004' -> ('name', 8004); '[::1]:80' -> ('::1', 80); 'name' -> ('name', None). ValueError if malformed."""
    value = value.strip().lower()
    if value.startswith("["):
        end = value.find("]")
        if end < 0:
            raise ValueError(f"malformed host {value!r}")
        name, rest = value[1:end], value[end + 1:]
        ipaddress.IPv6Address(name)
        if rest and not rest.startswith(":"):
            raise ValueError(f"malformed host {value!r}")
        port_text = rest[1:] if rest else ""
    else:
        name, sep, port_text = value.partition(":")
        if sep and not port_text:
            raise ValueError(f"malformed host {value!r}")
    if not name or any(c in name for c in "/@\\ ?#"):
        raise ValueError(f"malformed host {value!r}")
    if port_text:
        if not port_text.isdigit() or not 0 < int(port_text) < 65536:
            raise ValueError(f"malformed port in {value!r}")
        return name, int(port_text)
    return name, None


def parse_allowed_hosts(value: Any) -> Tuple[Tuple[str, Optional[int]], ...]:
    """`http.allowed_hosts` ('robot.local, robot.local:8080, 192.168.1.20') as (name, port or None) pairs."""
    items = value if isinstance(value, (list, tuple)) else str(value or "").replace(";", ",").split(",")
    out = []
    for item in items:
        item = str(item).strip()
        if item:
            try:
                out.append(split_host(item))
            except ValueError as exc:
                raise SecurityError(f"http.allowed_hosts: {exc}") from None
    return tuple(out)


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
        return True
    except ValueError:
        return False


def host_allowed(host: Optional[str], allowed: Iterable[Tuple[str, Optional[int]]] = ()) -> bool:
    """Whether a request's Host header names this server as a browser could reach it without DNS rebinding.

    IP literals and loopback names pass on any port (port forwarding changes the port, not the defence: a rebinding
    page needs a DNS name of its own). Names from `http.allowed_hosts` pass on the port given there, or on any.
    """
    if not host:
        return False
    try:
        name, port = split_host(host)
    except ValueError:
        return False
    if name in LOOPBACK_NAMES or _is_ip(name):
        return True
    return any(name == a_name and (a_port is None or a_port == port) for a_name, a_port in allowed)


def origin_allowed(origin: Optional[str], host: Optional[str]) -> bool:
    """A state-changing request's Origin: absent (not a browser page) or the page's own origin (same host:port)."""
    if origin is None:
        return True
    scheme, sep, netloc = origin.strip().lower().partition("://")
    if not sep or scheme not in ("http", "https") or not netloc or "/" in netloc or not host:
        return False  # 'null' (sandboxed frames, file: pages, redirects) and anything unparsable
    try:
        return split_host(netloc) == split_host(host)
    except ValueError:
        return False


def is_json(content_type: Optional[str]) -> bool:
    media = (content_type or "").split(";", 1)[0].strip().lower()
    return media == "application/json" or (media.startswith("application/") and media.endswith("+json"))


def is_multipart(content_type: Optional[str]) -> bool:
    return (content_type or "").split(";", 1)[0].strip().lower() == "multipart/form-data"


# -- API keys and exposure --------------------------------------------------------------------------------------
def _read_key_file(path: str, source: str) -> str:
    try:
        key = Path(path).expanduser().read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise SecurityError(f"cannot read the API key file {path} ({source}): {exc}") from None
    if not key:
        raise SecurityError(f"the API key file {path} ({source}) is empty")
    return key


def resolve_api_key(settings: HttpSettingsSource, environ: Optional[Mapping[str, str]] = None) -> str:
    """The API key ('' = none), from the first of: http.api_key, http.api_key_file, $CHATTERBOX_API_KEY,
    $CHATTERBOX_API_KEY_FILE. SecurityError when a named key file cannot be read or is empty."""
    env = os.environ if environ is None else environ
    http = _http(settings)
    key = http.api_key.strip()
    if key:
        return key
    path = http.api_key_file.strip()
    if path:
        return _read_key_file(path, "parameter http.api_key_file")
    key = str(env.get(API_KEY_ENV, "") or "").strip()
    if key:
        return key
    path = str(env.get(API_KEY_FILE_ENV, "") or "").strip()
    if path:
        return _read_key_file(path, f"environment variable {API_KEY_FILE_ENV}")
    return ""


def key_on_command_line(key: str, cmdline_path: str = "/proc/self/cmdline") -> bool:
    """Whether the key appears in this process's arguments (visible to every user in the process list)."""
    if not key:
        return False
    try:
        with open(cmdline_path, "rb") as f:
            return key.encode() in f.read()
    except OSError:
        return False


def is_loopback(host: str) -> bool:
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_exposure(host: str, settings: HttpSettingsSource, api_key: str) -> Optional[str]:
    """Refuse (SecurityError) to serve beyond loopback without a key unless http.allow_unauthenticated_lan is
    true; returns a warning to log when serving anyway, else None."""
    if is_loopback(host) or api_key:
        return None
    if not _http(settings).allow_unauthenticated_lan:
        raise SecurityError(
            f"refusing to listen on {host} (beyond loopback) without an API key: anyone who can reach this host "
            f"could make the robot speak and replace its voices. Set an API key ({API_KEY_ENV} or "
            f"{API_KEY_FILE_ENV} in the environment, or the parameter http.api_key_file), bind http.host to "
            f"127.0.0.1, or set http.allow_unauthenticated_lan: true to serve the network without one")
    return (f"listening on {host} beyond loopback WITHOUT an API key (http.allow_unauthenticated_lan is true): "
            f"anyone who can reach this host can make the robot speak")


# -- ASGI middleware --------------------------------------------------------------------------------------------
def _error_messages(status: int, message: str, code: str,
                    headers: Iterable[Tuple[bytes, bytes]] = ()) -> List[Dict[str, Any]]:
    """The ASGI messages of an OpenAI-shaped error answer."""
    body = json.dumps({"error": {"message": message, "type": "invalid_request_error" if status < 500
                                 else "server_error", "param": None, "code": code}}).encode()
    return [{"type": "http.response.start", "status": status,
             "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                         *headers]},
            {"type": "http.response.body", "body": body}]


class SecurityMiddleware:
    """Host allow-list, Origin policy, content types, upload bound and hardening headers, around an ASGI app.

    SecurityMiddleware(app, settings): settings is HttpSettings (or a callable returning them; None: defaults);
    http.allowed_hosts and http.max_concurrent_uploads are read once. Put it outermost (see install), so that every
    answer, refusals too, gets the headers.
    """

    def __init__(self, app: Callable[..., Awaitable[None]], settings: HttpSettingsSource = None,
                 form_paths: Iterable[str] = FORM_PATHS):
        self.app = app
        http = _http(settings)
        self.allowed = parse_allowed_hosts(http.allowed_hosts)
        self.max_uploads = http.max_concurrent_uploads
        self.form_paths = frozenset(form_paths)
        self.uploads = 0

    def refusal(self, scope: Dict[str, Any]) -> Optional[Tuple[int, str, str]]:
        """(status, message, code) when the request must not reach the app, else None."""
        headers: Dict[bytes, bytes] = {}
        for name, value in scope.get("headers", []):
            headers.setdefault(name, value)
        host = headers.get(b"host", b"").decode("latin-1") or None
        if not host_allowed(host, self.allowed):
            return (400, f"Host {host!r} is not served here: use http://localhost:PORT/ or an IP address, or add "
                         f"the name to the parameter http.allowed_hosts", "host_not_allowed")
        if scope.get("method", "GET") in SAFE_METHODS:
            return None
        origin = headers.get(b"origin")
        if not origin_allowed(origin.decode("latin-1") if origin is not None else None, host):
            return (403, "cross-origin request refused: state-changing requests are accepted from this server's own "
                         "page or from clients that send no Origin (curl, SDKs)", "cross_origin_refused")
        site = headers.get(b"sec-fetch-site")
        if site is not None and site.decode("latin-1").lower() not in BROWSER_SITES_ALLOWED:
            return (403, "cross-site request refused (Sec-Fetch-Site)", "cross_origin_refused")
        has_body = b"transfer-encoding" in headers or headers.get(b"content-length", b"0").strip() not in (b"", b"0")
        content_type = headers.get(b"content-type", b"").decode("latin-1")
        if scope.get("path", "") in self.form_paths:
            if has_body and not is_multipart(content_type):
                return 415, "send the upload as multipart/form-data", "unsupported_media_type"
        elif has_body and not is_json(content_type):
            return (415, f"the body must be JSON with 'Content-Type: application/json' (got "
                         f"{content_type or 'none'!r})", "unsupported_media_type")
        return None

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message):
            if message["type"] == "http.response.start":
                present = {name.lower() for name, _ in message.get("headers", [])}
                message = dict(message, headers=[*message.get("headers", []),
                                                 *(h for h in SECURITY_HEADERS if h[0] not in present)])
            await send(message)

        refused = self.refusal(scope)
        if refused is not None:
            for message in _error_messages(*refused):
                await send_with_headers(message)
            return
        upload = scope.get("method") == "POST" and scope.get("path", "") in self.form_paths
        if upload and self.uploads >= self.max_uploads:
            for message in _error_messages(503, f"{self.max_uploads} voice uploads are already in progress; retry "
                                                f"shortly (parameter http.max_concurrent_uploads)", "busy",
                                           [(b"retry-after", b"2")]):
                await send_with_headers(message)
            return
        if upload:
            self.uploads += 1  # the event loop is single-threaded: no lock needed
        try:
            await self.app(scope, receive, send_with_headers)
        finally:
            if upload:
                self.uploads -= 1


def install(app: Any, settings: HttpSettingsSource = None) -> None:
    """Wrap a Starlette/FastAPI app's whole middleware stack in SecurityMiddleware: outside its error handler too,
    so that refusals come before anything else (the API key check included) and every answer, 500s included,
    carries the headers. `settings`: HttpSettings or a callable returning the current ones."""
    build = app.build_middleware_stack
    app.build_middleware_stack = lambda: SecurityMiddleware(build(), settings)


def document_responses(schema: Dict[str, Any], error_ref: str = "#/components/schemas/ErrorResponse") -> None:
    """Add the refusals of SecurityMiddleware to every operation of an OpenAPI schema."""
    for path, ops in schema.get("paths", {}).items():
        for method, op in ops.items():
            if not isinstance(op, dict):
                continue
            statuses = [400]
            if method.upper() not in SAFE_METHODS:
                statuses += [403, 415]
                if path in FORM_PATHS:
                    statuses.append(503)
            for status in statuses:
                op.setdefault("responses", {}).setdefault(str(status), {
                    "description": REFUSALS[status],
                    "content": {"application/json": {"schema": {"$ref": error_ref}}}})


# -- uvicorn protocol: slow clients ---------------------------------------------------------------------------------
_BUSY_BODY = json.dumps({"error": {"message": "too many open connections (parameter http.max_connections)",
                                   "type": "server_error", "param": None, "code": "busy"}}).encode()
BUSY_RESPONSE = (b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nretry-after: 1\r\n"
                 b"connection: close\r\ncontent-length: " + str(len(_BUSY_BODY)).encode() + b"\r\n\r\n" + _BUSY_BODY)


def guarded_protocol(base: type, header_timeout_s: float, max_connections: int) -> type:
    """A subclass of a uvicorn HTTP protocol class (h11 or httptools) that bounds what slow clients can hold.

    - A connection must deliver each request's complete header within `header_timeout_s` of its first byte (and
      of the connection's start): otherwise it is closed. uvicorn itself waits forever for a header.
    - Connections beyond `max_connections` are answered 503 (Retry-After) and closed at once.
    """
    class GuardedProtocol(base):  # type: ignore[misc, valid-type]
        _header_timer: Optional[asyncio.TimerHandle] = None
        _busy = False

        def connection_made(self, transport):
            super().connection_made(transport)
            self._arm_header_timer()
            if len(self.connections) > max_connections:
                # Answer, then half-close: closing outright with the request unread would reset the connection
                # and lose the answer. The client's request is discarded; the header timer ends it for sure.
                self._busy = True
                transport.write(BUSY_RESPONSE)
                if transport.can_write_eof():
                    transport.write_eof()

        def data_received(self, data: bytes) -> None:
            if self._busy:
                return
            super().data_received(data)
            if self._waiting_for_header():
                self._arm_header_timer()
            elif self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None

        def connection_lost(self, exc):
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None
            super().connection_lost(exc)

        def _waiting_for_header(self) -> bool:
            cycle = getattr(self, "cycle", None)
            return cycle is None or bool(getattr(cycle, "response_complete", False))

        def _arm_header_timer(self) -> None:
            if self._header_timer is None and not self.transport.is_closing():
                self._header_timer = self.loop.call_later(header_timeout_s, self._header_timed_out)

        def _header_timed_out(self) -> None:
            self._header_timer = None
            # Still between requests: the header did not arrive in time (an idle keep-alive connection ends
            # here too, which uvicorn's keep-alive timeout would do anyway).
            if self._waiting_for_header() and not self.transport.is_closing():
                self.transport.close()

    GuardedProtocol.__name__ = f"Guarded{base.__name__}"
    return GuardedProtocol
