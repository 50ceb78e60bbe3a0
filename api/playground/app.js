// Parley playground: plain JS over the public REST API (no build step, nothing fetched from
// elsewhere). Each turn is posted, its audio played from the stream endpoint as it is
// generated (raw 16-bit PCM, 24 kHz mono, through Web Audio), and its job polled for its state.
"use strict";

const SAMPLE_RATE = 24000;
const FINISHED = new Set(["succeeded", "failed", "cancelled"]);
const SPEAKERS = ["A", "B"];
const $ = (id) => document.getElementById(id);

const state = { cid: null, audio: null, playAt: 0 };

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
  $("speak").disabled = false;
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
  row.dataset.status = turn.status;
  row.dataset.pcmBytes = "0";
  row.dataset.streamed = "false";
  const who = document.createElement("span");
  who.className = "who";
  who.textContent = `${SPEAKERS[turn.speaker] ?? turn.speaker}:`;
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

async function speak(event) {
  event.preventDefault();
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

$("key").value = localStorage.getItem("parley.apiKey") || "";
$("new").addEventListener("click", () => guarded(newConversation));
$("bind").addEventListener("click", () => guarded(bindVoices));
$("compose").addEventListener("submit", (event) => guarded(() => speak(event)));
