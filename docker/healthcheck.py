"""Container HEALTHCHECK: GET /health/ready on the node's HTTP server (port from CHATTERBOX_HTTP_PORT, default 8004).

Healthy means ready: the node is active and the configured engine is loaded (so the GPU memory it needs is taken),
not the fallback engine. That is the condition dependent GPU services wait for (compose `depends_on: condition:
service_healthy`). Liveness alone (`/health`) would be healthy on the Piper fallback too, and let them start early.
"""
import json
import os
import sys
import urllib.error
import urllib.request

port = int(os.environ.get("CHATTERBOX_HTTP_PORT", "8004"))
try:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/health/ready", timeout=4) as response:
        sys.exit(0 if response.status == 200 else 1)
except urllib.error.HTTPError as exc:  # 503: up, but not ready (loading, or serving on the fallback engine)
    try:
        body = json.loads(exc.read() or b"{}")
    except ValueError:
        body = {}
    reason = "on the fallback engine" if body.get("using_fallback") else "the engine is not loaded"
    print(f"not ready ({exc.code}): {reason}; last error: {body.get('last_error') or '-'}", file=sys.stderr)
    sys.exit(1)
except Exception as exc:  # connection refused while the node starts or is inactive, timeouts
    print(f"unhealthy: {exc}", file=sys.stderr)
    sys.exit(1)
