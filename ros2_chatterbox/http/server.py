"""uvicorn in a thread, owned by whoever starts it (the ROS node on activate, or `main()` without ROS).

`HttpServer.start()` binds the port itself first, so a port in use is a readable OSError at once rather than a log
line from a thread, and returns only when uvicorn is serving. `stop()` asks uvicorn to exit (in-flight streams get
a short grace period, then are cancelled, which cancels their jobs) and returns once the port is released.
uvicorn's signal handlers are off: the owner handles signals.

Without ROS: `python -m ros2_chatterbox.http [--params FILE] [--host H] [--port P]` (console script
`ros2-chatterbox-http`); the default parameter file is the package's config/params.yaml, wherever it is installed.
"""
from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import socket
import sys
import threading
import time
from dataclasses import replace
from typing import Any, Callable, Iterator, List, Optional

from ..settings import HttpSettings

log = logging.getLogger(__name__)

# Memory per connection is bounded, not the number of connections (an idle socket costs asyncio a few KiB): a request
# header larger than this is refused (h11 answers 400), bodies are bounded by access.py, and a header that does not
# arrive within http.header_timeout_s ends the connection (security.guarded_protocol).
MAX_HEADER_BYTES = 32 << 10
FD_HEADROOM = 256  # files the rest of the process may still open besides connections (model files, DDS, logs)


class _IntoPackageLog(logging.Handler):
    """uvicorn's own warnings and errors (logger `uvicorn.error`) take the package's one logging path: the node's
    ROS logger under ROS, stderr without (see ros_logging.py)."""

    def emit(self, record: logging.LogRecord) -> None:
        log.handle(record)


def _route_uvicorn_log() -> None:
    uvicorn_log = logging.getLogger("uvicorn.error")
    if not any(isinstance(h, _IntoPackageLog) for h in uvicorn_log.handlers):
        uvicorn_log.addHandler(_IntoPackageLog())
        uvicorn_log.propagate = False  # said once, through the package logger


def _open_files() -> int:
    try:
        return len(os.listdir("/proc/self/fd"))
    except OSError:  # not Linux: assume a busy process
        return 64


def connection_cap(wanted: int) -> int:
    """How many connections the server may hold open: `wanted` (http.max_connections), once the process may open
    that many files. Raises the soft open-file limit (RLIMIT_NOFILE, `ulimit -n`, often 1024) toward the hard one
    when needed; where even the hard limit is too low, returns fewer and says so (every connection past the limit
    would fail to be accepted, and with it every other file the process opens)."""
    try:
        import resource
    except ImportError:  # not Unix
        return wanted
    in_use = _open_files()
    need = wanted + in_use + FD_HEADROOM
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    unlimited = resource.RLIM_INFINITY
    if soft == unlimited or soft >= need:
        return wanted
    target = need if hard == unlimited else min(need, hard)
    if target > soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError) as exc:
            log.debug(f"HTTP: cannot raise the open-file limit to {target}: {exc}")
    if soft >= need:
        return wanted
    cap = max(2, soft - in_use - FD_HEADROOM)
    log.warning(f"HTTP: at most {cap} open connections instead of {wanted} (http.max_connections): this process "
                f"may open only {soft} files (ulimit -n; hard limit {hard}); raise it (systemd LimitNOFILE=, docker "
                f"--ulimit nofile=) to serve more at once")
    return cap


def _server_class():
    import uvicorn

    class ThreadServer(uvicorn.Server):
        """A uvicorn server that never touches signal handlers (they belong to the owning process)."""

        def install_signal_handlers(self) -> None:  # uvicorn < 0.29
            pass

        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:  # uvicorn >= 0.29 (0.54 here)
            yield

    return ThreadServer


class HttpServer:
    """The HTTP API of one SpeechCore, served by uvicorn on a background thread.

    HttpServer(core, settings, host=None, port=None)
      settings: HttpSettings, or a callable returning the current ones; http.host / http.port unless host/port
                are given (port 0 = any free port; `.port` tells which after start()).
    bind(): reserve the address now (optional; OSError when taken) so a program can fail before loading a model.
    start(timeout=10.0): bind (unless bound) and serve; returns when listening. OSError when the address cannot
                         be bound, RuntimeError when uvicorn fails to start.
    stop(timeout=5.0): stop serving; returns when the port is released (True) or the thread would not end (False).
    url, host, port, running.
    """

    def __init__(self, core: Any, settings: Any, host: Optional[str] = None, port: Optional[int] = None):
        self.core = core
        self.settings: Callable[[], HttpSettings] = settings if callable(settings) else (lambda: settings)
        first = self.settings()
        self.host = str(host if host is not None else first.host)
        self.port = int(port if port is not None else first.port)
        self.graceful_s = 2.0
        self._server = None
        self._thread: Optional[threading.Thread] = None
        self._sock: Optional[socket.socket] = None
        self._error: Optional[BaseException] = None
        self._api_key = ""

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive() and bool(self._server and self._server.started)

    def bind(self) -> None:
        """Reserve the address now (optional: start() binds when this was not called). Lets a program fail on a
        taken port before it spends time loading a model."""
        if self._sock is None:
            self._api_key = self._checked_api_key()
            self._sock = self._bind()

    def _checked_api_key(self) -> str:
        """The API key from parameters, key file or environment; RuntimeError when serving would be unsafe."""
        from . import security
        settings = self.settings()
        try:
            security.parse_allowed_hosts(settings.allowed_hosts)
            api_key = security.resolve_api_key(settings)
            warning = security.check_exposure(self.host, settings, api_key)
        except security.SecurityError as exc:
            raise RuntimeError(f"HTTP: {exc}") from None
        if warning:
            log.warning(f"HTTP: {warning}")
        if security.key_on_command_line(api_key):
            log.warning("HTTP: the API key is on this process's command line, where every user of the "
                                "machine can read it; use CHATTERBOX_API_KEY_FILE or http.api_key_file instead")
        return api_key

    def _bind(self) -> socket.socket:
        try:
            infos = socket.getaddrinfo(self.host, self.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        except socket.gaierror as exc:
            raise OSError(f"HTTP: cannot resolve http.host '{self.host}': {exc}") from None
        family, _, _, _, addr = infos[0]
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            # REUSEADDR only lets us rebind over TIME_WAIT leftovers; a live listener still makes bind fail.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(addr)
            sock.listen(128)
        except OSError as exc:
            sock.close()
            reason = "the port is already in use (another node or program?)" if exc.errno in (98, 48, 10048) \
                else exc.strerror or str(exc)
            raise OSError(exc.errno, f"HTTP: cannot listen on {self.host}:{self.port}: {reason}; "
                                     f"change http.port / http.host") from None
        self.port = sock.getsockname()[1]
        return sock

    def start(self, timeout: float = 10.0) -> None:
        if self.running:
            return
        import uvicorn
        # h11 on every machine: it bounds the header it buffers (httptools, when installed, does not)
        from uvicorn.protocols.http.h11_impl import H11Protocol

        from . import security
        from .app import create_app

        self.bind()
        key = self._api_key  # resolved from the parameters, a key file or the environment
        app = create_app(self.core, lambda: replace(self.settings(), api_key=key))
        first = self.settings()
        protocol = security.guarded_protocol(H11Protocol, first.header_timeout_s,
                                             connection_cap(first.max_connections))
        config = uvicorn.Config(app, log_config=None, log_level="warning", access_log=False, lifespan="off",
                                ws="none", http=protocol, timeout_graceful_shutdown=self.graceful_s,
                                h11_max_incomplete_event_size=MAX_HEADER_BYTES)
        self._server = _server_class()(config)
        _route_uvicorn_log()
        self._error = None
        self._thread = threading.Thread(target=self._run, name="http-server", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                reason = self._error or "timed out"
                self.stop(timeout=2.0)
                raise RuntimeError(f"HTTP server did not start on {self.url}: {reason}")
            time.sleep(0.01)
        log.info(f"HTTP: serving on {self.url} (OpenAI API at {self.url}/v1, web page at {self.url}/)")

    def _run(self) -> None:
        try:
            self._server.run(sockets=[self._sock])
        except BaseException as exc:  # noqa: BLE001 - reported by start()/stop(); SystemExit from uvicorn too
            self._error = exc

    def stop(self, timeout: float = 5.0) -> bool:
        """Stop serving and release the port. Returns False when the server thread did not end in time."""
        ended = True
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                if self._server is not None:
                    self._server.force_exit = True
                self._thread.join(2.0)
            ended = not self._thread.is_alive()
            if not ended:
                log.error("HTTP: the server thread did not stop in time")
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.close()
            self._sock = None
        self._thread = None
        self._server = None
        return ended


def main(argv: Optional[List[str]] = None) -> int:
    """The HTTP API without ROS, on the same engine core and parameter file as the node."""
    from ..core import EngineLoadError, SpeechCore
    from ..params_file import load_params_file
    from ..paths import default_params_file
    from ..settings import ConfigError

    default_params = default_params_file()
    parser = argparse.ArgumentParser(prog="ros2-chatterbox-http",
                                     description="Serve the ros2_chatterbox HTTP API (OpenAI-compatible speech, "
                                                 "web page) without ROS.")
    parser.add_argument("--params", default=str(default_params or ""),
                        help="ROS parameter file (tts_node: ros__parameters: ...); default: the package's "
                             f"config/params.yaml ({default_params or 'not found: built-in defaults'})")
    parser.add_argument("--host", help="bind address (parameter http.host)")
    parser.add_argument("--port", type=int, help="port (parameter http.port)")
    parser.add_argument("--api-key-file", help="file holding the bearer token required on every endpoint but "
                                               "/health (parameter http.api_key_file; or set CHATTERBOX_API_KEY)")
    parser.add_argument("--api-key", help=argparse.SUPPRESS)  # refused below: it would show in the process list
    parser.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="[%(levelname)s] %(name)s: %(message)s")
    if args.api_key is not None:
        log.error("--api-key would show the key to every user in the process list: put it in a file "
                     "(--api-key-file FILE, or CHATTERBOX_API_KEY_FILE) or in CHATTERBOX_API_KEY")
        return 2
    try:
        settings = load_params_file(args.params or None)
        settings = settings.with_values({name: value for name, value in (
            ("http.host", args.host), ("http.port", args.port), ("http.api_key_file", args.api_key_file))
            if value is not None})
    except (OSError, ConfigError, ValueError) as exc:
        log.error("cannot read parameters: %s", exc)
        return 2
    core = SpeechCore(settings)
    server = HttpServer(core, settings.http)
    try:
        server.bind()  # a taken port or an unsafe bind fails now, not after loading the model
    except (OSError, RuntimeError) as exc:
        log.error("%s", exc)
        return 1
    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        try:
            core.load()
        except EngineLoadError as exc:
            log.error("the speech engine could not load: %s", exc)
            return 1
        if stop.is_set():  # Ctrl-C while the model was loading
            return 0
        try:
            server.start()
        except (OSError, RuntimeError) as exc:
            log.error("%s", exc)
            return 1
        log.info("engine %s at %d Hz; Ctrl-C stops", core.engine_name, core.sample_rate)
        while not stop.wait(0.5):
            pass
        log.info("stopping")
        return 0
    finally:
        server.stop()
        core.unload("the HTTP server is stopping")
        for sig, handler in previous.items():
            signal.signal(sig, handler)


if __name__ == "__main__":
    sys.exit(main())
