// Parley playground: plain JS over the public REST API (no build step, nothing fetched from
// elsewhere). Each turn is posted, its audio played from the stream endpoint as it is
// generated (raw 16-bit PCM, 24 kHz mono, through Web Audio), and its job polled for its state.
// A turn may also be the user's own: recorded from the microphone (an AudioWorklet taps the
// PCM, packed here as a 16-bit WAV, which Parley's uploads read) and posted as a provided turn.
"use strict";

const SAMPLE_RATE = 24000;
const FINISHED = new Set(["succeeded", "failed", "cancelled"]);
const SPEAKERS = ["A", "B"];
const $ = (id) => document.getElementById(id);

// mic: idle → starting → recording → stopping → recorded (a clip held) → sending → idle.
const state = { cid: null, audio: null, playAt: 0, mic: "idle", rec: null, clip: null };
const MIC_HINT = $("mic-status").textContent;
const TEXT_HINT = $("text").placeholder;

function headers(extra = {}) {
  const key = $("key").value.trim();
  return key ? { ...extra, Authorization: `Bearer ${key}` } : extra;
}

function showError(message) {
  const box = $("error");
  box.textContent = message;
  box.hidden = !message;
}

// One API call; throws an Error whose message is Parley's error code and message.
async function api(method, path, body) {
  const init = { method, headers: headers(body ? { "Content-Type": "application/json" } : {}) };
  if (body !== undefined) init.body = JSON.stringify(body);
  const response = await fetch(path, init);
  if (!response.ok) throw new Error(await describe(response, `${method} ${path}`));
  return response.status === 204 ? null : response.json();
}

async function describe(response, what) {
  try {
    const { error } = await response.json();
    return `${what}: ${response.status} ${error.code}: ${error.message}`;
  } catch {
    return `${what}: ${response.status} ${response.statusText}`;
  }
}

async function guarded(action) {
  showError("");
  try {
    await action();
  } catch (err) {
    showError(err.message);
  }
}

async function newConversation() {
  const conversation = await api("POST", "/v1/conversations", { metadata: { source: "playground" } });
  state.cid = conversation.id;
  $("conversation").textContent = `conversation ${conversation.id}`;
  $("conversation").dataset.id = conversation.id;
  $("turns").replaceChildren();
  renderMic();
  $("bind").disabled = false;
  $("bound").textContent = "";
  localStorage.setItem("parley.apiKey", $("key").value.trim());
  await loadVoices();
}

async function loadVoices() {
  const voices = await api("GET", "/v1/voices");
  for (const speaker of [0, 1]) {
    const select = $(`voice-${speaker}`);
    const options = [new Option("(none)", "")];
    for (const v of voices) {
      const label = `${v.name}${v.server ? " (server)" : ""}${v.status === "ready" ? "" : ` (${v.status})`}`;
      options.push(new Option(label, v.name));
    }
    select.replaceChildren(...options);
  }
}

async function bindVoices() {
  const speakers = {};
  for (const speaker of [0, 1]) speakers[speaker] = $(`voice-${speaker}`).value || null;
  const conversation = await api("PATCH", `/v1/conversations/${state.cid}`, { speakers });
  const bound = Object.entries(conversation.speakers).map(([s, v]) => `${SPEAKERS[s] ?? s} = ${v}`);
  $("bound").textContent = bound.length ? `bound: ${bound.join(", ")}` : "no voices bound";
}

function turnRow(turn) {
  const row = document.createElement("li");
  row.className = "turn";
  row.dataset.turnId = turn.id;
  row.dataset.jobId = turn.job_id;
  row.dataset.speaker = String(turn.speaker);
  row.dataset.source = turn.source;
  row.dataset.status = turn.status;
  row.dataset.pcmBytes = "0";
  row.dataset.streamed = "false";
  const who = document.createElement("span");
  who.className = "who";
  const recorded = turn.source === "provided" ? " (recorded)" : "";
  who.textContent = `${SPEAKERS[turn.speaker] ?? turn.speaker}${recorded}:`;
  const text = document.createElement("span");
  text.textContent = turn.text;
  const status = document.createElement("span");
  status.className = "state";
  row.append(who, text, status);
  $("turns").append(row);
  renderState(row, { status: turn.status, progress: {} });
  return row;
}

function renderState(row, job) {
  row.dataset.status = job.status;
  const frames = job.progress && job.progress.frames ? `, ${job.progress.frames} frames` : "";
  const error = job.error ? `: ${job.error.code}: ${job.error.message}` : "";
  row.querySelector(".state").textContent = `${job.status}${frames}${error}`;
}

async function speak() {
  const text = $("text").value.trim();
  const speaker = Number($("speaker").value);
  if (!state.audio) state.audio = new AudioContext({ sampleRate: SAMPLE_RATE });
  await state.audio.resume();
  const turn = await api("POST", `/v1/conversations/${state.cid}/turns`, { speaker, text });
  $("text").value = "";
  $("speaker").value = String(1 - speaker); // the other speaker answers next
  const row = turnRow(turn);
  // Listen and watch at once; errors of either show in the page.
  Promise.all([play(row), watch(row)]).catch((err) => showError(err.message));
}

// Stream the turn's PCM and schedule it gap-free after whatever is already playing.
async function play(row) {
  const path = `/v1/conversations/${state.cid}/turns/${row.dataset.turnId}/stream?format=pcm`;
  const response = await fetch(path, { headers: headers() });
  if (!response.ok) throw new Error(await describe(response, "stream"));
  const reader = response.body.getReader();
  let carry = null; // an odd byte left from the last chunk
  let received = 0;
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    received += value.length;
    row.dataset.pcmBytes = String(received);
    let bytes = value;
    if (carry !== null) {
      bytes = new Uint8Array(value.length + 1);
      bytes[0] = carry;
      bytes.set(value, 1);
      carry = null;
    }
    if (bytes.length % 2) {
      carry = bytes[bytes.length - 1];
      bytes = bytes.subarray(0, bytes.length - 1);
    }
    if (bytes.length) schedule(bytes);
  }
  row.dataset.streamed = "true";
}

function schedule(bytes) {
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.length);
  const samples = new Float32Array(bytes.length / 2);
  for (let i = 0; i < samples.length; i++) samples[i] = view.getInt16(2 * i, true) / 32768;
  const ctx = state.audio;
  const buffer = ctx.createBuffer(1, samples.length, SAMPLE_RATE);
  buffer.copyToChannel(samples, 0);
  const source = ctx.createBufferSource();
  source.buffer = buffer;
  source.connect(ctx.destination);
  state.playAt = Math.max(state.playAt, ctx.currentTime + 0.05);
  source.start(state.playAt);
  state.playAt += buffer.duration;
}

// Poll the turn's job until it has finished; then offer the stored audio.
async function watch(row) {
  let job;
  do {
    job = await api("GET", `/v1/jobs/${row.dataset.jobId}`);
    renderState(row, job);
    if (!FINISHED.has(job.status)) await new Promise((r) => setTimeout(r, 250));
  } while (!FINISHED.has(job.status));
  if (job.test_model) {
    $("model").textContent = `Spoken by the test model ${job.model} (random weights: its audio is noise).`;
  }
  if (job.status !== "succeeded") return;
  const path = `/v1/conversations/${state.cid}/turns/${row.dataset.turnId}/audio?format=wav`;
  const response = await fetch(path, { headers: headers() });
  if (!response.ok) throw new Error(await describe(response, "audio"));
  const player = document.createElement("audio");
  player.controls = true;
  player.src = URL.createObjectURL(await response.blob());
  row.append(player);
}

// The microphone ---------------------------------------------------------------------------

function setMic(mic, status) {
  state.mic = mic;
  if (status !== undefined) $("mic-status").textContent = status;
  renderMic();
}

function renderMic() {
  const mic = state.mic;
  const held = mic === "recorded" || mic === "sending";
  const free = mic === "idle" || mic === "recorded";
  $("mic").dataset.state = mic;
  $("record").disabled = !state.cid || !free;
  $("stop").disabled = mic !== "recording";
  $("speak").disabled = !state.cid || !free;
  $("speak").textContent = held ? "Send recording" : "Speak";
  $("text").placeholder = held ? "What you said in the recording (its transcript)" : TEXT_HINT;
  $("clip").hidden = !held;
  $("discard").hidden = !held;
  $("discard").disabled = mic !== "recorded";
}

function micError(err) {
  switch (err && err.name) {
    case "NotAllowedError":
    case "SecurityError":
      return "Microphone permission denied: allow this page to use the microphone (in the " +
        "browser's site settings), then press Record again.";
    case "NotFoundError":
    case "OverconstrainedError":
      return "No microphone found: connect one, then press Record again.";
    case "NotReadableError":
    case "AbortError":
      return `The microphone could not be opened (${err.name}): is another program using it?`;
    default:
      return `The microphone could not be opened: ${err && err.name}: ${err && err.message}`;
  }
}

async function startRecording() {
  if (!window.isSecureContext) {
    throw new Error("The microphone needs a secure page: open the playground over https, or at " +
      "http://localhost or http://127.0.0.1.");
  }
  if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia || !window.AudioWorkletNode) {
    throw new Error("This browser cannot record here (no getUserMedia or AudioWorklet).");
  }
  discardClip();
  setMic("starting", "asking for the microphone…");
  let stream;
  try {
    // The voice as it is: CSM hears it as context, so no processing of the browser's own.
    stream = await navigator.mediaDevices.getUserMedia({
      audio: { channelCount: 1, echoCancellation: false, noiseSuppression: false, autoGainControl: false },
    });
  } catch (err) {
    setMic("idle", MIC_HINT);
    throw new Error(micError(err));
  }
  // A context at the device's own rate (the server resamples the upload to 24 kHz).
  const ctx = new AudioContext();
  const rec = { ctx, stream, chunks: [], samples: 0, timer: null, node: null, done: null };
  try {
    await ctx.audioWorklet.addModule("/playground/capture.js");
    const node = new AudioWorkletNode(ctx, "parley-capture", { outputChannelCount: [1] });
    rec.node = node;
    rec.done = new Promise((resolve) => {
      node.port.onmessage = (event) => {
        if (event.data === "stopped") return resolve();
        rec.chunks.push(event.data);
        rec.samples += event.data.length;
      };
    });
    ctx.createMediaStreamSource(stream).connect(node);
    node.connect(ctx.destination); // it outputs silence; connected, it is surely pulled
    await ctx.resume();
  } catch (err) {
    for (const track of stream.getTracks()) track.stop();
    ctx.close();
    setMic("idle", MIC_HINT);
    throw new Error(`Recording could not start: ${err.message}`);
  }
  state.rec = rec;
  for (const track of stream.getAudioTracks()) {
    track.addEventListener("ended", () => guarded(stopRecording)); // unplugged, say
  }
  setMic("recording", "recording… 0.0 s (Stop when you are done)");
  rec.timer = setInterval(() => {
    const seconds = (rec.samples / ctx.sampleRate).toFixed(1);
    $("mic-status").textContent = `recording… ${seconds} s (Stop when you are done)`;
  }, 200);
}

async function stopRecording() {
  const rec = state.rec;
  if (!rec) return;
  state.rec = null;
  clearInterval(rec.timer);
  setMic("stopping");
  rec.node.port.postMessage("stop");
  // Every block before "stopped" has arrived (a port keeps its order); a context that stopped
  // running answers nothing, so wait a second at most.
  await Promise.race([rec.done, new Promise((r) => setTimeout(r, 1000))]);
  for (const track of rec.stream.getTracks()) track.stop();
  const rate = rec.ctx.sampleRate;
  rec.ctx.close();
  if (!rec.samples) {
    setMic("idle", MIC_HINT);
    throw new Error("The microphone gave no audio: nothing was recorded.");
  }
  const clip = makeClip(rec.chunks, rate);
  state.clip = clip;
  $("clip").src = clip.url;
  const mic = $("mic");
  mic.dataset.samples = String(clip.samples);
  mic.dataset.rate = String(rate);
  mic.dataset.rms = String(clip.rms);
  const seconds = (clip.samples / rate).toFixed(1);
  const level = clip.rms > 0 ? `${(20 * Math.log10(clip.rms)).toFixed(0)} dBFS` : "silent";
  const muted = clip.peak < 1e-4 ? " It is silent: is the microphone muted?" : "";
  setMic("recorded", `recorded ${seconds} s (level ${level}).${muted} Type what you said in ` +
    "the box above, then Send recording; or Discard it.");
}

// The clip as a 16-bit PCM mono WAV, with its RMS and peak (of the float samples).
function makeClip(chunks, rate) {
  const n = chunks.reduce((sum, c) => sum + c.length, 0);
  const view = new DataView(new ArrayBuffer(44 + 2 * n));
  const ascii = (at, text) => {
    for (let i = 0; i < text.length; i++) view.setUint8(at + i, text.charCodeAt(i));
  };
  ascii(0, "RIFF");
  view.setUint32(4, 36 + 2 * n, true);
  ascii(8, "WAVE");
  ascii(12, "fmt ");
  view.setUint32(16, 16, true); // the fmt chunk's size
  view.setUint16(20, 1, true); // PCM
  view.setUint16(22, 1, true); // mono
  view.setUint32(24, rate, true);
  view.setUint32(28, 2 * rate, true); // bytes per second
  view.setUint16(32, 2, true); // bytes per frame
  view.setUint16(34, 16, true); // bits per sample
  ascii(36, "data");
  view.setUint32(40, 2 * n, true);
  let at = 44;
  let squares = 0;
  let peak = 0;
  for (const chunk of chunks) {
    for (const x of chunk) {
      const s = Math.max(-1, Math.min(1, x));
      view.setInt16(at, Math.round(s * 32767), true);
      at += 2;
      squares += s * s;
      peak = Math.max(peak, Math.abs(s));
    }
  }
  const blob = new Blob([view.buffer], { type: "audio/wav" });
  return { blob, url: URL.createObjectURL(blob), samples: n, rms: n ? Math.sqrt(squares / n) : 0, peak };
}

function discardClip() {
  if (!state.clip) return;
  URL.revokeObjectURL(state.clip.url);
  state.clip = null;
  $("clip").removeAttribute("src");
  setMic("idle", MIC_HINT);
}

// Post the held clip as a provided turn of the chosen speaker, with the box's text as what was
// said: 201, stored at once; its encode job then makes its Mimi codes, context for what follows.
async function sendRecording() {
  const speaker = Number($("speaker").value);
  const form = new FormData();
  form.append("speaker", String(speaker));
  form.append("text", $("text").value.trim());
  form.append("audio", state.clip.blob, "recording.wav");
  setMic("sending");
  let response;
  try {
    const path = `/v1/conversations/${state.cid}/turns`;
    response = await fetch(path, { method: "POST", headers: headers(), body: form });
    if (!response.ok) throw new Error(await describe(response, "upload of the recording"));
  } catch (err) {
    setMic("recorded"); // the clip is kept: fix what the server said, and send it again
    throw err;
  }
  const turn = await response.json();
  discardClip();
  $("text").value = "";
  $("speaker").value = String(1 - speaker); // the other speaker answers next
  const row = turnRow(turn);
  watch(row).catch((err) => showError(err.message));
}

$("key").value = localStorage.getItem("parley.apiKey") || "";
$("new").addEventListener("click", () => guarded(newConversation));
$("bind").addEventListener("click", () => guarded(bindVoices));
$("compose").addEventListener("submit", (event) => {
  event.preventDefault();
  guarded(() => (state.clip ? sendRecording() : speak()));
});
$("record").addEventListener("click", () => guarded(startRecording));
$("stop").addEventListener("click", () => guarded(stopRecording));
$("discard").addEventListener("click", () => guarded(async () => discardClip()));
