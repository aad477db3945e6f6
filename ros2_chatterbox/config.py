"""Every setting of the node, in one table: name, default, description, range.

The ROS node declares one parameter per entry (with a descriptor built from it); the HTTP server that runs
without ROS reads the same names from the same `config/params.yaml`. Nothing here imports rclpy.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import yaml


@dataclass(frozen=True)
class Setting:
    name: str
    default: Any
    description: str
    read_only: bool = False  # True: only read on configure (changing it needs cleanup + configure)
    min: Optional[float] = None
    max: Optional[float] = None
    choices: Tuple[str, ...] = ()


def _s(*args, **kwargs) -> Setting:
    return Setting(*args, **kwargs)


SETTINGS: List[Setting] = [
    # engine and model
    _s("engine", "piper", "Speech engine: chatterbox_turbo (cloned voices, needs model weights) or piper "
       "(embedded default voice, no download).", read_only=True, choices=("chatterbox_turbo", "piper")),
    _s("fallback_engine", "", "Engine to use when `engine` cannot load ('' = none: configure fails).",
       read_only=True, choices=("", "chatterbox_turbo", "piper")),
    _s("model_dir", "", "Local Chatterbox Turbo folder in the hub snapshot layout (ve.safetensors, "
       "t3_turbo_v1.safetensors, s3gen_meanflow.safetensors, tokenizer files, optional conds.pt). "
       "'' = download `hub_repo` into `hub_cache_dir`.", read_only=True),
    _s("hub_repo", "ResembleAI/chatterbox-turbo", "Hugging Face repository to download when model_dir is empty "
       "(token from HF_TOKEN).", read_only=True),
    _s("hub_cache_dir", "", "Cache folder for hub downloads ('' = the Hugging Face default).", read_only=True),
    _s("hub_timeout_s", 30.0, "Seconds before an unreachable hub fails configure.", read_only=True,
       min=1.0, max=3600.0),
    _s("device", "auto", "auto (CUDA when available), cuda, cuda:N or cpu.", read_only=True),
    _s("dtype", "auto", "auto (float16 on CUDA, float32 on CPU), float16, bfloat16 or float32.", read_only=True,
       choices=("auto", "float16", "bfloat16", "float32")),
    _s("cpu_threads", 0, "Torch CPU threads for the chatterbox engine (0 = torch's default). On a robot whose CPU "
       "is busy with other nodes, 1-2 threads are often faster than many.", read_only=True, min=0, max=256),
    _s("fast_path", True, "Use the project's fast Turbo decode loop where its equality test passed.",
       read_only=True),
    _s("jetson_patches", "auto", "Jetson workarounds (FFT sizes cuFFT rejects on Orin go to the CPU): "
       "auto (on when running on a Jetson), on, off.", read_only=True, choices=("auto", "on", "off")),
    _s("piper_model", "", "Piper .onnx voice for the piper engine ('' = the embedded joe-us voice).",
       read_only=True),
    # voices
    _s("voices_dir", "", "Folder of reference recordings (<name>.wav, > 5 s) for voice cloning "
       "('' = the package's voices/ folder).", read_only=True),
    _s("default_voice", "", "Voice used when a request names none ('' = the engine's built-in voice)."),
    _s("voice_cache.max_voices", 8, "Voice conditionings kept in memory (least recently used evicted).",
       min=1, max=1000),
    _s("voice_cache.max_mb", 1024.0, "Memory bound of the voice conditioning cache in MiB.", min=1.0,
       max=65536.0),
    # generation
    _s("generation.temperature", 0.8, "Sampling temperature.", min=0.05, max=2.0),
    _s("generation.top_p", 0.95, "Nucleus sampling threshold.", min=0.0, max=1.0),
    _s("generation.top_k", 1000, "Top-k sampling (1 = greedy).", min=1, max=10000),
    _s("generation.repetition_penalty", 1.2, "Penalty for repeated speech tokens.", min=1.0, max=3.0),
    _s("generation.seed", 0, "Random seed; 0 = a new seed per request. Same seed and settings, same audio.",
       min=0, max=2**31 - 1),
    _s("generation.watermark", True, "Apply Resemble's Perth watermark to Chatterbox output."),
    _s("text.max_chars", 4096, "Longest text accepted in one request (characters).", min=1, max=100000),
    _s("text.chunk_chars", 250, "Longest piece of text synthesized at once (sentence-aware split).", min=20,
       max=1000),
    # queue
    _s("queue.max_size", 16, "Requests waiting at most; beyond that a request is refused (queue full).",
       read_only=True, min=1, max=1000),
    _s("queue.policy", "queue", "What a new request does while speech is playing: queue (wait in line) or "
       "interrupt (stop current speech and clear the queue).", choices=("queue", "interrupt")),
    _s("idle_unload_s", 0.0, "Unload the model after this many idle seconds, reload on the next request "
       "(0 = never).", min=0.0, max=1e9),
    # audio out
    _s("audio.chunk_ms", 100, "Duration of each AudioDataStamped chunk on tts/audio (ms).", min=10, max=5000),
    _s("audio.realtime", True, "Publish chunks at playback speed (stop/cancel then silences within one chunk; "
       "tts/speaking follows the sound). false: publish as fast as synthesized.", ),
    _s("audio.reliable", True, "QoS of tts/audio: reliable (true) or best effort (false).", read_only=True),
    _s("audio.sentence_pause_ms", 120, "Silence inserted between sentences (ms).", min=0, max=2000),
    # playback on the robot's own speaker
    _s("playback.enabled", False, "Play synthesized speech on the host's sound device (PortAudio; applied on "
       "activate). tts/speaking is then true exactly while sound plays; stop/cancel silence it at once."),
    _s("playback.device", "", "Sound device name (substring) or index for playback ('' = system default; list "
       "them with `python -m ros2_chatterbox.playback`). Applied on activate."),
    # HTTP
    _s("http.enabled", True, "Serve the HTTP API (OpenAI /v1/audio/speech, /tts, web page) while active."),
    _s("http.host", "127.0.0.1", "HTTP bind address. Binding beyond loopback without http.api_key logs a "
       "warning.", read_only=True),
    _s("http.port", 8004, "HTTP port.", read_only=True, min=1, max=65535),
    _s("http.api_key", "", "Bearer token required on every endpoint except /health ('' = none).",
       read_only=True),
    _s("http.max_upload_mb", 20.0, "Largest voice upload accepted (MiB).", min=0.1, max=1024.0),
    _s("http.api_key_file", "", "File holding the API key (first line; '' = none). Keeps the key off the command "
       "line; the environment variables CHATTERBOX_API_KEY and CHATTERBOX_API_KEY_FILE work too.", read_only=True),
    _s("http.allowed_hosts", "", "Comma-separated host names (optionally name:port) the server answers to besides "
       "localhost and IP addresses, e.g. 'robot.local' for a LAN name; other Host headers get a 400 (DNS "
       "rebinding).", read_only=True),
    _s("http.allow_unauthenticated_lan", False, "Serve beyond loopback without an API key. Without it, a "
       "non-loopback http.host and no key refuse to start.", read_only=True),
    _s("http.max_concurrent_uploads", 2, "Voice uploads processed at once; more get 503 with Retry-After.",
       read_only=True, min=1, max=64),
    _s("http.max_connections", 64, "Open HTTP connections at most; more are answered 503 and closed.",
       read_only=True, min=2, max=10000),
    _s("http.header_timeout_s", 10.0, "Seconds a client has to send a complete request header; slower "
       "connections are closed.", read_only=True, min=0.1, max=600.0),
    # start-up
    _s("autostart", False, "Configure and activate at start (for setups without a lifecycle manager).",
       read_only=True),
]

SETTINGS_BY_NAME: Dict[str, Setting] = {s.name: s for s in SETTINGS}


def defaults() -> Dict[str, Any]:
    return {s.name: s.default for s in SETTINGS}


class ConfigError(ValueError):
    """A setting has a value outside its range or of the wrong type."""


def check(name: str, value: Any) -> Any:
    """Validate one value against its setting; returns the value coerced to the setting's type."""
    s = SETTINGS_BY_NAME.get(name)
    if s is None:
        raise ConfigError(f"unknown setting '{name}'")
    d = s.default
    if isinstance(d, bool):
        if not isinstance(value, bool):
            raise ConfigError(f"{name} must be true or false, not {value!r}")
    elif isinstance(d, int):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{name} must be an integer, not {value!r}")
    elif isinstance(d, float):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{name} must be a number, not {value!r}")
        value = float(value)
        if value != value or value in (float("inf"), float("-inf")):
            raise ConfigError(f"{name} must be a finite number")
    elif isinstance(d, str):
        if not isinstance(value, str):
            raise ConfigError(f"{name} must be a string, not {value!r}")
    if s.min is not None and value < s.min:
        raise ConfigError(f"{name}={value} is below its minimum {s.min}")
    if s.max is not None and value > s.max:
        raise ConfigError(f"{name}={value} is above its maximum {s.max}")
    if s.choices and value not in s.choices:
        raise ConfigError(f"{name}={value!r} is not one of {', '.join(repr(c) for c in s.choices)}")
    return value


def package_share() -> Path:
    """Folder with config/, voices/, launch/: the source checkout, or the installed ROS share folder."""
    src = Path(__file__).resolve().parent.parent
    if (src / "config" / "params.yaml").exists():
        return src
    try:  # installed by colcon / the venv set-up
        from ament_index_python.packages import get_package_share_directory
        return Path(get_package_share_directory("ros2_chatterbox"))
    except Exception:  # noqa: BLE001 - no ament index (pip install .): fall back to the module folder
        return src


def _flatten(d: Dict[str, Any], prefix: str = "") -> Dict[str, Any]:
    out: Dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def load_params_file(path: Optional[str], node_name: str = "tts_node") -> Dict[str, Any]:
    """Read a ROS parameter file (`<node>: ros__parameters: ...`) into validated flat settings."""
    values = defaults()
    if not path:
        return values
    data = yaml.safe_load(Path(path).read_text()) or {}
    params: Dict[str, Any] = {}
    for key in (node_name, f"/{node_name}", "/**", "**"):
        section = data.get(key)
        if isinstance(section, dict) and isinstance(section.get("ros__parameters"), dict):
            params.update(_flatten(section["ros__parameters"]))
    for name, value in params.items():
        if name in SETTINGS_BY_NAME:
            values[name] = check(name, value)
    return values
