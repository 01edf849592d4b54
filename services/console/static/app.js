// Lineguard operator console. Plain JavaScript, no build step, no third-party code.
// Every piece of text from the server goes into the page with textContent, never as HTML.
"use strict";

const UNITS = { CEL: "°C", NU: "N·m", RPM: "rpm", "2X": "m/min", P1: "%", C62: "", GRM: "g", KWT: "kW", "2Z": "mV", AMP: "A" };
const state = { csrf: null, user: null, events: null, feed: null, actions: [], twin: null, recording: null,
  cards: new Map(), drafts: new Map() };

// What the operator types in a comment box survives the box being drawn again.
function draftInput(key) {
  const input = el("input", { class: "comment", placeholder: "Comment (optional)", maxlength: 1000 });
  input.value = state.drafts.get(key) || "";
  input.addEventListener("input", () => state.drafts.set(key, input.value));
  return input;
}

const $ = (id) => document.getElementById(id);

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "class") node.className = value;
    else if (key === "text") node.textContent = value;
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else if (key.startsWith("data")) node.setAttribute(key.replace(/[A-Z]/g, (c) => "-" + c.toLowerCase()), value);
    else node.setAttribute(key, value);
  }
  for (const child of children.flat()) {
    if (child === undefined || child === null || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function unit(code) { return code && code in UNITS ? UNITS[code] : (code || ""); }
function fmt(value) {
  if (typeof value !== "number") return value === null || value === undefined ? "–" : String(value);
  if (Number.isInteger(value)) return String(value);
  return Math.abs(value) >= 1000 ? value.toFixed(0) : Math.abs(value) >= 10 ? value.toFixed(1) : value.toFixed(2);
}
function clock(ms) { return ms ? new Date(ms).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", hourCycle: "h23" }) : ""; }
function machineName(entityId) {
  const m = state.twin && state.twin.machines.find((x) => x.entity_id === entityId);
  return m ? m.name : String(entityId || "").split(":").pop();
}
function label(attribute) { return attribute.replace(/_/g, " ").replace(/(\D)(\d)/g, "$1 $2"); }

async function api(path, options = {}) {
  const headers = Object.assign({}, options.headers || {});
  if (options.body !== undefined && !(options.body instanceof Blob)) {
    headers["Content-Type"] = "application/json";
    options.body = JSON.stringify(options.body);
  }
  if (options.method && options.method !== "GET" && state.csrf) headers["X-CSRF-Token"] = state.csrf;
  const response = await fetch(path, Object.assign({}, options, { headers, credentials: "same-origin" }));
  if (response.status === 401 && path !== "/api/login") { showSignIn(); throw new Error("signed out"); }
  return response;
}

// --- sign-in ------------------------------------------------------------------------------------------------

function showSignIn(message) {
  if (state.events) { state.events.close(); state.events = null; }
  state.csrf = null;
  $("app-view").hidden = true;
  $("who").hidden = true;
  $("banner").hidden = true;
  $("sign-in-view").hidden = false;
  $("sign-in-error").textContent = message || "";
  $("user").focus();
}

async function signIn(event) {
  event.preventDefault();
  const response = await api("/api/login", { method: "POST", body: { user: $("user").value, password: $("password").value } });
  const body = await response.json();
  if (!response.ok) { $("sign-in-error").textContent = body.error || "Sign-in failed"; return; }
  $("password").value = "";
  await start();
}

async function signOut() {
  await api("/api/logout", { method: "POST", body: {} }).catch(() => {});
  showSignIn("Signed out.");
}

async function start() {
  let response = await fetch("/api/session", { credentials: "same-origin" });
  if (response.status === 401) {
    // Behind an authenticating proxy (OIDC) the proxy already knows who this is.
    const proxied = await fetch("/api/login/proxy", { method: "POST", credentials: "same-origin" });
    if (proxied.ok) response = await fetch("/api/session", { credentials: "same-origin" });
  }
  if (!response.ok) { showSignIn(); return; }
  const session = await response.json();
  state.csrf = session.csrf;
  state.user = session.user;
  $("operator-name").textContent = session.name + " (" + session.user + ")";
  $("line-name").textContent = session.line_name;
  $("sign-in-view").hidden = true;
  $("who").hidden = false;
  $("app-view").hidden = false;
  $("talk").disabled = !(session.voice && session.voice.stt) || !window.MediaRecorder;
  $("voice-state").textContent = $("talk").disabled ? (session.voice && session.voice.error) || "Voice is off." : "";
  const [twin, feed, status] = await Promise.all([api("/api/twin"), api("/api/feed"), api("/api/status")]);
  renderTwin(await twin.json());
  const feedBody = await feed.json();
  renderFeed(feedBody);
  renderActions(feedBody);
  renderStatus(await status.json());
  listen();
}

// --- live updates -------------------------------------------------------------------------------------------

function listen() {
  if (state.events) state.events.close();
  const events = new EventSource("/api/events");
  state.events = events;
  events.addEventListener("twin", (e) => renderTwin(JSON.parse(e.data)));
  events.addEventListener("feed", (e) => renderFeed(JSON.parse(e.data)));
  events.addEventListener("actions", (e) => renderActions(JSON.parse(e.data)));
  events.addEventListener("status", (e) => renderStatus(JSON.parse(e.data)));
  events.onerror = async () => {
    // The stream ends when the session does; check which it is before the browser reconnects.
    const check = await fetch("/api/session", { credentials: "same-origin" }).catch(() => null);
    if (check && check.status === 401) showSignIn("Your session ended. Sign in again.");
    else if (!check) renderBanner(["The console itself is unreachable; retrying."]);
  };
}

function renderStatus(status) {
  const problems = [];
  for (const b of status.backends) {
    if (b.configured && b.up === false) problems.push(`${b.name} is down (${b.error || "no answer"}): ${b.purpose} unavailable`);
  }
  if (status.kafka && status.kafka.up === false) problems.push(`${status.kafka.error}: live data paused`);
  renderBanner(problems);
  $("banner").dataset.down = status.backends.filter((b) => b.configured && b.up === false).map((b) => b.name).join(" ");
}

function renderBanner(problems) {
  const banner = $("banner");
  banner.replaceChildren(...problems.map((p) => el("div", { text: p })));
  banner.hidden = problems.length === 0;
}

// --- the twin -----------------------------------------------------------------------------------------------

function renderTwin(twin) {
  state.twin = twin;
  $("line-name").textContent = twin.line_name;
  const cards = twin.machines.map((m) => {
    const st = m.state || "unknown";
    const readings = m.readings.filter((r) => r.value !== null && r.attribute !== "sensor_status").slice(0, 6).map((r) =>
      el("li", { class: "reading " + r.status, dataAttribute: r.attribute, title: r.normal ? `normal ${fmt(r.normal[0])}–${fmt(r.normal[1])} ${unit(r.unit)}` : "" },
        el("span", { class: "name", text: label(r.attribute) }),
        el("span", { class: "value", text: `${fmt(r.value)} ${unit(r.unit)}`.trim() }),
        r.normal ? el("span", { class: "range", text: `${fmt(r.normal[0])}–${fmt(r.normal[1])}` }) : null));
    const alarms = m.alarms.map((a) => el("li", { class: "alarm " + (a.severity || ""), text: `${a.severity}: ${a.message || a.alarm_type}` }));
    let inspections = null;
    if (m.inspections) {
      const rates = Object.entries(m.inspections.rates).map(([name, rate]) =>
        el("li", { class: "defect" + (rate > 0.05 ? " high" : ""), dataDefect: name },
          el("span", { class: "name", text: name }), el("span", { class: "value", text: rate === null ? "–" : (rate * 100).toFixed(1) + " %" })));
      inspections = el("div", { class: "inspections" },
        el("div", { class: "small muted", text: `${m.inspections.items} cookies judged, ${m.inspections.defective_rate === null ? "–" : (m.inspections.defective_rate * 100).toFixed(1) + " %"} defective` }),
        el("ul", { class: "defects" }, rates));
    }
    return el("button", { type: "button", class: `machine state-${st}`, dataMachine: m.id, dataState: st, dataSince: m.state_since, onclick: () => openTrends(m) },
      el("div", { class: "machine-head" },
        el("span", { class: "machine-name", text: m.name }),
        el("span", { class: "state", text: st === "unknown" ? "no state reported" : st + (st !== "running" && m.state_since ? ` since ${clock(m.state_since)}` : "") })),
      el("ul", { class: "readings" }, readings),
      alarms.length ? el("ul", { class: "alarms" }, alarms) : null,
      inspections);
  });
  $("machines").replaceChildren(...cards);
}

async function openTrends(machine) {
  const response = await api(`/api/machines/${encodeURIComponent(machine.id)}/trends`);
  const data = await response.json();
  $("trend-title").textContent = data.name + ": recent readings";
  const charts = Object.entries(data.series).map(([attribute, s]) => chart(attribute, s));
  $("trend-charts").replaceChildren(...(charts.length ? charts : [el("p", { class: "muted", text: "No readings yet." })]));
  $("trend-dialog").showModal();
}

function chart(attribute, series) {
  const NS = "http://www.w3.org/2000/svg";
  const w = 420, h = 90;
  const xs = series.points.map((p) => p[0]), ys = series.points.map((p) => p[1]);
  let lo = Math.min(...ys), hi = Math.max(...ys);
  if (series.normal) { lo = Math.min(lo, series.normal[0]); hi = Math.max(hi, series.normal[1]); }
  if (hi === lo) { hi += 1; lo -= 1; }
  const x0 = xs[0], x1 = Math.max(xs[xs.length - 1], x0 + 1);
  const px = (t) => ((t - x0) / (x1 - x0)) * (w - 4) + 2, py = (v) => h - 2 - ((v - lo) / (hi - lo)) * (h - 4);
  const svg = document.createElementNS(NS, "svg");
  svg.setAttribute("viewBox", `0 0 ${w} ${h}`);
  svg.setAttribute("class", "trend");
  if (series.normal) {
    const band = document.createElementNS(NS, "rect");
    band.setAttribute("x", 0); band.setAttribute("width", w);
    band.setAttribute("y", py(series.normal[1])); band.setAttribute("height", Math.max(1, py(series.normal[0]) - py(series.normal[1])));
    band.setAttribute("class", "normal-band");
    svg.append(band);
  }
  const line = document.createElementNS(NS, "polyline");
  line.setAttribute("points", series.points.map((p) => `${px(p[0]).toFixed(1)},${py(p[1]).toFixed(1)}`).join(" "));
  line.setAttribute("class", "trend-line");
  svg.append(line);
  const last = ys[ys.length - 1];
  return el("figure", { class: "chart", dataAttribute: attribute },
    el("figcaption", { text: `${label(attribute)}: ${fmt(last)} ${unit(series.unit)}` }), svg);
}

// --- the feed -----------------------------------------------------------------------------------------------

function renderFeed(feed) {
  state.feed = feed;
  // Keyed: a card whose recommendation did not change is kept as it is (with what the operator is typing).
  const cards = new Map();
  const recs = feed.recommendations.map((rec) => {
    const key = JSON.stringify(rec);
    const known = state.cards.get(rec.id);
    const node = known && known.key === key ? known.node : recommendationCard(rec);
    cards.set(rec.id, { key, node });
    return node;
  });
  state.cards = cards;
  $("recommendations").replaceChildren(...(recs.length ? recs : [el("p", { class: "muted", text: "No recommendations yet." })]));
  const notes = feed.notifications.map((n) => el("article", { class: `notification severity-${n.severity}`, dataNotificationId: n.notification_id },
    el("div", { class: "rec-head" }, el("span", { class: "badge", text: n.severity }), el("strong", { text: n.title }), el("span", { class: "muted small", text: clock(n.created_at) })),
    el("p", { text: n.summary })));
  $("notifications-title").hidden = notes.length === 0;
  $("notifications").replaceChildren(...notes);
  renderActions({ actions: state.actions });
}

function reference(ref) {
  return el("a", { href: "#", class: "sop-link", dataDoc: ref.doc_id, onclick: (e) => { e.preventDefault(); openSop(ref); } },
    `${ref.doc_id} ${ref.section}`);
}

function recommendationCard(rec) {
  const evidence = (rec.evidence || []).map((e) => el("li", {},
    el("span", { text: e.description }),
    e.value !== null && e.value !== undefined ? el("span", { class: "value", text: ` ${fmt(e.value)} ${unit(e.unit_code)}` }) : null));
  const steps = (rec.steps || []).map((s) => el("li", { text: s }));
  const proposed = (rec.proposed_actions || []).map((a) => el("li", { class: "proposed" },
    el("span", { text: `${machineName(a.machine_entity_id)} ${label(a.parameter)} → ${fmt(a.value)} ${unit(a.unit_code)}` }),
    el("span", { class: "muted small", text: ` ${a.reason}` })));
  const voteBox = el("div", { class: "votes" });
  renderVote(voteBox, rec);
  return el("article", { class: `rec severity-${rec.severity}`, dataRecId: rec.id },
    el("div", { class: "rec-head" },
      el("span", { class: "badge", text: rec.severity }),
      el("strong", { class: "rec-title", text: rec.title }),
      el("span", { class: "muted small", text: `${rec.trigger} · ${clock(rec.created_at)}` })),
    el("p", { class: "summary", text: rec.summary }),
    el("p", { class: "root-cause" }, el("b", { text: "Root cause: " }), rec.root_cause.description),
    evidence.length ? el("details", { open: true }, el("summary", { text: "Evidence" }), el("ul", { class: "evidence" }, evidence)) : null,
    steps.length ? el("details", { open: true }, el("summary", { text: "Steps" }), el("ol", { class: "steps" }, steps)) : null,
    proposed.length ? el("div", {}, el("b", { text: "Proposed changes" }), el("ul", { class: "proposed-actions" }, proposed), el("div", { class: "pending-for-rec" })) : null,
    (rec.references || []).length ? el("p", { class: "refs" }, el("b", { text: "SOP: " }), ...rec.references.map(reference)) : null,
    (rec.safety_notes || []).length ? el("p", { class: "safety small", text: "Safety: " + rec.safety_notes.join(" ") }) : null,
    voteBox);
}

function renderVote(box, rec) {
  if (rec.my_vote) {
    box.replaceChildren(el("span", { class: "voted", dataVote: rec.my_vote, text: rec.my_vote > 0 ? "You found this helpful." : "You found this not helpful." }));
    return;
  }
  const comment = draftInput("vote:" + rec.id);
  const send = async (vote, button) => {
    button.disabled = true;
    const response = await api(`/api/recommendations/${encodeURIComponent(rec.id)}/vote`, { method: "POST", body: { vote, comment: comment.value || null } });
    const body = await response.json();
    if (response.ok || response.status === 409) { rec.my_vote = (body.vote && body.vote.vote) || vote; renderVote(box, rec); }
    else { button.disabled = false; box.append(el("span", { class: "error", text: body.error })); }
  };
  box.replaceChildren(
    el("button", { type: "button", class: "vote up", onclick: (e) => send(1, e.currentTarget) }, "▲ Helpful"),
    el("button", { type: "button", class: "vote down", onclick: (e) => send(-1, e.currentTarget) }, "▼ Not helpful"),
    comment);
}

function renderActions(payload) {
  state.actions = payload.actions || [];
  const cards = state.actions.map(actionCard);
  $("actions").replaceChildren(...(cards.length ? cards : [el("p", { class: "muted", text: "Nothing is waiting for you." })]));
  // beside the recommendation that proposed it, too
  document.querySelectorAll(".pending-for-rec").forEach((box) => box.replaceChildren());
  for (const action of state.actions) {
    const rec = action.recommendation_id && document.querySelector(`article.rec[data-rec-id="${CSS.escape(action.recommendation_id)}"] .pending-for-rec`);
    if (rec) rec.append(actionCard(action));
  }
}

function actionCard(action) {
  const machine = machineName(action.machine_entity_id) || action.machine;
  const comment = draftInput("action:" + action.action_id);
  const result = el("span", { class: "result small" });
  const decide = async (decision, button) => {
    button.disabled = true;
    const response = await api(`/api/actions/${encodeURIComponent(action.action_id)}/${decision}`, { method: "POST", body: { comment: comment.value || null } });
    const body = await response.json();
    if (!response.ok) { result.textContent = body.error; button.disabled = false; return; }
    const after = body.action || {};
    $("decisions").prepend(el("li", { class: "decision", dataActionId: action.action_id, dataDecision: decision },
      `${clock(Date.now())} you ${decision}d ${machine} ${label(action.parameter || "")} → ${fmt(value)} ${unit(code)}` +
      (after.state ? ` (${after.state.replace(/_/g, " ")})` : "")));
  };
  const value = action.proposed_value !== undefined ? action.proposed_value : action.value;
  const code = action.unit || action.unit_code;
  return el("div", { class: "action", dataActionId: action.action_id },
    el("div", {}, el("b", { text: `${machine} ${label(action.parameter || "")}` }),
      el("span", { text: ` → ${fmt(value)} ${unit(code)}` }),
      action.current_value !== undefined && action.current_value !== null ? el("span", { class: "muted", text: ` (now ${fmt(action.current_value)})` }) : null),
    action.recommendation_title ? el("div", { class: "small muted", text: action.recommendation_title }) : null,
    action.reason ? el("div", { class: "small", text: action.reason }) : null,
    action.expires_at ? el("div", { class: "small muted", text: `expires ${clock(action.expires_at)}` }) : null,
    el("div", { class: "buttons" },
      el("button", { type: "button", class: "approve primary", onclick: (e) => decide("approve", e.currentTarget) }, "Approve"),
      el("button", { type: "button", class: "reject", onclick: (e) => decide("reject", e.currentTarget) }, "Reject"),
      comment, result));
}

async function openSop(ref) {
  const response = await api(`/api/sop/${encodeURIComponent(ref.doc_id)}?section=${encodeURIComponent(ref.section)}`);
  const body = await response.json();
  $("sop-title").textContent = response.ok ? `${body.doc_id} ${body.title}` : ref.doc_id;
  $("sop-section").textContent = response.ok ? body.section : "";
  $("sop-text").textContent = response.ok ? body.text : body.error;
  $("sop-dialog").showModal();
}

// --- chat: text and voice -------------------------------------------------------------------------------

function chatEntry(question, channel) {
  const answer = el("p", { class: "answer" });
  const side = el("div", { class: "grounds" });
  const entry = el("div", { class: "exchange", dataChannel: channel },
    el("p", { class: "question" }, el("b", { text: `${state.user}: ` }), el("span", { class: "question-text", text: question })),
    el("div", { class: "answer-row" }, answer, side));
  $("chat-log").append(entry);
  entry.scrollIntoView({ block: "end" });
  return { entry, answer, side };
}

function showGrounds(side, item) {
  const evidence = (item.evidence || []).map((e) => el("li", {}, e.description,
    e.value !== null && e.value !== undefined ? el("span", { class: "value", text: ` ${fmt(e.value)} ${unit(e.unit_code)}` }) : null));
  const refs = (item.references || []).map((r) => el("li", {}, reference(r)));
  side.replaceChildren(
    evidence.length ? el("div", {}, el("b", { text: "Evidence" }), el("ul", { class: "evidence" }, evidence)) : null,
    refs.length ? el("div", {}, el("b", { text: "Sections" }), el("ul", { class: "refs" }, refs)) : null);
}

async function readNdjson(response, onItem) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (value) buffer += decoder.decode(value, { stream: true });
    let nl;
    while ((nl = buffer.indexOf("\n")) >= 0) {
      const line = buffer.slice(0, nl).trim();
      buffer = buffer.slice(nl + 1);
      if (line) onItem(JSON.parse(line));
    }
    if (done) break;
  }
}

function handleAnswerItem(view, item) {
  if (item.type === "evidence") showGrounds(view.side, item);
  else if (item.type === "delta") view.answer.textContent += item.text;
  else if (item.type === "done" && view.entry.dataset.channel === "text") view.entry.dataset.done = "true";
  else if (item.type === "error") view.answer.append(el("span", { class: "error", text: item.error }));
}

async function ask(event) {
  event.preventDefault();
  const question = $("question").value.trim();
  if (!question) return;
  $("question").value = "";
  const view = chatEntry(question, "text");
  const response = await api("/api/chat", { method: "POST", body: { question } });
  if (!response.ok) { const body = await response.json(); handleAnswerItem(view, { type: "error", error: body.error }); return; }
  await readNdjson(response, (item) => handleAnswerItem(view, item));
}

// Push to talk: hold the button, or tap it and speak (it stops when you pause).
async function startTalking() {
  if (state.recording) return;
  let stream;
  try { stream = await navigator.mediaDevices.getUserMedia({ audio: { echoCancellation: false, noiseSuppression: false } }); }
  catch (err) { $("voice-state").textContent = "No microphone: " + err.message; return; }
  const mime = ["audio/webm;codecs=opus", "audio/ogg;codecs=opus", "audio/webm"].find((m) => MediaRecorder.isTypeSupported(m)) || "";
  const recorder = new MediaRecorder(stream, mime ? { mimeType: mime } : undefined);
  const chunks = [];
  recorder.ondataavailable = (e) => { if (e.data.size) chunks.push(e.data); };
  const context = new AudioContext();
  const analyser = context.createAnalyser();
  context.createMediaStreamSource(stream).connect(analyser);
  const samples = new Float32Array(analyser.fftSize);
  const rec = { recorder, stream, context, heard: 0, quiet: 0, started: Date.now(), held: true };
  state.recording = rec;
  $("talk").classList.add("recording");
  $("talk").dataset.recording = "true";
  $("voice-state").textContent = "Listening…";
  // End of speech: 0.7 s of quiet after at least 0.2 s of speech, or 15 s at most.
  rec.timer = setInterval(() => {
    analyser.getFloatTimeDomainData(samples);
    let sum = 0;
    for (const s of samples) sum += s * s;
    const rms = Math.sqrt(sum / samples.length);
    if (rms > 0.01) { rec.heard += 50; rec.quiet = 0; } else if (rec.heard >= 200) rec.quiet += 50;
    if ((!rec.held && rec.heard >= 200 && rec.quiet >= 700) || Date.now() - rec.started > 15000) stopTalking();
  }, 50);
  recorder.onstop = () => sendRecording(new Blob(chunks, { type: recorder.mimeType || "audio/webm" }));
  recorder.start(250);
}

function stopTalking() {
  const rec = state.recording;
  if (!rec) return;
  state.recording = null;
  clearInterval(rec.timer);
  rec.recorder.stop();
  rec.stream.getTracks().forEach((t) => t.stop());
  rec.context.close();
  $("talk").classList.remove("recording");
  $("talk").dataset.recording = "false";
  $("voice-state").textContent = "Thinking…";
}

async function sendRecording(blob) {
  const view = chatEntry("…", "voice");
  const response = await api("/api/voice", { method: "POST", body: blob, headers: { "Content-Type": blob.type || "audio/webm" } });
  if (!response.ok) { const body = await response.json(); handleAnswerItem(view, { type: "error", error: body.error }); $("voice-state").textContent = ""; return; }
  const queue = [];
  let playing = false;
  const playNext = () => {
    if (playing || !queue.length) return;
    playing = true;
    const player = queue.shift();
    player.onended = () => { playing = false; playNext(); };
    player.play().catch(() => { playing = false; });
  };
  await readNdjson(response, (item) => {
    if (item.type === "transcript") view.entry.querySelector(".question-text").textContent = item.text || "(not understood)";
    else if (item.type === "audio") {
      const player = el("audio", { controls: true, preload: "auto", src: item.url, class: "answer-audio", dataIndex: item.index });
      view.entry.append(player);
      queue.push(player);
      playNext();
    } else if (item.type === "end") { view.entry.dataset.done = "true"; $("voice-state").textContent = ""; }
    else handleAnswerItem(view, item);
  });
}

function setupTalk() {
  // Hold to talk (release ends the question), or tap and speak (a pause ends it). The microphone may open after
  // the finger is already up, so the press is judged by its own times.
  const talk = $("talk");
  let press = null;
  const judge = (rec) => {
    if (!press || press.up === null || !rec) return;
    if (press.up - press.at < 400) rec.held = false;
    else stopTalking();
    press = null;
  };
  talk.addEventListener("pointerdown", async (e) => {
    e.preventDefault();
    if (state.recording) { stopTalking(); press = null; return; }
    press = { at: Date.now(), up: null };
    await startTalking();
    judge(state.recording);
  });
  talk.addEventListener("pointerup", () => {
    if (!press) return;
    press.up = Date.now();
    judge(state.recording);
  });
}

document.addEventListener("DOMContentLoaded", () => {
  $("sign-in-form").addEventListener("submit", signIn);
  $("sign-out").addEventListener("click", signOut);
  $("chat-form").addEventListener("submit", ask);
  setupTalk();
  start();
});
