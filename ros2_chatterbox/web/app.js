// The web page of ros2_chatterbox: no framework, no CDN (robots are often offline).
"use strict";

const KEY_STORE = "ros2_chatterbox.api_key";
const $ = (id) => document.getElementById(id);
let controller = null;   // AbortController of the request in flight (Cancel aborts it, which cancels the job)
let audioUrl = null;

function authHeaders(extra) {
  const headers = Object.assign({}, extra || {});
  const key = localStorage.getItem(KEY_STORE);
  if (key) headers["Authorization"] = "Bearer " + key;
  return headers;
}

class ApiError extends Error {}

async function api(path, options) {
  const opts = Object.assign({}, options || {});
  opts.headers = authHeaders(opts.headers);
  const response = await fetch(path, opts);
  if (response.status === 401) {
    $("key-panel").hidden = false;
    throw new ApiError("this server needs an API key");
  }
  if (!response.ok) {
    let message = response.status + " " + response.statusText;
    try {
      const body = await response.json();
      if (body && body.error && body.error.message) message = body.error.message;
    } catch (e) { /* not JSON */ }
    throw new ApiError(message);
  }
  return response;
}

function setMessage(text, kind) {
  const el = $("message");
  el.textContent = text || "";
  el.className = "message" + (kind ? " " + kind : "");
}

function setState(state) {
  document.body.dataset.state = state;
}

async function refreshStatus() {
  try {
    const info = await (await api("/api/model-info")).json();
    $("engine").textContent = info.engine + (info.using_fallback ? " (fallback)" : "");
    $("device").textContent = (info.device || "?") + (info.dtype ? " / " + info.dtype : "");
    $("queue").textContent = info.queue_depth + "/" + info.queue_max;
    $("speaking").textContent = info.speaking ? "speaking…" : "";
    const ready = !!info.loaded;
    $("ready").textContent = ready ? "ready" : "not ready";
    $("ready").className = "badge " + (ready ? "ok" : "bad");
    if (info.max_input_chars) $("text").maxLength = info.max_input_chars;
  } catch (e) {
    try {  // /health needs no key: still show whether the server is up
      const h = await (await fetch("/health")).json();
      $("engine").textContent = h.engine || "–";
      $("queue").textContent = h.queue_depth + "/" + h.queue_max;
      // accepting: speech is served (also on the fallback engine); ready: the configured engine serves
      $("ready").textContent = h.accepting ? (h.ready ? "ready" : "ready (fallback)") : "not ready";
      $("ready").className = "badge " + (h.accepting ? "ok" : "bad");
    } catch (e2) {
      $("ready").textContent = "offline";
      $("ready").className = "badge bad";
    }
  }
}

async function refreshVoices() {
  try {
    const body = await (await api("/v1/audio/voices")).json();
    const select = $("voice");
    const chosen = select.value;
    select.innerHTML = "";
    const def = document.createElement("option");
    def.value = "";
    def.textContent = "default" + (body.default_voice ? " (" + body.default_voice + ")" : "");
    select.appendChild(def);
    const list = $("voice-list");
    list.innerHTML = "";
    for (const v of body.data) {
      const opt = document.createElement("option");
      opt.value = v.id;
      opt.textContent = v.name;
      select.appendChild(opt);
      const li = document.createElement("li");
      const name = document.createElement("span");
      name.textContent = v.name + " ";
      const del = document.createElement("button");
      del.type = "button";
      del.textContent = "Delete";
      del.className = "small";
      del.addEventListener("click", () => deleteVoice(v.id));
      li.appendChild(name);
      li.appendChild(del);
      list.appendChild(li);
    }
    if (!body.data.length) list.innerHTML = "<li class=\"muted\">No reference voices yet.</li>";
    select.value = [...select.options].some((o) => o.value === chosen) ? chosen : "";
    $("clone-note").hidden = body.can_clone;
    $("clone-note").textContent = body.can_clone ? "" :
      "The running engine cannot clone voices: uploads are stored for Chatterbox Turbo.";
    setState(document.body.dataset.state === "loading" ? "idle" : document.body.dataset.state);
  } catch (e) {
    setMessage(e.message, "error");
    if (document.body.dataset.state === "loading") setState("idle");
  }
}

async function speak() {
  const text = $("text").value;
  if (!text.trim()) { setMessage("Type something to say.", "error"); return; }
  const format = $("format").value;
  const speed = parseFloat($("speed").value) || 1.0;
  controller = new AbortController();
  $("speak").disabled = true;
  $("cancel").disabled = false;
  setState("speaking");
  setMessage("Synthesizing…");
  const started = performance.now();
  try {
    const response = await api("/tts", {
      method: "POST",
      headers: {"Content-Type": "application/json"},
      body: JSON.stringify({text: text, voice: $("voice").value, format: format, speed: speed}),
      signal: controller.signal,
    });
    const blob = await response.blob();
    if (audioUrl) URL.revokeObjectURL(audioUrl);
    audioUrl = URL.createObjectURL(blob);
    const player = $("player");
    player.src = audioUrl;
    const link = $("download");
    link.href = audioUrl;
    link.download = "speech." + format;
    link.hidden = false;
    const seconds = response.headers.get("X-Audio-Duration");
    $("result-info").textContent = (seconds ? seconds + " s of audio, " : "") +
      Math.round(blob.size / 1024) + " KiB, " + ((performance.now() - started) / 1000).toFixed(1) + " s";
    setMessage("Done.", "ok");
    setState("done");
    player.play().catch(() => { /* autoplay blocked: the controls are there */ });
  } catch (e) {
    setMessage(e.name === "AbortError" ? "Cancelled." : e.message, "error");
    setState("error");
  } finally {
    controller = null;
    $("speak").disabled = false;
    $("cancel").disabled = true;
    refreshStatus();
  }
}

async function deleteVoice(name) {
  if (!confirm("Delete voice '" + name + "'?")) return;
  try {
    await api("/v1/audio/voices/" + encodeURIComponent(name), {method: "DELETE"});
    setMessage("Voice '" + name + "' deleted.", "ok");
  } catch (e) {
    setMessage(e.message, "error");
  }
  refreshVoices();
}

async function uploadVoice(event) {
  event.preventDefault();
  const file = $("voice-file").files[0];
  if (!file) return;
  const form = new FormData();
  form.append("file", file);
  if ($("voice-name").value.trim()) form.append("name", $("voice-name").value.trim());
  try {
    const body = await (await api("/v1/audio/voices", {method: "POST", body: form})).json();
    setMessage(body.message, "ok");
    $("upload-form").reset();
  } catch (e) {
    setMessage(e.message, "error");
  }
  refreshVoices();
}

function init() {
  $("speak").addEventListener("click", speak);
  $("cancel").addEventListener("click", () => { if (controller) controller.abort(); });
  $("text").addEventListener("keydown", (e) => {
    if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) speak();
  });
  const updateChars = () => { $("chars").textContent = $("text").value.length + " characters"; };
  $("text").addEventListener("input", updateChars);
  updateChars();
  $("save-key").addEventListener("click", () => {
    const key = $("api-key").value.trim();
    if (key) localStorage.setItem(KEY_STORE, key); else localStorage.removeItem(KEY_STORE);
    $("key-panel").hidden = true;
    setMessage("");
    refreshStatus();
    refreshVoices();
  });
  $("upload-form").addEventListener("submit", uploadVoice);
  refreshStatus();
  refreshVoices();
  setInterval(refreshStatus, 2000);
}

document.addEventListener("DOMContentLoaded", init);
