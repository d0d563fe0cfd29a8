// The captions page: microphone -> AudioWorklet (16 kHz PCM16) -> WebSocket -> gateway ->
// worker; results come back as JSON and are shown as provisional (partial) or settled (final)
// captions, interrupts marked, each final with its end-of-speech -> final latency.
"use strict";

const TARGET_RATE = 16000;
const FRAME_SAMPLES = 320; // 20 ms
const MAX_BUFFERED_BYTES = 1 << 20; // past this the network is behind: say so, drop audio
const SEND_LOG_S = 120; // send times kept for the latency figure
// A frame is speech when louder than this many times the noise floor, and than -42 dBFS.
// Only for the latency figure: the worker's final covers its endpoint silence too, and the
// figure should start where the speech stopped, not where that silence ended.
const SPEECH_OVER_FLOOR = 4;
const MIN_SPEECH_RMS = 0.008;

const ui = {
  microphone: document.getElementById("microphone"),
  responding: document.getElementById("responding"),
  status: document.getElementById("status"),
  finals: document.getElementById("finals"),
  partial: document.getElementById("partial"),
};

let live = null; // { ws, context, stream, node, samplesSent, noiseFloor, sends: [[endSample, ms, speech]] }

function socketUrl() {
  const page = new URL(window.location.href);
  const url = new URL("/ws", page);
  url.protocol = page.protocol === "https:" ? "wss:" : "ws:";
  url.searchParams.set("sample_rate", String(TARGET_RATE));
  const token = page.searchParams.get("token");
  if (token) url.searchParams.set("token", token);
  return url;
}

function say(text) {
  ui.status.textContent = text;
}

async function start() {
  ui.microphone.disabled = true;
  say("Starting the microphone…");
  // Made before the first await, while the click still counts as a user gesture: browsers
  // start an AudioContext made later suspended (no audio would flow).
  const context = new AudioContext();
  let stream;
  try {
    stream = await navigator.mediaDevices.getUserMedia({
      audio: { channelCount: 1, echoCancellation: true, noiseSuppression: false, autoGainControl: false },
    });
  } catch (error) {
    say(`No microphone: ${error.message}`);
    context.close();
    ui.microphone.disabled = false;
    return;
  }
  await context.audioWorklet.addModule("/static/worklet.js");
  const node = new AudioWorkletNode(context, "pcm16-capture", {
    processorOptions: { targetRate: TARGET_RATE, frameSamples: FRAME_SAMPLES },
  });
  const ws = new WebSocket(socketUrl());
  ws.binaryType = "arraybuffer";
  live = { ws, context, stream, node, samplesSent: 0, noiseFloor: MIN_SPEECH_RMS / 4, sends: [] };
  const session = live;

  ws.addEventListener("open", () => {
    ws.send(JSON.stringify({ type: "start", sample_rate: TARGET_RATE, state: currentState() }));
    // Connected only now, so the first audio sent is the first the worker hears.
    context.createMediaStreamSource(stream).connect(node);
    node.connect(context.destination); // silent output; keeps the graph pulling audio
    node.port.onmessage = (event) => sendAudio(session, event.data);
    setRunning(true);
    say("Listening. Speak now.");
  });
  ws.addEventListener("message", (event) => showResult(session, JSON.parse(event.data)));
  ws.addEventListener("close", (event) => {
    stopAudio(session);
    if (live === session) live = null;
    setRunning(false);
    const why = event.code === 1000 ? "" : ` (code ${event.code}${event.reason ? `: ${event.reason}` : ""})`;
    say(`Microphone off. Connection closed${why}.`);
  });
}

function stop() {
  if (!live) return;
  say("Finishing the last words…");
  ui.microphone.disabled = true;
  stopAudio(live);
  if (live.ws.readyState === WebSocket.OPEN) live.ws.send(JSON.stringify({ type: "end" }));
}

function stopAudio(session) {
  session.node.port.onmessage = null;
  session.stream.getTracks().forEach((track) => track.stop());
  if (session.context.state !== "closed") session.context.close();
}

function sendAudio(session, buffer) {
  const { ws } = session;
  if (ws.readyState !== WebSocket.OPEN) return;
  if (ws.bufferedAmount > MAX_BUFFERED_BYTES) {
    say("The network is behind: audio is being dropped.");
    return;
  }
  ws.send(buffer);
  session.samplesSent += buffer.byteLength / 2;
  session.sends.push([session.samplesSent, performance.now(), isSpeech(session, buffer)]);
  if (session.sends.length > (SEND_LOG_S * TARGET_RATE) / FRAME_SAMPLES) session.sends.shift();
}

function isSpeech(session, buffer) {
  const samples = new Int16Array(buffer);
  let energy = 0;
  for (const sample of samples) energy += sample * sample;
  const rms = Math.sqrt(energy / samples.length) / 32768;
  // The floor follows quiet frames down at once and creeps up (x2 in about 7 s) otherwise.
  session.noiseFloor = Math.max(1e-5, Math.min(rms, session.noiseFloor * 1.002));
  return rms > Math.max(MIN_SPEECH_RMS, session.noiseFloor * SPEECH_OVER_FLOOR);
}

// When the utterance's speech ended: the send time of its last speech frame at or before
// the final's last sample (that sample's own frame when no frame was loud enough).
function speechEndSentAt(session, audioStartS, audioEndS) {
  const startSample = Math.round(audioStartS * TARGET_RATE);
  const endSample = Math.round(audioEndS * TARGET_RATE);
  const { sends } = session;
  const last = sends.findIndex(([sentSamples]) => sentSamples >= endSample);
  if (last < 0) return null;
  for (let i = last; i >= 0 && sends[i][0] > startSample; i--) {
    if (sends[i][2]) return sends[i][1];
  }
  return sends[last][1];
}

function showResult(session, message) {
  switch (message.type) {
    case "transcript":
      if (message.is_final) showFinal(session, message);
      else showPartial(message);
      break;
    case "interrupt":
      addCaption("interrupt", "Barge-in: interrupted the assistant");
      // An interrupted assistant stops talking: back to listening, as a voice client would.
      ui.responding.checked = false;
      sendState(session);
      break;
    case "error":
      say(`Error (${message.code}): ${message.message}`);
      break;
    case "session_closed":
      say("Session closed.");
      break;
  }
}

function showPartial(message) {
  const text = message.text || "";
  const stable = Math.min(message.stable_chars || 0, text.length);
  ui.partial.querySelector(".stable").textContent = text.slice(0, stable);
  ui.partial.querySelector(".unstable").textContent = text.slice(stable);
  ui.partial.hidden = text.length === 0;
}

function showFinal(session, message) {
  ui.partial.hidden = true;
  if (!message.text) return;
  const sent = speechEndSentAt(session, message.audio_start_s || 0, message.audio_end_s || 0);
  const latencyS = sent === null ? null : (performance.now() - sent) / 1000;
  const item = addCaption("final", message.text.trim());
  if (latencyS !== null) {
    const badge = document.createElement("span");
    badge.className = "latency";
    badge.textContent = `${latencyS.toFixed(2)} s`;
    badge.title = "End of speech to final transcript (includes the worker's endpoint silence)";
    badge.setAttribute("aria-label", `final after ${latencyS.toFixed(2)} seconds`);
    item.dataset.latencyS = latencyS.toFixed(3);
    item.append(" ", badge);
  }
}

function addCaption(kind, text) {
  const item = document.createElement("li");
  item.className = kind;
  const words = document.createElement("span");
  words.className = "text";
  words.textContent = text;
  item.append(words);
  ui.finals.append(item);
  item.scrollIntoView({ block: "nearest" });
  return item;
}

function currentState() {
  return ui.responding.checked ? "responding" : "listening";
}

function setRunning(running) {
  ui.microphone.disabled = false;
  ui.microphone.textContent = running ? "Stop microphone" : "Start microphone";
  ui.microphone.setAttribute("aria-pressed", String(running));
}

ui.microphone.addEventListener("click", () => (live ? stop() : start()));
function sendState(session) {
  if (session && session.ws.readyState === WebSocket.OPEN) {
    session.ws.send(JSON.stringify({ type: "state_change", state: currentState() }));
  }
}

ui.responding.addEventListener("change", () => sendState(live));
