"""What the node says on /diagnostics: the core's typed status as one DiagnosticStatus (the ROS counterpart of
/health's body, http/routers/health.py). The node publishes it every DIAGNOSTICS_PERIOD_S while configured."""
from __future__ import annotations

from diagnostic_msgs.msg import DiagnosticStatus, KeyValue

from .core import CoreStatus

DIAGNOSTICS_PERIOD_S = 1.0


def speech_diagnostics(st: CoreStatus, node_name: str, lifecycle_state: str) -> DiagnosticStatus:
    """The core's status as one DiagnosticStatus: WARN with the reason on the fallback engine, without the fast path
    or after an error; the values flat (fast_path_warning, memory_state, rss_plus_device_mb, queue_depth, ...)."""
    level, message = DiagnosticStatus.OK, "ready"
    if st.using_fallback:
        level, message = DiagnosticStatus.WARN, f"using fallback engine: {st.fallback_reason}"
    elif st.engine.fast_path_warning:
        level, message = DiagnosticStatus.WARN, f"slow: {st.engine.fast_path_warning}"
    elif st.last_error:
        level, message = DiagnosticStatus.WARN, f"last error: {st.last_error}"
    values = {"lifecycle_state": lifecycle_state, **st.flat(), "voices": ", ".join(st.voices),
              "languages": ", ".join(st.engine.languages)}
    return DiagnosticStatus(level=level, name=f"{node_name}: speech", message=message, hardware_id=st.engine.device,
                            values=[KeyValue(key=k, value=str(v)) for k, v in values.items()])
