"""API key (constant-time compare) and request body limits, checked before any body is parsed."""
import hmac
from typing import Callable

from .errors import BodyTooLarge, error_response

MAX_JSON_BODY = 1 << 20           # 1 MiB: far above any valid request (4096 characters of text)
MULTIPART_OVERHEAD = 64 << 10     # boundaries and form fields around an uploaded file
UPLOAD_PATH = "/v1/audio/voices"
PUBLIC_PATHS = frozenset({"/", "/health", "/health/live", "/health/ready", "/docs", "/docs/oauth2-redirect",
                          "/openapi.json", "/favicon.ico"})
PUBLIC_PREFIXES = ("/static/",)


def is_public(path: str) -> bool:
    return path in PUBLIC_PATHS or path.startswith(PUBLIC_PREFIXES)


class AccessMiddleware:
    """ASGI middleware: 401 without the API key (where one is set), 413 for bodies over their limit."""

    def __init__(self, app, api_key: str, upload_limit: Callable[[], int]):
        self.app = app
        self.api_key = api_key.encode("utf-8")
        self.upload_limit = upload_limit

    def _authorized(self, scope) -> bool:
        for name, value in scope.get("headers", []):
            if name == b"authorization":
                scheme, _, token = value.partition(b" ")
                return scheme.lower() == b"bearer" and hmac.compare_digest(token.strip(), self.api_key)
        return False

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope.get("path", "")
        if self.api_key and scope.get("method") != "OPTIONS" and not is_public(path) and not self._authorized(scope):
            resp = error_response(401, "missing or wrong API key: send 'Authorization: Bearer <key>' "
                                       "(parameter http.api_key)", "authentication_error", None, "invalid_api_key",
                                  {"WWW-Authenticate": "Bearer"})
            await resp(scope, receive, send)
            return
        limit = self.upload_limit() + MULTIPART_OVERHEAD if path == UPLOAD_PATH else MAX_JSON_BODY
        for name, value in scope.get("headers", []):
            if name == b"content-length":
                try:
                    too_big = int(value) > limit
                except ValueError:
                    too_big = False
                if too_big:
                    resp = error_response(413, f"request body is larger than {limit} bytes"
                                          + (" (parameter http.max_upload_mb)" if limit != MAX_JSON_BODY else ""),
                                          code="request_too_large")
                    await resp(scope, receive, send)
                    return
        seen = 0

        async def limited_receive():
            nonlocal seen
            message = await receive()
            if message.get("type") == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise BodyTooLarge(limit)
            return message

        await self.app(scope, limited_receive, send)
