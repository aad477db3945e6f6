"""What the doors make of the core's typed status: /health's status word (a fallback engine and a fast-path fallback
are both 'degraded'), /api/model-info's keys, and the /diagnostics values (the fast-path warning and the memory
headline figures under the names users read)."""
from ros2_chatterbox.http.routers.health import health_body
from ros2_chatterbox.status import CoreStatus, EngineStatus, FastPathStatus, MemoryStatus

from optional import optional_import, requires

ros_diagnostics = optional_import("ros2_chatterbox.ros_diagnostics")

ACTIVE = FastPathStatus(requested=True, active=True, cuda_graphs=True, reason="active (greedy check: 64 tokens equal)")
MEMORY = MemoryStatus(state="taken at configure", reserved_mb=5086.0, rss_plus_device_mb=9000.0,
                      device_allocs_since_configure=0, host_sync="blocking_sync")


def status(fast_path=ACTIVE, **core) -> CoreStatus:
    engine = EngineStatus(engine="chatterbox_turbo", sample_rate=24000, loaded=True, can_clone=True, device="cuda:0",
                          dtype="float16", model="chatterbox-turbo", fast_path=fast_path, memory=MEMORY)
    values = dict(accepting=True, ready=True, queue_depth=0, queue_max=16, voices=("alice", "bob"))
    values.update(core)
    return CoreStatus(engine=engine, **values)


class StubCore:
    engine_name = "chatterbox_turbo"

    def __init__(self, st: CoreStatus):
        self._status = st

    def status(self) -> CoreStatus:
        return self._status


def test_fast_engine_is_ok():
    body = health_body(StubCore(status()))
    assert body["status"] == "ok" and body["ready"] and body["fast_path_warning"] == ""
    assert body["device"] == "cuda:0" and body["model"] == "chatterbox-turbo" and body["engine"] == "chatterbox_turbo"


def test_engine_without_its_fast_path_is_degraded_and_says_why():
    why = "greedy equality check against upstream failed; using the reference loop"
    body = health_body(StubCore(status(FastPathStatus(requested=True, fallback=True, reason=why))))
    assert body["status"] == "degraded" and body["fast_path_warning"] == why
    assert body["ready"]  # it still speaks with the configured engine: readiness stays, the warning is visible


def test_fast_path_switched_off_on_purpose_is_no_warning():
    body = health_body(StubCore(status(FastPathStatus(requested=False, reason="off (parameter fast_path)"))))
    assert body["status"] == "ok" and body["fast_path_warning"] == ""


def test_fallback_engine_is_degraded_and_not_ready():
    body = health_body(StubCore(status(using_fallback=True, ready=False)))
    assert body["status"] == "degraded" and not body["ready"]


def test_not_accepting_is_unavailable():
    assert health_body(StubCore(status(accepting=False, ready=False)))["status"] == "unavailable"


def test_model_info_keeps_the_keys_users_read():
    """/api/model-info: the engine's values at the top beside the core's, the sections as objects, and the flat
    names the fast path and memory have always had there."""
    info = status(FastPathStatus(requested=True, fallback=True, reason="failed to start")).as_dict()
    assert info["engine"] == "chatterbox_turbo" and info["device"] == "cuda:0" and info["queue_max"] == 16
    assert info["fast_path"]["fallback"] and info["fast_path"]["warning"] == "failed to start"
    assert info["fast_path_warning"] == "failed to start" and info["fast_path_state"] == "failed to start"
    assert info["fast_path_active"] is False
    assert info["memory"]["reserved_mb"] == 5086.0 and info["memory_state"] == "taken at configure"
    assert info["rss_plus_device_mb"] == 9000.0 and info["device_allocs_since_configure"] == 0
    assert info["voices"] == ["alice", "bob"]


@requires("ros2_chatterbox.ros_diagnostics")
def test_diagnostics_carry_the_fast_path_warning_and_the_memory_headline():
    why = "active WITHOUT CUDA graphs (capture failed: unknown): several times slower than it should be"
    st = status(FastPathStatus(requested=True, active=True, fallback=True, reason=why))
    diag = ros_diagnostics.speech_diagnostics(st, "tts_node", "active")
    values = {kv.key: kv.value for kv in diag.values}
    assert diag.level == ros_diagnostics.DiagnosticStatus.WARN and diag.message == f"slow: {why}"
    assert diag.name == "tts_node: speech" and diag.hardware_id == "cuda:0"
    assert values["fast_path_warning"] == why and values["fast_path_state"] == why
    assert values["fast_path_active"] == "True"
    assert values["memory_state"] == "taken at configure" and values["rss_plus_device_mb"] == "9000.0"
    assert values["device_allocs_since_configure"] == "0"
    assert values["lifecycle_state"] == "active" and values["voices"] == "alice, bob"
    assert values["engine"] == "chatterbox_turbo" and values["queue_depth"] == "0"
    assert all("{" not in v for v in values.values())  # one level: no section printed as a dict

    fine = ros_diagnostics.speech_diagnostics(status(), "tts_node", "active")
    assert fine.level == ros_diagnostics.DiagnosticStatus.OK and fine.message == "ready"
    assert {kv.key: kv.value for kv in fine.values}["fast_path_warning"] == ""


def test_s3gen_graphs_that_fell_back_make_the_engine_degraded_and_say_so():
    why = "capture failed (RuntimeError: operation not permitted when stream is capturing); decoding eagerly"
    engine = EngineStatus(engine="chatterbox_turbo", loaded=True, device="cuda:0", fast_path=ACTIVE,
                          s3gen_graphs=FastPathStatus(requested=True, fallback=True, reason=why), memory=MEMORY)
    st = CoreStatus(engine=engine, accepting=True, ready=True)
    body = health_body(StubCore(st))
    assert body["status"] == "degraded" and body["fast_path_warning"] == f"S3Gen: {why}"
    flat = st.flat()
    assert flat["s3gen_graphs_warning"] == why and flat["s3gen_graphs_fallback"] is True
    assert st.as_dict()["s3gen_graphs"]["reason"] == why
    # off on purpose (or on the CPU) is no warning
    off = EngineStatus(engine="chatterbox_turbo", fast_path=ACTIVE,
                       s3gen_graphs=FastPathStatus(requested=True, reason="off: CUDA only (the CPU decodes eagerly)"))
    assert health_body(StubCore(CoreStatus(engine=off, accepting=True, ready=True)))["status"] == "ok"
