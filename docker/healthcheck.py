"""Container HEALTHCHECK: GET /health on the node's HTTP server (port from CHATTERBOX_HTTP_PORT, default 8004).

Healthy means the node is active and serving: the model is loaded, so the GPU memory it needs is taken. This is
the condition that dependent GPU services wait for (compose `depends_on: condition: service_healthy`).
"""
import os
import sys
import urllib.request

port = int(os.environ.get("CHATTERBOX_HTTP_PORT", "8004"))
try:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=4) as response:
        sys.exit(0 if response.status == 200 else 1)
except Exception as exc:  # connection refused while loading, HTTP errors, timeouts
    print(f"unhealthy: {exc}", file=sys.stderr)
    sys.exit(1)
