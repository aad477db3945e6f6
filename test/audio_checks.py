"""Checks on the audio a node published, shared by the ROS tests (no sleeps: ordering and stamps, not timing)."""
from __future__ import annotations

from typing import Optional

from ros_helpers import stamp_s, utterances

LEAD_S = 0.25   # parameter audio.realtime_lead_s (default)
CHUNK_S = 0.1   # parameter audio.chunk_ms (default)
CLOCK_TOL_S = 0.02  # the node takes its first stamp a moment before it measures its pacing clock


def now_s(client) -> float:
    """The test node's ROS time in seconds (the same system clock the node stamps its audio with)."""
    return client.node.get_clock().now().nanoseconds * 1e-9


def _seconds(msgs, sample_rate: int) -> float:
    return sum(len(m.audio.data) for m in msgs) / 2.0 / sample_rate


def assert_silent_after(client, n0: int, stopped_at: Optional[float], ns: str = "") -> None:
    """The utterance that starts at message `n0` was stopped (stop, cancel, interrupt) before `stopped_at`
    (None: before the next utterance's first chunk, for an interrupt).

    A chunk's header stamp is when it is meant to be heard; with audio.realtime the node publishes no chunk more
    than audio.realtime_lead_s ahead of that, and none after the stop. So a player that plays the stream in real time
    falls silent at most lead + one chunk after the stop: the stopped utterance's last chunk ends by then.
    Every chunk of it has arrived once the audio of a later request has (one writer's messages arrive in order)."""
    res = client.speak("Done.", ns=ns)
    assert res.success, res.message
    sr = res.sample_rate

    def later_arrived() -> bool:
        return any(abs(_seconds(g, sr) - res.duration) < 1e-3 for g in utterances(client.audio[n0:], sr)[1:])

    assert client.wait_until(later_arrived, 20), "the audio of the request after the stop did not arrive"
    groups = utterances(client.audio[n0:], sr)
    stopped = groups[0]
    if stopped_at is None:
        stopped_at = stamp_s(groups[1][0])
    last = stopped[-1]
    end = stamp_s(last) + len(last.audio.data) / 2.0 / sr
    assert end <= stopped_at + LEAD_S + CHUNK_S + CLOCK_TOL_S, \
        f"audio kept flowing after the stop: it ends {end - stopped_at:.3f} s after the stop"
