"""The node's ROS parameters, drawn from the settings table (settings.py).

Each setting is declared as a parameter whose descriptor says what it does, its range and when it applies
(`ros2 param describe`); the parameters are read back as typed `Settings`; and a change follows one rule: its value
is checked, and a configure-time setting is refused unless the node is unconfigured (it applies at the next
configure). Handing an accepted change to the core and the audio outputs is the node's part (tts_node.py).
"""
from __future__ import annotations

from typing import Any, Callable, Iterable

from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor

from .settings import CONFIGURE, RUNTIME, SETTINGS, SETTINGS_BY_NAME, ConfigError, Setting, Settings, check, \
    describe


def descriptor(s: Setting) -> ParameterDescriptor:
    note = {CONFIGURE: " Read at configure: set it while unconfigured (or after cleanup), then configure.",
            RUNTIME: ""}.get(s.stage, " Read when the node starts: set it in the parameter file.")
    d = ParameterDescriptor(description=describe(s) + note, read_only=s.read_only)
    if s.min is not None and s.max is not None and not isinstance(s.default, bool):
        if isinstance(s.default, int):
            d.integer_range = [IntegerRange(from_value=int(s.min), to_value=int(s.max), step=0)]
        elif isinstance(s.default, float):
            d.floating_point_range = [FloatingPointRange(from_value=float(s.min), to_value=float(s.max), step=0.0)]
    return d


def declare_parameters(node: Any) -> None:
    """Every setting as a parameter of `node`, at its default (a parameter file or --ros-args overrides it)."""
    for s in SETTINGS:
        node.declare_parameter(s.name, s.default, descriptor(s))


def read_settings(node: Any, lenient: bool = False) -> Settings:
    """The parameters as settings; raises ConfigError. lenient: an invalid value is logged and left at its
    default (at start, so that the node comes up and configure reports it)."""
    values = {s.name: node.get_parameter(s.name).value for s in SETTINGS}
    if lenient:
        for name, value in list(values.items()):
            try:
                check(name, value)
            except ConfigError as exc:
                node.get_logger().error(f"invalid parameter (configure will refuse it): {exc}")
                del values[name]
    return Settings.from_values(values)


def changed_settings(params: Iterable[Any], current: Settings, state_label: Callable[[], str]) -> Settings:
    """`current` with the parameter changes `params` applied (parameters that are no setting are left alone).
    Raises ConfigError with the reason when a change is refused: an invalid value, or a configure-time setting while
    the node (its lifecycle state: `state_label()`) is not unconfigured."""
    changes = {}
    for p in params:
        s = SETTINGS_BY_NAME.get(p.name)
        if s is None:
            continue
        changes[p.name] = check(p.name, p.value)
        if s.stage == CONFIGURE:
            state = state_label()
            if state != "unconfigured":
                raise ConfigError(
                    f"{p.name} is read at configure and the node is {state}: "
                    + ("deactivate, then cleanup" if state == "active" else "cleanup")
                    + f", set {p.name}, then configure (it applies at the next configure)")
    return current.with_values(changes)
