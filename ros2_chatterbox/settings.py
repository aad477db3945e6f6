"""Every setting of the package in one table, and the typed, frozen settings each component receives.

The table (`SETTINGS`) is the one place where a setting's name, default, range, description and stage live. From
it come: the node's parameters and their descriptors, `config/params.yaml` (`params_file.render_params_yaml`), and
one frozen dataclass per component (`EngineSettings`, `GenerationSettings`, `CoreSettings`, `RosSettings`, `HttpSettings`,
`PlaybackSettings`) whose field defaults are read from the table. A parameter change builds a new `Settings`
(`with_values`) and hands the changed component its new object; nothing mutates settings in place.

A setting's attribute name is its parameter name without the component's prefix, dots turned into underscores:
`generation.top_p` -> `GenerationSettings.top_p`, `voice_cache.max_voices` -> `EngineSettings.voice_cache_max_voices`,
`http.port` -> `HttpSettings.port`. A setting's `group` is the component that reads it, whatever its name says
(`audio.sentence_pause_ms` is the core's, `audio.chunk_ms` the ROS door's): its descriptor (`ros2 param describe`)
and params.yaml begin its description with `[core]`, `[ros]`, ... The engine names come from engines/registry.py.
Path discovery is in paths.py, parameter files in params_file.py.

Stages: `start` settings are read when the node starts (read-only parameters: set them in the parameter file);
`configure` settings are read at the next configure (settable while unconfigured, refused while configured or
active); `runtime` settings apply at once. Nothing here imports rclpy.
"""
from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple

from .engines.registry import ENGINES

START, CONFIGURE, RUNTIME = "start", "configure", "runtime"


@dataclass(frozen=True)
class Setting:
    name: str
    group: str  # the component that owns it: engine, generation, core, ros, http, playback
    default: Any
    description: str
    stage: str = RUNTIME
    min: Optional[float] = None
    max: Optional[float] = None
    choices: Tuple[str, ...] = ()
    # turns a valid value into its one spelling ("FR" -> "fr"); raises ValueError with the reason for an invalid one
    normalize: Optional[Callable[[Any], Any]] = None

    @property
    def attr(self) -> str:
        """The attribute name in the group's settings class."""
        prefix = self.group + "."
        name = self.name[len(prefix):] if self.name.startswith(prefix) else self.name
        return name.replace(".", "_")

    @property
    def read_only(self) -> bool:
        """True for parameters that can only come from the parameter file (read once, at node start)."""
        return self.stage == START


def _s(name: str, group: str, default: Any, description: str, stage: str = RUNTIME, **kw: Any) -> Setting:
    return Setting(name, group, default, description, stage, **kw)


def _language(value: Any) -> str:
    """A language code as the settings keep it ("FR", "fr-FR" -> "fr"; "" = the model's default language)."""
    # imported here: languages.py needs only the standard library, but importing it at the top would import the
    # engines' chatterbox package whenever the settings are read (test_settings_import_no_engine)
    from .engines.chatterbox.languages import normalize_language
    return normalize_language(value)


SETTINGS: List[Setting] = [
    # -- which engine (the core loads it, with an optional fallback)
    _s("engine", "core", "piper", "Speech engine: chatterbox_turbo (cloned voices, needs model weights) or piper "
       "(embedded default voice, no download).", CONFIGURE, choices=ENGINES),
    _s("fallback_engine", "core", "", "Engine to use when `engine` cannot load ('' = none: configure fails).",
       CONFIGURE, choices=("",) + ENGINES),
    # -- the engine's own settings
    _s("model", "engine", "turbo", "Chatterbox model: turbo (GPT-2 medium T3, t3_turbo_v1.safetensors, hub "
       "ResembleAI/chatterbox-turbo) or nano (Chatterbox-Nano: GPT-2 small T3, ~2x faster per token, "
       "t3_nano_v1.safetensors, hub ResembleAI/chatterbox-nano). hub_repo set to either official repository "
       "follows this choice.", CONFIGURE, choices=("turbo", "nano")),
    _s("model_dir", "engine", "", "Local Chatterbox Turbo folder in the hub snapshot layout (ve.safetensors, "
       "t3_turbo_v1.safetensors, s3gen_meanflow.safetensors, tokenizer files, optional conds.pt). "
       "'' = download `hub_repo` into `hub_cache_dir`.", CONFIGURE),
    _s("hub_repo", "engine", "ResembleAI/chatterbox-turbo", "Hugging Face repository to download when model_dir "
       "is empty (token from HF_TOKEN).", CONFIGURE),
    _s("hub_cache_dir", "engine", "", "Cache folder for hub downloads ('' = the Hugging Face default, "
       "$HF_HOME or ~/.cache/huggingface).", CONFIGURE),
    _s("hub_timeout_s", "engine", 30.0, "Seconds before an unreachable hub fails configure.", CONFIGURE,
       min=1.0, max=3600.0),
    _s("device", "engine", "auto", "auto (CUDA when available), cuda, cuda:N or cpu.", CONFIGURE),
    _s("dtype", "engine", "auto", "auto (float16 on CUDA, float32 on CPU), float16, bfloat16 or float32.",
       CONFIGURE, choices=("auto", "float16", "bfloat16", "float32")),
    _s("s3gen_dtype", "engine", "auto", "dtype of S3Gen's flow (the speech-token-to-mel decoder, 115 M parameters): "
       "auto (float16 on CUDA when dtype is float16, else float32), float16 (half its memory; within a tested "
       "tolerance of float32) or float32. Its vocoder, tokenizer and speaker encoder stay float32.", CONFIGURE,
       choices=("auto", "float32", "float16")),
    _s("cpu_threads", "engine", 0, "Torch CPU threads for the chatterbox engine (0 = torch's default). On a robot "
       "whose CPU is busy with other nodes, 1-2 threads are often faster than many.", CONFIGURE, min=0, max=256),
    _s("fast_path", "engine", True, "Use the project's fast Turbo decode loop where its equality test passed.",
       CONFIGURE),
    _s("s3gen_graphs", "engine", True, "Run S3Gen's streaming decoder (flow and vocoder) as CUDA graphs captured at "
       "configure, one per length bucket, where they match the eager decoder (CUDA only).", CONFIGURE),
    _s("jetson_patches", "engine", "auto", "Jetson workarounds (FFT sizes cuFFT rejects on Orin go to the CPU): "
       "auto (on when running on a Jetson), on, off.", CONFIGURE, choices=("auto", "on", "off")),
    _s("piper_model", "engine", "", "Piper .onnx voice for the piper engine ('' = the embedded joe-us voice).",
       CONFIGURE),
    _s("voice_cache.max_voices", "engine", 8, "Voice conditionings kept in memory (least recently used "
       "evicted).", CONFIGURE, min=1, max=1000),
    _s("voice_cache.max_mb", "engine", 1024.0, "Memory bound of the voice conditioning cache in MiB.", CONFIGURE,
       min=1.0, max=65536.0),
    _s("stream.first_tokens", "engine", 25, "Speech tokens sampled before the first audio is decoded (25 = 1 s "
       "of speech); fewer = earlier first audio, more decoder work. 0 = decode each sentence once, when done.",
       CONFIGURE, min=0, max=1000),
    _s("stream.max_tokens", "engine", 200, "Largest streamed chunk in speech tokens (chunks double from "
       "stream.first_tokens up to this).", CONFIGURE, min=1, max=1000),
    _s("memory.budget_mb", "engine", 0.0, "Most memory this node may take, host RSS + device memory in MiB (one RAM "
       "on a Jetson). Configure fits into it: shorter pieces (text.chunk_chars), a lower speech_tokens.max, fewer "
       "cached voices, and says what it chose; or refuses, naming what would fit. 0 = no budget.", CONFIGURE,
       min=0.0, max=1_000_000.0),
    _s("speech_tokens.max", "engine", 1000, "Hard cap of speech tokens per sentence (25 per second of speech; "
       "upstream's 1000 = 40 s).", CONFIGURE, min=1, max=4000),
    _s("speech_tokens.base", "engine", 150, "Token cap for a sentence = speech_tokens.base + "
       "speech_tokens.per_char x its characters (at most speech_tokens.max): stops a model that never ends.",
       CONFIGURE, min=1, max=4000),
    _s("speech_tokens.per_char", "engine", 6.0, "See speech_tokens.base.", CONFIGURE, min=0.0, max=100.0),
    # -- the core: voices, text, queue
    _s("voices_dir", "core", "", "Folder of reference recordings (<name>.wav, > 5 s) for voice cloning; added "
       "voices are stored there. '' = the user's $XDG_DATA_HOME/ros2_chatterbox/voices (default "
       "~/.local/share/ros2_chatterbox/voices), plus the package's shipped voices/ folder (read-only; a user "
       "voice of the same name takes precedence).", CONFIGURE),
    _s("default_voice", "core", "", "Voice used when a request names none ('' = the engine's built-in voice)."),
    _s("text.max_chars", "core", 4096, "Longest text accepted in one request (characters).", min=1, max=100000),
    _s("text.chunk_chars", "core", 250, "Longest piece of text synthesized at once (sentence-aware split).",
       min=20, max=1000),
    _s("queue.max_size", "core", 16, "Requests waiting at most; beyond that a request is refused (queue full).",
       CONFIGURE, min=1, max=1000),
    _s("queue.policy", "core", "queue", "What a new request does while speech is playing: queue (wait in line) "
       "or interrupt (stop current speech and clear the queue).", choices=("queue", "interrupt")),
    _s("idle_unload_s", "core", 0.0, "Unload the model after this many idle seconds, reload on the next request "
       "(0 = never).", min=0.0, max=1e9),
    _s("audio.sentence_pause_ms", "core", 120, "Silence inserted between sentences (ms).", min=0, max=2000),
    # -- generation (per request; HTTP requests may override within these ranges)
    _s("generation.temperature", "generation", 0.8, "Sampling temperature.", min=0.05, max=2.0),
    _s("generation.top_p", "generation", 0.95, "Nucleus sampling threshold.", min=0.0, max=1.0),
    _s("generation.top_k", "generation", 1000, "Top-k sampling (1 = greedy).", min=1, max=10000),
    _s("generation.min_p", "generation", 0.0, "Min-p sampling: drop speech tokens less likely than min_p times the "
       "most likely one (0 = off; 0.02-0.1 trims unlikely tokens).", min=0.0, max=1.0),
    _s("generation.repetition_penalty", "generation", 1.2, "Penalty for repeated speech tokens.", min=1.0,
       max=3.0),
    _s("generation.seed", "generation", 0, "Random seed; 0 = a new seed per request. Same seed and settings, "
       "same audio.", min=0, max=2**31 - 1),
    _s("generation.watermark", "generation", True, "Apply Resemble's Perth watermark to Chatterbox output."),
    _s("language", "generation", "", "Language spoken when a request names none: an ISO 639-1 code (en, fr, de, ...; "
       "'FR' and 'fr-FR' mean fr). '' = the model's default language (en). Chatterbox Turbo, Nano and Piper speak "
       "English only: a request in another language is refused, naming the languages the model speaks.",
       normalize=_language),
    # -- the ROS door
    _s("frame_id", "ros", "", "frame_id in the header of tts/audio messages."),
    _s("audio.chunk_ms", "ros", 100, "Duration of each AudioDataStamped chunk on tts/audio (ms).", min=10,
       max=5000),
    _s("audio.realtime", "ros", True, "Publish chunks at playback speed (stop/cancel then silences within one "
       "chunk; tts/speaking follows the sound). false: publish as fast as synthesized."),
    _s("audio.realtime_lead_s", "ros", 0.25, "With audio.realtime: publish this far ahead of playback so a "
       "player never starves (this much audio is already on its way when stop is called).", min=0.0, max=10.0),
    _s("audio.reliable", "ros", True, "QoS of tts/audio: reliable (true) or best effort (false).", CONFIGURE),
    _s("audio.depth", "ros", 100, "QoS history depth of tts/audio (chunks).", CONFIGURE, min=1, max=10000),
    _s("ros.text_depth", "ros", 100, "QoS history depth of the tts/text subscription: a burst of this many "
       "messages is queued, not overwritten.", START, min=1, max=10000),
    _s("ros.request_depth", "ros", 200, "QoS history depth of the speak service and the say action's goal and "
       "result services.", START, min=1, max=10000),
    _s("autostart", "ros", False, "Configure and activate at start (for setups without a lifecycle manager).",
       START),
    # -- playback on the robot's own speaker
    _s("playback.enabled", "playback", False, "Play synthesized speech on the host's sound device (PortAudio; "
       "applied on activate). tts/speaking is then true exactly while sound plays; stop/cancel silence it at "
       "once."),
    _s("playback.device", "playback", "", "Sound device name (substring) or index for playback ('' = system "
       "default; list them with `python -m ros2_chatterbox.playback`). Applied on activate."),
    # -- the HTTP door
    _s("http.enabled", "http", True, "Serve the HTTP API (OpenAI /v1/audio/speech, /tts, web page); applied on "
       "activate."),
    _s("http.host", "http", "127.0.0.1", "HTTP bind address. Beyond loopback it needs an API key (or "
       "http.allow_unauthenticated_lan).", CONFIGURE),
    _s("http.port", "http", 8004, "HTTP port.", CONFIGURE, min=1, max=65535),
    _s("http.api_key", "http", "", "Bearer token required on every endpoint except /health ('' = none).",
       CONFIGURE),
    _s("http.max_upload_mb", "http", 20.0, "Largest voice upload accepted (MiB).", min=0.1, max=1024.0),
    _s("http.chunk_ms", "http", 100, "Audio per encoded piece of an HTTP stream (ms): the granularity of "
       "streamed bytes and the length of each SSE event.", min=10, max=5000),
    _s("http.max_input_chars", "http", 4096, "Longest `input` of the OpenAI endpoint (OpenAI's own limit is 4096; "
       "text.max_chars applies too).", min=1, max=100000),
    _s("http.api_key_file", "http", "", "File holding the API key (first line; '' = none). Keeps the key off the "
       "command line; the environment variables CHATTERBOX_API_KEY and CHATTERBOX_API_KEY_FILE work too.",
       CONFIGURE),
    _s("http.allowed_hosts", "http", "", "Comma-separated host names (optionally name:port) the server answers to "
       "besides localhost and IP addresses, e.g. 'robot.local' for a LAN name; other Host headers get a 400 (DNS "
       "rebinding).", CONFIGURE),
    _s("http.allow_unauthenticated_lan", "http", False, "Serve beyond loopback without an API key. Without it, a "
       "non-loopback http.host and no key refuse to start.", CONFIGURE),
    _s("http.max_concurrent_uploads", "http", 2, "Voice uploads processed at once; more get 503 with Retry-After.",
       CONFIGURE, min=1, max=64),
    _s("http.max_connections", "http", 4096, "Open HTTP connections at most; more are answered 503 and closed. "
       "High, so that slow clients deny no one (each costs a file and a few KiB; the server raises the open-file "
       "limit to fit, or serves fewer and says so).", CONFIGURE, min=2, max=65536),
    _s("http.header_timeout_s", "http", 10.0, "Seconds a client has to send a complete request header; slower "
       "connections are closed.", CONFIGURE, min=0.1, max=600.0),
]

SETTINGS_BY_NAME: Dict[str, Setting] = {s.name: s for s in SETTINGS}


def _default(name: str) -> Any:
    return SETTINGS_BY_NAME[name].default


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
        raise ConfigError(f"{name}={value} is below its minimum {s.min:g}")
    if s.max is not None and value > s.max:
        raise ConfigError(f"{name}={value} is above its maximum {s.max:g}")
    if s.choices and value not in s.choices:
        raise ConfigError(f"{name}={value!r} is not one of {', '.join(repr(c) for c in s.choices)}")
    if s.normalize is not None:
        try:
            value = s.normalize(value)
        except ValueError as exc:
            raise ConfigError(f"{name}: {exc}") from None
    return value


def setting_for(group: str, attr: str) -> Setting:
    """The table row behind a component's field (`setting_for("generation", "top_p")` is `generation.top_p`)."""
    for s in SETTINGS:
        if s.group == group and s.attr == attr:
            return s
    raise ConfigError(f"unknown {group} setting '{attr}'")


class _Group:
    """Shared helpers of the per-component settings classes."""

    GROUP = ""

    @classmethod
    def from_values(cls, values: Mapping[str, Any]):
        """Build from flat parameter values (validated); names missing from `values` keep their defaults."""
        kwargs = {}
        for s in SETTINGS:
            if s.group == cls.GROUP and s.name in values:
                kwargs[s.attr] = check(s.name, values[s.name])
        return cls(**kwargs)

    def values(self) -> Dict[str, Any]:
        """The flat parameter values of this component."""
        return {s.name: getattr(self, s.attr) for s in SETTINGS if s.group == self.GROUP}


@dataclass(frozen=True)
class EngineSettings(_Group):
    """What an engine needs to load and run; handed to `create_engine` at configure."""
    GROUP = "engine"
    model: str = _default("model")
    model_dir: str = _default("model_dir")
    hub_repo: str = _default("hub_repo")
    hub_cache_dir: str = _default("hub_cache_dir")
    hub_timeout_s: float = _default("hub_timeout_s")
    device: str = _default("device")
    dtype: str = _default("dtype")
    s3gen_dtype: str = _default("s3gen_dtype")
    cpu_threads: int = _default("cpu_threads")
    fast_path: bool = _default("fast_path")
    s3gen_graphs: bool = _default("s3gen_graphs")
    jetson_patches: str = _default("jetson_patches")
    piper_model: str = _default("piper_model")
    voice_cache_max_voices: int = _default("voice_cache.max_voices")
    voice_cache_max_mb: float = _default("voice_cache.max_mb")
    stream_first_tokens: int = _default("stream.first_tokens")
    stream_max_tokens: int = _default("stream.max_tokens")
    memory_budget_mb: float = _default("memory.budget_mb")
    speech_tokens_max: int = _default("speech_tokens.max")
    speech_tokens_base: int = _default("speech_tokens.base")
    speech_tokens_per_char: float = _default("speech_tokens.per_char")

    def max_tokens_for(self, text: str) -> int:
        """Speech-token cap for one piece of text (see speech_tokens.base)."""
        return self.speech_token_cap(len(text))

    def speech_token_cap(self, chars: int) -> int:
        """Speech-token cap for a piece of `chars` characters (the memory plan sizes for the longest piece)."""
        return int(min(self.speech_tokens_max, self.speech_tokens_base + self.speech_tokens_per_char * max(0, chars)))


@dataclass(frozen=True)
class GenerationSettings(_Group):
    """Sampling settings of one request: the parameters, optionally overridden per request."""
    GROUP = "generation"
    temperature: float = _default("generation.temperature")
    top_p: float = _default("generation.top_p")
    top_k: int = _default("generation.top_k")
    min_p: float = _default("generation.min_p")
    repetition_penalty: float = _default("generation.repetition_penalty")
    seed: int = _default("generation.seed")  # 0 = a fresh random seed per request
    watermark: bool = _default("generation.watermark")
    language: str = _default("language")  # '' = the model's default; SpeechCore.submit puts the code spoken here

    def with_overrides(self, overrides: Optional[Mapping[str, Any]]) -> "GenerationSettings":
        """A copy with per-request overrides, each validated against the parameter's range."""
        if not overrides:
            return self
        clean = {}
        names = {f.name for f in fields(self)}
        for key, value in overrides.items():
            if value is None:
                continue
            if key not in names:
                raise ConfigError(f"unknown generation setting '{key}'")
            if isinstance(getattr(self, key), float) and isinstance(value, int) and not isinstance(value, bool):
                value = float(value)
            clean[key] = check(setting_for(self.GROUP, key).name, value)
        return replace(self, **clean)


@dataclass(frozen=True)
class CoreSettings(_Group):
    """The speech core's own settings: which engine, voices, text limits, the queue."""
    GROUP = "core"
    engine: str = _default("engine")
    fallback_engine: str = _default("fallback_engine")
    voices_dir: str = _default("voices_dir")
    default_voice: str = _default("default_voice")
    text_max_chars: int = _default("text.max_chars")
    text_chunk_chars: int = _default("text.chunk_chars")
    queue_max_size: int = _default("queue.max_size")
    queue_policy: str = _default("queue.policy")
    idle_unload_s: float = _default("idle_unload_s")
    audio_sentence_pause_ms: int = _default("audio.sentence_pause_ms")


@dataclass(frozen=True)
class RosSettings(_Group):
    """The ROS door's settings: audio topic shape and pacing, QoS, start-up."""
    GROUP = "ros"
    frame_id: str = _default("frame_id")
    audio_chunk_ms: int = _default("audio.chunk_ms")
    audio_realtime: bool = _default("audio.realtime")
    audio_realtime_lead_s: float = _default("audio.realtime_lead_s")
    audio_reliable: bool = _default("audio.reliable")
    audio_depth: int = _default("audio.depth")
    text_depth: int = _default("ros.text_depth")
    request_depth: int = _default("ros.request_depth")
    autostart: bool = _default("autostart")


@dataclass(frozen=True)
class PlaybackSettings(_Group):
    GROUP = "playback"
    enabled: bool = _default("playback.enabled")
    device: str = _default("playback.device")


@dataclass(frozen=True)
class HttpSettings(_Group):
    GROUP = "http"
    enabled: bool = _default("http.enabled")
    host: str = _default("http.host")
    port: int = _default("http.port")
    api_key: str = _default("http.api_key")
    max_upload_mb: float = _default("http.max_upload_mb")
    chunk_ms: int = _default("http.chunk_ms")
    max_input_chars: int = _default("http.max_input_chars")
    api_key_file: str = _default("http.api_key_file")
    allowed_hosts: str = _default("http.allowed_hosts")
    allow_unauthenticated_lan: bool = _default("http.allow_unauthenticated_lan")
    max_concurrent_uploads: int = _default("http.max_concurrent_uploads")
    max_connections: int = _default("http.max_connections")
    header_timeout_s: float = _default("http.header_timeout_s")


_GROUPS = {cls.GROUP: cls for cls in (EngineSettings, GenerationSettings, CoreSettings, RosSettings,
                                      PlaybackSettings, HttpSettings)}


def _check_table() -> None:
    """Every table row has its field and every field its row (a new setting needs both)."""
    for group, cls in _GROUPS.items():
        rows = {s.attr for s in SETTINGS if s.group == group}
        attrs = {f.name for f in fields(cls)}
        if rows != attrs:
            raise RuntimeError(f"settings table and {cls.__name__} disagree: {sorted(rows ^ attrs)}")
    unknown = {s.group for s in SETTINGS} - set(_GROUPS)
    if unknown:
        raise RuntimeError(f"settings with unknown groups: {sorted(unknown)}")


_check_table()


@dataclass(frozen=True)
class Settings:
    """All components' settings. Build with `from_values` / `defaults`; change with `with_values`."""
    engine: EngineSettings = EngineSettings()
    generation: GenerationSettings = GenerationSettings()
    core: CoreSettings = CoreSettings()
    ros: RosSettings = RosSettings()
    playback: PlaybackSettings = PlaybackSettings()
    http: HttpSettings = HttpSettings()

    @classmethod
    def from_values(cls, values: Mapping[str, Any]) -> "Settings":
        """From flat parameter values (unknown names are refused); missing names keep their defaults."""
        unknown = sorted(set(values) - set(SETTINGS_BY_NAME))
        if unknown:
            raise ConfigError(f"unknown setting(s): {', '.join(unknown)}")
        return cls(**{group: c.from_values(values) for group, c in _GROUPS.items()})

    def with_values(self, changes: Mapping[str, Any]) -> "Settings":
        """A copy with some parameters changed (validated); unchanged components are the same objects."""
        merged = self.values()
        merged.update(changes)
        new = Settings.from_values(merged)
        return Settings(**{g: (getattr(self, g) if getattr(new, g) == getattr(self, g) else getattr(new, g))
                           for g in _GROUPS})

    def values(self) -> Dict[str, Any]:
        out: Dict[str, Any] = {}
        for group in _GROUPS:
            out.update(getattr(self, group).values())
        return out


def defaults() -> Dict[str, Any]:
    """Flat default values of every setting."""
    return {s.name: s.default for s in SETTINGS}


def describe(s: Setting) -> str:
    """The full description of a parameter, as its descriptor and params.yaml show it: the component that reads it
    (`[core]`), what it does, its choices."""
    text = f"[{s.group}] {s.description}"
    if s.choices:
        text += f" One of: {', '.join(repr(c) for c in s.choices)}."
    return text
