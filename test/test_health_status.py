"""/health's status word from the core's status: a fallback engine and a fast-path fallback are both 'degraded'."""
from ros2_chatterbox.http.routers.health import health_body


class StubCore:
    engine_name = "chatterbox_turbo"

    def __init__(self, **status):
        self._status = dict(accepting=True, ready=True, using_fallback=False, fast_path_warning="", queue_depth=0,
                            queue_max=16, speaking=False, device="cuda:0", model="chatterbox-turbo", last_error="")
        self._status.update(status)

    def status(self):
        return dict(self._status)


def test_fast_engine_is_ok():
    body = health_body(StubCore())
    assert body["status"] == "ok" and body["ready"] and body["fast_path_warning"] == ""


def test_engine_without_its_fast_path_is_degraded_and_says_why():
    why = "greedy equality check against upstream failed; using the reference loop"
    body = health_body(StubCore(fast_path_warning=why))
    assert body["status"] == "degraded" and body["fast_path_warning"] == why
    assert body["ready"]  # it still speaks with the configured engine: readiness stays, the warning is visible


def test_fallback_engine_is_degraded_and_not_ready():
    body = health_body(StubCore(using_fallback=True, ready=False))
    assert body["status"] == "degraded" and not body["ready"]


def test_not_accepting_is_unavailable():
    assert health_body(StubCore(accepting=False, ready=False))["status"] == "unavailable"
