"""The official `openai` package against the live server: every format, streaming, SSE."""
from __future__ import annotations

import base64
import io
import json
import struct
import threading
import wave

import pytest

from http_fixtures import http_core, http_server  # noqa: F401
from ros2_chatterbox import encoding
from ros2_chatterbox.text import EMPTY_TEXT

from optional import optional_import, requires

openai = optional_import("openai")
pytestmark = [pytest.mark.timeout(90), requires("openai", hint="make setup-test")]

TEXT = "The quick brown fox jumps over the lazy dog."
# pcm is headerless 16-bit mono: its rate comes from X-Sample-Rate (the engine's rate: piper 22050, Chatterbox 24000)
EXPECTED_RATE = {"mp3": 22050, "opus": 48000, "aac": 22050, "flac": 22050, "wav": 22050, "pcm": 22050}
PADDING_S = {"mp3": 0.12, "aac": 0.15, "opus": 0.05, "flac": 0.0, "wav": 0.0, "pcm": 0.0}


@pytest.fixture(scope="module")
def client(http_server):
    return openai.OpenAI(base_url=f"{http_server.url}/v1", api_key="not-needed", max_retries=0, timeout=30)


@pytest.fixture(scope="module")
def reference_duration(client):
    """Duration of TEXT as WAV: piper's durations vary by ~1% between runs, so compare loosely."""
    data = client.audio.speech.create(model="tts-1", voice="alloy", input=TEXT, response_format="wav").read()
    y, rate = encoding.decode(data)
    return len(y) / rate


@pytest.mark.parametrize("fmt", encoding.FORMATS)
def test_every_format_decodes(client, fmt, reference_duration):
    response = client.audio.speech.create(model="tts-1", voice="alloy", input=TEXT, response_format=fmt)
    data = response.read()
    assert response.response.headers["content-type"] == encoding.CONTENT_TYPES[fmt]
    rate_header = int(response.response.headers["x-sample-rate"])
    samples, rate = encoding.decode(data, fmt, rate_header)
    assert rate == EXPECTED_RATE[fmt] == rate_header
    duration = len(samples) / rate
    assert reference_duration * 0.9 - 0.05 <= duration <= reference_duration * 1.1 + PADDING_S[fmt] + 0.05
    assert float(abs(samples).max()) > 0.05  # speech, not silence


def test_speed_through_the_sdk(client, reference_duration):
    data = client.audio.speech.create(model="tts-1", voice="alloy", input=TEXT, response_format="wav",
                                      speed=2.0).read()
    y, rate = encoding.decode(data)
    assert 0.4 < (len(y) / rate) / reference_duration < 0.6


def test_custom_voice_forms(client):
    for voice in ("alice", "alice.wav", {"id": "alice"}, "shimmer"):
        data = client.audio.speech.create(model="chatterbox-turbo", voice=voice, input="Hi.",
                                          response_format="wav").read()
        assert encoding.decode(data)[0].size > 0


def test_errors_raise_sdk_exceptions(client):
    with pytest.raises(openai.BadRequestError) as info:
        client.audio.speech.create(model="tts-1", voice="alloy", input="x" * 4097)
    assert info.value.status_code == 400 and info.value.body["param"] == "input"
    with pytest.raises(openai.BadRequestError):
        client.audio.speech.create(model="tts-1", voice="../../etc/passwd", input="hi")


@pytest.mark.parametrize("text", ["", "   \t "])
def test_empty_and_blank_input_give_the_same_error(client, text):
    """The same words as the speak service and the say action give (the core's message)."""
    with pytest.raises(openai.BadRequestError) as info:
        client.audio.speech.create(model="tts-1", voice="alloy", input=text)
    assert info.value.body["message"] == EMPTY_TEXT and info.value.body["param"] == "input"


def test_wav_is_a_complete_file_with_exact_sizes(client, tmp_path):
    """The README's SDK example writes hello.wav; Python's wave module reads its real duration from the header."""
    response = client.audio.speech.create(model="tts-1", voice="alloy", input=TEXT, response_format="wav")
    response.write_to_file(tmp_path / "hello.wav")
    headers = response.response.headers
    assert "chunked" not in headers.get("transfer-encoding", "")
    assert int(headers["content-length"]) == (tmp_path / "hello.wav").stat().st_size
    with wave.open(str(tmp_path / "hello.wav")) as w:
        assert (w.getnchannels(), w.getsampwidth(), w.getframerate()) == (1, 2, 22050)
        header_duration = w.getnframes() / w.getframerate()
        frames = w.readframes(w.getnframes())
    assert len(frames) == 2 * w.getnframes()  # the header's sizes are the data's sizes
    samples, rate = encoding.decode((tmp_path / "hello.wav").read_bytes())
    assert header_duration == len(samples) / rate == pytest.approx(float(headers["x-audio-duration"]), abs=1e-3)
    assert 1.0 < header_duration < 10.0


def test_wav_streams_when_asked_with_open_ended_sizes(client, http_server, reference_duration):
    """stream_format=audio streams WAV as it is synthesized; its header cannot hold sizes not known yet, as the
    README and the API docs say: libsndfile and FFmpeg read to the end, Python's wave believes the header."""
    import httpx
    import soundfile as sf
    with client.audio.speech.with_streaming_response.create(model="tts-1", voice="alloy", input=TEXT,
                                                            response_format="wav",
                                                            stream_format="audio") as response:
        assert response.headers.get("transfer-encoding") == "chunked"
        assert "content-length" not in response.headers
        data = response.read()
    assert data[:4] == b"RIFF" and struct.unpack("<I", data[4:8])[0] == 0xFFFFFFFF
    y, rate = sf.read(io.BytesIO(data))
    assert rate == 22050 and reference_duration * 0.9 - 0.05 <= len(y) / rate <= reference_duration * 1.1 + 0.05
    with wave.open(io.BytesIO(data)) as w:
        assert w.getnframes() / w.getframerate() > 90000  # 97,391 s: the open-ended size taken at its word
    docs = httpx.get(f"{http_server.url}/openapi.json").json()["paths"]["/v1/audio/speech"]["post"]["description"]
    assert "0xFFFFFFFF" in docs and "`pcm`" in docs and "`wav` without `stream_format`" in docs


def test_wrong_key_raises_authentication_error(http_core):
    from http_fixtures import serving
    with serving(http_core, http__api_key="right") as server:
        wrong = openai.OpenAI(base_url=f"{server.url}/v1", api_key="wrong", max_retries=0, timeout=10)
        with pytest.raises(openai.AuthenticationError):
            wrong.audio.speech.create(model="tts-1", voice="alloy", input="hi")
        right = openai.OpenAI(base_url=f"{server.url}/v1", api_key="right", max_retries=0, timeout=30)
        assert right.models.list().data[0].id
        assert right.audio.speech.create(model="tts-1", voice="alloy", input="Hi.", response_format="wav").read()


def test_models_list(client):
    ids = [m.id for m in client.models.list().data]
    assert "tts-1" in ids and "chatterbox-turbo" in ids


def test_streaming_response_starts_before_synthesis_ends(client, http_core, monkeypatch):
    """The engine is held before the second sentence until the client has its first bytes: a server that
    buffered the whole answer would never release it (the hold gives up after 30 s and the test fails)."""
    text = " ".join(f"Sentence {i} is here to make this a long multi sentence input." for i in range(3))
    first_bytes = threading.Event()
    released = []
    engine = http_core.engine
    real = engine.synthesize
    pieces = []

    def held(piece, *args, **kwargs):
        pieces.append(piece)
        if len(pieces) == 2:
            released.append(first_bytes.wait(30))
        yield from real(piece, *args, **kwargs)

    monkeypatch.setattr(engine, "synthesize", held)
    with client.audio.speech.with_streaming_response.create(model="tts-1", voice="alloy", input=text,
                                                            response_format="mp3") as response:
        chunks = response.iter_bytes(1024)
        first = next(chunks)
        speaking_at_first_byte = http_core.status().speaking
        first_bytes.set()
        rest = b"".join(chunks)
    assert first and rest
    assert released == [True], "the first bytes should arrive before the second sentence is synthesized"
    assert speaking_at_first_byte, "the first bytes should arrive while the input is still being synthesized"
    samples, rate = encoding.decode(first + rest)
    assert rate == 22050 and len(samples) / rate > 5.0


def test_sse_events(client):
    with client.audio.speech.with_streaming_response.create(model="tts-1", voice="alloy", input=TEXT,
                                                            response_format="pcm", stream_format="sse") as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        events = [json.loads(line[len("data: "):]) for line in response.iter_lines() if line.startswith("data: ")]
    assert len(events) >= 3
    assert all(e["type"] == "speech.audio.delta" for e in events[:-1])
    assert events[-1]["type"] == "speech.audio.done"
    usage = events[-1]["usage"]
    assert usage["input_tokens"] > 0 and usage["total_tokens"] == usage["input_tokens"] + usage["output_tokens"]
    pcm = b"".join(base64.b64decode(e["audio"]) for e in events[:-1])
    assert len(pcm) % 2 == 0 and len(pcm) / 2 / 22050 > 1.0


def test_sse_with_an_encoded_format(client):
    data = client.audio.speech.create(model="tts-1", voice="alloy", input="Short one.", response_format="mp3",
                                      stream_format="sse")
    text = data.read().decode()
    deltas = [json.loads(line[6:]) for line in text.splitlines() if line.startswith("data: ")]
    mp3 = b"".join(base64.b64decode(e["audio"]) for e in deltas if e["type"] == "speech.audio.delta")
    samples, rate = encoding.decode(mp3)
    assert rate == 22050 and samples.size > 0


def test_language_through_extra_body(client, http_core):
    """`language` is no OpenAI field: the SDK sends it with extra_body. The embedded Piper voice speaks en; fr is
    refused (400, param language) with the list, and nothing is queued."""
    data = client.audio.speech.create(model="tts-1", voice="alloy", input="Hi.", response_format="wav",
                                      extra_body={"language": "en"}).read()
    assert encoding.decode(data)[0].size > 0
    submitted = http_core.status().counters.get("submitted", 0)
    with pytest.raises(openai.BadRequestError) as info:
        client.audio.speech.create(model="tts-1", voice="alloy", input="Bonjour.", extra_body={"language": "fr"})
    assert info.value.status_code == 400 and info.value.body["param"] == "language"
    assert "'fr' is not supported" in info.value.body["message"] and "supported: en" in info.value.body["message"]
    assert http_core.status().counters.get("submitted", 0) == submitted
