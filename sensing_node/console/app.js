// The operator console. It calls the node's HTTP API with the token it was signed in with
// (kept in sessionStorage) and hears of status changes on one Server-Sent Events stream; it
// reads a page's data again only when that page is opened or an event says it changed.
//
// Times: the API gives ISO 8601 strings with the offset of the node's zone (node.timezone);
// the console shows their date and time as written, so every time on the page is the node's.
"use strict";

const $ = (sel, root = document) => root.querySelector(sel);
const $$ = (sel, root = document) => Array.from(root.querySelectorAll(sel));

const state = {
  token: null,
  role: null,          // admin | operator | viewer, as GET /api/whoami says
  user: null,
  page: "overview",
  devices: [],
  channels: [],
  streams: [],
  upstreams: null,
  hello: null,         // the event stream's first message: node id, zone, retention
  events: null,        // the EventSource
  tiles: [],
  refreshTimer: null,
};

class ApiError extends Error {
  constructor(status, message, body) { super(message); this.status = status; this.body = body; }
}

async function api(path, { method = "GET", body } = {}) {
  const headers = { Authorization: `Bearer ${state.token}` };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const response = await fetch(path, {
    method, headers, body: body === undefined ? undefined : JSON.stringify(body),
  });
  let data = null;
  const type = response.headers.get("Content-Type") || "";
  if (type.includes("json")) data = await response.json();
  if (response.status === 401 && state.role) { signOut("The token is no longer accepted."); }
  if (!response.ok) {
    throw new ApiError(response.status, (data && data.error) || response.statusText, data);
  }
  return data;
}

function withToken(path, params) {
  const query = new URLSearchParams(params);
  query.set("token", state.token);  // <video src>, download links and EventSource send no header
  return `${path}?${query}`;
}

// ----- formatting -----
const text = (value) => (value === null || value === undefined || value === "" ? "–" : String(value));
const when = (iso) => (iso ? iso.slice(0, 19).replace("T", " ") : "–");  // the node's own clock
function bytes(n) {
  if (n === null || n === undefined) return "–";
  const units = ["B", "KB", "MB", "GB", "TB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return `${n.toFixed(i ? 1 : 0)} ${units[i]}`;
}
function bitrate(bps) {
  if (bps >= 1e6) return `${(bps / 1e6).toFixed(2)} Mbit/s`;
  return `${(bps / 1e3).toFixed(0)} kbit/s`;
}
function duration(s) {
  if (s === null || s === undefined || Number.isNaN(s)) return "–";
  const d = Math.floor(s / 86400), h = Math.floor((s % 86400) / 3600), m = Math.floor((s % 3600) / 60);
  return d ? `${d} d ${h} h` : h ? `${h} h ${m} min` : `${m} min`;
}
function cell(value, cls) {
  const td = document.createElement("td");
  if (value instanceof Node) td.append(value); else td.textContent = text(value);
  if (cls) td.className = cls;
  return td;
}
function row(cells) {
  const tr = document.createElement("tr");
  for (const c of cells) tr.append(Array.isArray(c) ? cell(...c) : cell(c));
  return tr;
}
function fill(tbody, rows, empty = "Nothing here.") {
  tbody.replaceChildren(...rows);
  if (!rows.length) {
    const tr = row([empty]);
    tr.firstChild.colSpan = 99; tr.firstChild.className = "hint";
    tbody.append(tr);
  }
}
function button(label, onclick) {
  const b = document.createElement("button");
  b.type = "button"; b.textContent = label; b.addEventListener("click", onclick);
  return b;
}
function show(el, message) { el.textContent = message; el.hidden = !message; }

// ----- the node's day (for the recordings timeline) -----
function nodeToday() {
  const offset = state.hello ? state.hello.utc_offset_s : -new Date().getTimezoneOffset() * 60;
  return new Date(Date.now() + offset * 1000).toISOString().slice(0, 10);
}
function nextDay(day) {
  const d = new Date(`${day}T00:00:00Z`);
  d.setUTCDate(d.getUTCDate() + 1);
  return d.toISOString().slice(0, 10);
}
// Seconds since the start of `day` of an ISO time in the node's zone, clamped to the day.
function secondsInto(day, iso) {
  const date = iso.slice(0, 10);
  if (date < day) return 0;
  if (date > day) return 86400;
  const [h, m, s] = iso.slice(11, 19).split(":").map(Number);
  const frac = /^\.\d+/.test(iso.slice(19)) ? Number(`0${iso.slice(19).match(/^\.\d+/)[0]}`) : 0;
  return h * 3600 + m * 60 + s + frac;
}
function clock(seconds) {
  seconds = Math.max(0, Math.min(86399, Math.floor(seconds)));
  const p = (n) => String(n).padStart(2, "0");
  return `${p(Math.floor(seconds / 3600))}:${p(Math.floor((seconds % 3600) / 60))}:${p(seconds % 60)}`;
}

// ----- sign-in and roles -----
async function signIn(token) {
  state.token = token;
  try {
    state.devices = await api("/api/devices");
  } catch (err) {
    state.token = null;
    if (err.status === 401) throw new Error("The token was refused.");
    if (err.status === 403) throw new Error(`Signed in, but this user may not read the node: ${err.message}`);
    throw new Error(`The node did not answer: ${err.message}`);
  }
  state.role = await inferRole();
  sessionStorage.setItem("sensing-node-token", token);
  document.body.classList.remove("signed-out", "role-admin", "role-operator", "role-viewer");
  document.body.classList.add(`role-${state.role}`);
  $("#who").textContent = `${state.user} (${state.role})`;
  connectEvents();
  await showPage(location.hash.slice(1) || "overview");
}

// The caller's role and name, from the API (which still checks every call).
async function inferRole() {
  const me = await api("/api/whoami");
  state.user = me.name;
  return me.role;
}

function signOut(message) {
  sessionStorage.removeItem("sensing-node-token");
  if (state.events) state.events.close();
  state.events = null;
  for (const tile of state.tiles) stopTile(tile);
  state.token = null; state.role = null;
  document.body.classList.add("signed-out");
  show($("#signin-error"), message || "");
}

// ----- the event stream -----
function connectEvents() {
  if (state.events) state.events.close();
  const source = new EventSource(withToken("/api/events", {}));
  state.events = source;
  source.onopen = () => $("#link").classList.add("up");
  source.onerror = () => {
    $("#link").classList.remove("up");
    // A dropped connection is retried by EventSource itself; a refused one (401, 503) closes
    // it for good: check the token (a 401 signs out) and try again a while later.
    if (source.readyState === EventSource.CLOSED && state.events === source) {
      api("/api/devices").then(() => setTimeout(() => {
        if (state.events === source) connectEvents();
      }, 10000), () => {});
    }
  };
  source.addEventListener("hello", (e) => {
    const again = state.hello !== null;  // a reconnection: what changed meanwhile was missed
    state.hello = JSON.parse(e.data);
    if (again) scheduleRefresh(0);
    $("#node-id").textContent = state.hello.node_id;
    if (!$("#rec-day").value) $("#rec-day").value = nodeToday();
    renderOverview();
  });
  for (const kind of ["device", "stream", "upstream", "health", "resync"]) {
    source.addEventListener(kind, (e) => onEvent(kind, JSON.parse(e.data)));
  }
}

function onEvent(kind, data) {
  if (kind === "device") {
    const i = state.devices.findIndex((d) => d.id === data.id);
    if (data.change === "gone") { if (i >= 0) state.devices.splice(i, 1); }
    else if (i >= 0) Object.assign(state.devices[i], { online: data.online, name: data.name });
    else state.devices.push(data);
  }
  if (kind === "stream") {
    const i = state.streams.findIndex((s) => s.channel_id === data.channel_id);
    if (data.change === "gone") { if (i >= 0) state.streams.splice(i, 1); }
    else if (i >= 0) Object.assign(state.streams[i], data);
    else state.streams.push(data);
  }
  if (kind === "health") state.health = data;
  // Figures not in the event (bitrates, counters) are read again once things settle; a
  // health event carries all there is to show.
  if (kind !== "health") scheduleRefresh(kind === "resync" || kind === "device" ? 300 : 1000);
  renderOverview();
  if (state.page === "devices") renderDevices();
}

// Only the pages that show status read it again; the live wall and the forms do not.
const STATUS_PAGES = new Set(["overview", "devices", "upstreams"]);

function scheduleRefresh(delay) {
  if (state.refreshTimer || !STATUS_PAGES.has(state.page)) return;
  state.refreshTimer = setTimeout(() => { state.refreshTimer = null; refresh(state.page); }, delay);
}

// ----- pages -----
async function showPage(name) {
  if (!$(`#page-${name}`) || $(`nav [data-page="${name}"]`).offsetParent === null) name = "overview";
  state.page = name;
  history.replaceState(null, "", `#${name}`);
  for (const el of $$(".page")) el.hidden = el.id !== `page-${name}`;
  for (const b of $$("nav [data-page]")) b.classList.toggle("current", b.dataset.page === name);
  await refresh(name);
}

async function refresh(name) {
  try {
    if (name === "overview") await loadOverview();
    if (name === "devices") await loadDevices();
    if (name === "live") await loadLive();
    if (name === "recordings") await loadRecordingsPage();
    if (name === "upstreams") await loadUpstreams();
    if (name === "grants") await loadGrants();
    if (name === "audit") await loadAudit();
  } catch (err) {
    console.error(err);
  }
}

// overview
async function loadOverview() {
  const [devices, streams, stats, health, upstreams] = await Promise.all([
    api("/api/devices"), api("/api/streams"), api("/api/stats"),
    fetch("/healthz").then((r) => r.json()), api("/api/upstreams"),
  ]);
  Object.assign(state, { devices, streams, stats, upstreams });
  state.health = health;
  state.oldest = await oldestRecording();
  renderOverview();
}

// The oldest recording's age is among the node's metrics (read from the index once a minute).
async function oldestRecording() {
  try {
    const r = await fetch("/metrics", { headers: { Authorization: `Bearer ${state.token}` } });
    if (!r.ok) return null;
    const m = (await r.text()).match(/^sensing_node_recording_oldest_age_seconds\s+(\S+)/m);
    return m ? Number(m[1]) : null;
  } catch { return null; }
}

function renderOverview() {
  const online = state.devices.filter((d) => d.online).length;
  $("#ov-online").textContent = online;
  $("#ov-offline").textContent = state.devices.length - online;
  const playing = state.streams.filter((s) => s.state === "playing");
  $("#ov-streams").textContent = playing.length;
  $("#ov-bitrate").textContent = bitrate(playing.reduce((sum, s) => sum + (s.bitrate_bps || 0), 0));
  const rec = state.stats && state.stats.recording;
  if (rec) {
    $("#ov-disk").textContent = bytes(rec.free_bytes) + (rec.disk_alarm ? " (alarm)" : "");
    $("#ov-disk").className = rec.disk_alarm ? "bad" : "";
  }
  if (state.hello) {
    $("#ov-retention").textContent = `${state.hello.retention_days} days` +
      (state.oldest !== null && state.oldest !== undefined ? `, oldest ${duration(state.oldest)}` : "");
  }
  if (state.health) {
    $("#ov-health").textContent = state.health.status;
    $("#ov-health").className = state.health.status === "ok" ? "ok" : "bad";
    $("#ov-reasons").replaceChildren(...(state.health.reasons || []).map((r) => {
      const li = document.createElement("li"); li.textContent = r; return li;
    }));
  }
  if (state.upstreams) {
    fill($("#ov-upstreams"), state.upstreams.upstreams.map((u) => row([
      [u.id, "mono"], [u.state, u.state === "registered" ? "ok" : "bad"], when(u.since), u.last_error,
    ])), "No upper platform is configured.");
  }
}

// devices and channels
async function loadDevices() {
  const [devices, channels] = await Promise.all([api("/api/devices"), api("/api/channels")]);
  state.devices = devices; state.channels = channels;
  renderDevices();
}

function matches(query, ...fields) {
  return !query || fields.some((f) => f && String(f).toLowerCase().includes(query));
}

function renderDevices() {
  const q = $("#device-search").value.trim().toLowerCase();
  const civil = (c) => c.civil_code || c.id.slice(0, 8);
  const deviceRows = state.devices
    .filter((d) => matches(q, d.id, d.name, d.id.slice(0, 8)) ||
      state.channels.some((c) => c.device_id === d.id && matches(q, c.id, c.name, civil(c))))
    .map((d) => {
      const tr = row([[d.id, "mono"], d.name, [d.online ? "online" : "offline", d.online ? "online" : "offline"],
        [d.manufacturer, d.model].filter(Boolean).join(" "), d.transport, [d.remote, "mono"],
        d.channel_count, when(d.last_keepalive)]);
      tr.dataset.device = d.id;
      return tr;
    });
  fill($("#devices-body"), deviceRows, q ? "No device matches." : "No device has registered yet.");
  const channelRows = state.channels.filter((c) => matches(q, c.id, c.name, civil(c))).map((c) => {
    const details = document.createElement("details");
    const summary = document.createElement("summary"); summary.textContent = "fields";
    const pre = document.createElement("pre"); pre.className = "mono";
    pre.textContent = Object.entries(c.catalog || {}).map(([k, v]) => `${k}: ${v}`).join("\n");
    details.append(summary, pre);
    const actions = document.createElement("span");
    actions.append(button("Live", () => { watch(c.id); }),
                   button("Recordings", () => openRecordings(c.id)));
    const tr = row([[c.id, "mono"], c.name, [c.device_id, "mono"],
      [c.status, c.status === "ON" ? "online" : "offline"], c.civil_code, details, actions]);
    tr.dataset.channel = c.id;
    return tr;
  });
  fill($("#channels-body"), channelRows, q ? "No channel matches." : "No channel known yet.");
}

// live view
async function loadLive() {
  state.channels = await api("/api/channels");
  buildWall(Number($("#wall-layout").value));
}

function buildWall(n) {
  const wall = $("#wall");
  while (state.tiles.length > n) { const t = state.tiles.pop(); stopTile(t); t.el.remove(); }
  while (state.tiles.length < n) {
    const el = $("#tile").content.firstElementChild.cloneNode(true);
    const tile = { el, video: $(".tile-video", el), select: $(".tile-channel", el), pc: null,
                   session: null, channel: null, frames: 0 };
    tile.select.addEventListener("change", () => playTile(tile, tile.select.value));
    wall.append(el);
    state.tiles.push(tile);
  }
  wall.className = `wall n${n}`;
  for (const tile of state.tiles) {
    const current = tile.select.value;
    tile.select.replaceChildren(new Option("(none)", ""),
      ...state.channels.map((c) => new Option(`${c.name || c.id} (${c.id})`, c.id)));
    tile.select.value = current;
  }
}

async function watch(channelId) {
  await showPage("live");
  const tile = state.tiles.find((t) => !t.channel) || state.tiles[0];
  tile.select.value = channelId;
  await playTile(tile, channelId);
}

function tileStatus(tile, message, bad = false) {
  const s = $(".tile-status", tile.el);
  s.textContent = message; s.className = `tile-status${bad ? " bad" : ""}`;
}

async function stopTile(tile) {
  const { pc, session } = tile;
  tile.pc = null; tile.session = null; tile.channel = null;
  if (pc) pc.close();
  tile.video.srcObject = null;
  tile.video.removeAttribute("src");
  if (session && state.token) {
    try { await api(`/api/webrtc/${encodeURIComponent(session)}`, { method: "DELETE" }); }
    catch (err) { console.warn("stopping the WebRTC session", err); }
  }
}

// One RTCPeerConnection per tile, receive-only. The node takes no trickled candidates: the
// offer goes out once ICE gathering is complete.
async function playTile(tile, channelId) {
  await stopTile(tile);
  tile.frames = 0;
  $(".tile-frames", tile.el).textContent = "0";
  if (!channelId) { tileStatus(tile, ""); return; }
  tile.channel = channelId;
  tile.asked = performance.now();
  delete tile.el.dataset.firstFrameMs;
  tileStatus(tile, "connecting…");
  const pc = new RTCPeerConnection({ iceServers: [] });
  tile.pc = pc;
  pc.addTransceiver("video", { direction: "recvonly" });
  pc.ontrack = (e) => {
    tile.video.srcObject = e.streams[0] || new MediaStream([e.track]);
    countFrames(tile, pc);
  };
  pc.onconnectionstatechange = () => {
    if (tile.pc !== pc) return;
    const s = pc.connectionState;
    tileStatus(tile, s === "connected" ? "live" : s, s === "failed" || s === "disconnected");
  };
  try {
    await pc.setLocalDescription(await pc.createOffer());
    await gathered(pc);
    const answer = await api(`/api/channels/${encodeURIComponent(channelId)}/webrtc`, {
      method: "POST", body: { sdp: pc.localDescription.sdp, type: "offer" },
    });
    if (tile.pc !== pc) return;
    tile.session = answer.session_id;
    await pc.setRemoteDescription({ type: "answer", sdp: answer.sdp });
    tileStatus(tile, `${answer.codec || ""} connecting…`);
  } catch (err) {
    if (tile.pc !== pc) return;
    pc.close(); tile.pc = null;
    if (err.status === 415 && err.body && err.body.codec === "h265") {
      tileStatus(tile, "H.265: browsers cannot play it over WebRTC. ", true);
      const link = document.createElement("a");
      link.href = "#recordings"; link.textContent = "Play the recording instead";
      link.addEventListener("click", (e) => {
        e.preventDefault(); openRecordings(channelId);
      });
      $(".tile-status", tile.el).append(link);
    } else {
      tileStatus(tile, `not playing: ${err.message}`, true);
    }
  }
}

function gathered(pc) {
  if (pc.iceGatheringState === "complete") return Promise.resolve();
  return new Promise((resolve) => {
    const done = () => { if (pc.iceGatheringState === "complete") { pc.removeEventListener("icegatheringstatechange", done); resolve(); } };
    pc.addEventListener("icegatheringstatechange", done);
    setTimeout(resolve, 3000);  // loopback gathers at once; do not wait forever elsewhere
  });
}

function countFrames(tile, pc) {
  const v = tile.video;
  if (!v.requestVideoFrameCallback) return;
  const step = (now, meta) => {
    if (tile.pc !== pc) return;
    if (!tile.el.dataset.firstFrameMs) {
      // From the choice of channel to the first frame on screen.
      tile.el.dataset.firstFrameMs = String(Math.round(now - tile.asked));
      $(".tile-frames", tile.el).title = `first frame after ${tile.el.dataset.firstFrameMs} ms`;
    }
    tile.frames = meta.presentedFrames;
    $(".tile-frames", tile.el).textContent = String(tile.frames);
    tile.el.dataset.frames = String(tile.frames);
    v.requestVideoFrameCallback(step);
  };
  v.requestVideoFrameCallback(step);
}

// recordings
function openRecordings(channelId) {
  state.recWanted = channelId;
  return showPage("recordings");
}

async function loadRecordingsPage() {
  state.channels = await api("/api/channels");
  const select = $("#rec-channel");
  const current = state.recWanted || select.value;
  state.recWanted = null;
  select.replaceChildren(...state.channels.map((c) => new Option(`${c.name || c.id} (${c.id})`, c.id)));
  if (current) select.value = current;
  if (!$("#rec-day").value) $("#rec-day").value = nodeToday();
  if (select.value) await loadTimeline();
}

async function loadTimeline() {
  const channel = $("#rec-channel").value, day = $("#rec-day").value;
  show($("#rec-message"), "");
  state.recordings = null;
  state.cursor = null;
  state.viewCenter = null;
  if (!channel || !day) return;
  try {
    state.recordings = await api(`/api/recordings?${new URLSearchParams({
      channel, start: `${day}T00:00:00`, end: `${nextDay(day)}T00:00:00` })}`);
  } catch (err) {
    $("#timeline-bar").replaceChildren(); show($("#rec-message"), err.message); return;
  }
  const found = state.recordings;
  const total = found.segments.reduce((sum, s) => sum + s.bytes, 0);
  $("#rec-summary").textContent = `${found.segments.length} segments (${bytes(total)}), ${found.gaps.length} gaps` +
    (found.segments.length ? `, from ${when(found.segments[0].start)} to ${when(found.segments[found.segments.length - 1].end)}` : "");
  if (found.segments.length) {
    $("#exp-start").value = found.segments[0].start.slice(11, 19);
    $("#exp-end").value = clock(secondsInto(day, found.segments[found.segments.length - 1].end) + 1);
  }
  renderTimeline();
}

// The part of the day on show: the whole day, or a zoomed window around the play position
// when the zoom was chosen (or around the first recording).
function timelineView() {
  const span = Number($("#rec-zoom").value);
  const day = $("#rec-day").value;
  const segs = (state.recordings && state.recordings.segments) || [];
  const center = state.viewCenter ?? (segs.length ? secondsInto(day, segs[0].start) : 43200);
  const from = Math.max(0, Math.min(86400 - span, center - span / 2));
  return { from, span };
}

function renderTimeline() {
  const day = $("#rec-day").value, found = state.recordings;
  const { from, span } = timelineView();
  const ticks = [];
  for (let i = 0; i < 6; i++) {
    const t = document.createElement("span"); t.textContent = clock(from + (i * span) / 6);
    ticks.push(t);
  }
  $(".timeline .hours").replaceChildren(...ticks);
  const blocks = [];
  const place = (cls, item, title) => {
    const a = Math.max(secondsInto(day, item.start), from);
    const b = Math.min(secondsInto(day, item.end), from + span);
    if (b < a) return;  // outside the window
    const el = document.createElement("div");
    el.className = cls;
    el.style.left = `${((a - from) / span) * 100}%`;
    el.style.width = `${((b - a) / span) * 100}%`;
    el.title = title;
    el.dataset.start = item.start; el.dataset.end = item.end;
    blocks.push(el);
  };
  if (found) {
    for (const s of found.segments) place("segment", s, `${when(s.start)} – ${when(s.end)}, ${s.frames} frames, ${s.codec}`);
    for (const g of found.gaps) place("gap", g, `gap ${when(g.start)} – ${when(g.end)}: ${g.reason}`);
  }
  if (state.cursor !== null && state.cursor !== undefined && state.cursor >= from && state.cursor <= from + span) {
    const cursor = document.createElement("div");
    cursor.className = "cursor";
    cursor.style.left = `${((state.cursor - from) / span) * 100}%`;
    blocks.push(cursor);
  }
  $("#timeline-bar").replaceChildren(...blocks);
}

function purpose() {
  const p = $("#rec-purpose").value.trim();
  if (!p) { show($("#rec-message"), "Say why (purpose): playback and export are audited with it."); }
  return p;
}

// A click on the timeline plays from there to the end of the day (or of the recordings).
function playFrom(seconds) {
  const p = purpose();
  if (!p) return;
  show($("#rec-message"), "");
  const day = $("#rec-day").value, channel = $("#rec-channel").value;
  const segs = (state.recordings && state.recordings.segments) || [];
  // Start within a segment: the first one that ends after the click.
  const seg = segs.find((s) => secondsInto(day, s.end) > seconds);
  if (!seg) { show($("#rec-message"), "Nothing was recorded after that time."); return; }
  const from = Math.max(seconds, secondsInto(day, seg.start));
  const to = Math.min(86399, secondsInto(day, segs[segs.length - 1].end) + 1);
  state.cursor = from;
  renderTimeline();
  const video = $("#rec-video");
  video.src = withToken("/api/recordings/play", {
    channel, start: `${day}T${clock(from)}`, end: `${day}T${clock(to)}`, purpose: p });
  video.play().catch(() => {});
}

function exportRange(e) {
  e.preventDefault();
  const p = purpose();
  if (!p) return;
  const day = $("#rec-day").value, channel = $("#rec-channel").value;
  const start = $("#exp-start").value, end = $("#exp-end").value;
  if (!start || !end || end <= start) { show($("#rec-message"), "The export's end must be after its start."); return; }
  show($("#rec-message"), "");
  const link = document.createElement("a");
  link.href = withToken("/api/recordings/export", {
    channel, start: `${day}T${start.length === 5 ? start + ":00" : start}`,
    end: `${day}T${end.length === 5 ? end + ":00" : end}`, format: $("#exp-format").value, purpose: p });
  link.download = "";
  document.body.append(link); link.click(); link.remove();
}

// upstreams
async function loadUpstreams() {
  state.upstreams = await api("/api/upstreams");
  fill($("#upstreams-body"), state.upstreams.upstreams.map((u) => row([
    [u.id, "mono"], [u.address, "mono"], [u.state, u.state === "registered" ? "ok" : "bad"], when(u.since),
    `${u.sessions} of ${u.max_streams}`, u.subscriptions, u.last_error,
  ])), "No upper platform is configured.");
  fill($("#up-sessions-body"), state.upstreams.sessions.map((s) => row([
    [s.upstream, "mono"], [s.channel_id, "mono"], s.kind, s.state, when(s.started), s.packets,
  ])), "No session.");
}

// grants
async function loadGrants() {
  const grants = await api("/api/grants");
  fill($("#grants-body"), grants.map((g) => row([
    [g.id, "mono"], g.consumer, [g.channels.join(", "), "mono"], g.actions.join(", "), g.purpose,
    `${when(g.valid_from)} – ${when(g.valid_to)}`, `${g.sessions} of ${g.max_sessions}`,
    [g.active ? "yes" : "no", g.active ? "ok" : "bad"],
    g.source === "api" ? button("Revoke", () => revokeGrant(g.id)) : "configuration file",
  ])), "No grant.");
}

async function revokeGrant(id) {
  if (!confirm(`Revoke grant ${id}? The sessions it carries end at once.`)) return;
  try { await api(`/api/grants/${encodeURIComponent(id)}`, { method: "DELETE" }); }
  catch (err) { show($("#grant-message"), err.message); }
  await loadGrants();
}

async function createGrant(e) {
  e.preventDefault();
  const f = new FormData(e.target);
  const list = (name) => String(f.get(name)).split(/[\s,]+/).filter(Boolean);
  try {
    await api("/api/grants", { method: "POST", body: {
      consumer: f.get("consumer"), channels: list("channels"), actions: list("actions"),
      purpose: f.get("purpose"), valid_from: f.get("valid_from"), valid_to: f.get("valid_to"),
      max_sessions: Number(f.get("max_sessions") || 1),
    } });
    show($("#grant-message"), "");
    e.target.reset();
  } catch (err) { show($("#grant-message"), err.message); }
  await loadGrants();
}

// audit
async function loadAudit() {
  const f = new FormData($("#audit-form"));
  const query = new URLSearchParams({ limit: "500" });
  for (const [k, v] of f.entries()) if (v) query.set(k, v);
  const entries = await api(`/api/audit?${query}`);
  fill($("#audit-body"), entries.map((a) => row([
    when(a.at), a.actor, a.action, [a.channel_id, "mono"],
    a.start ? `${when(a.start)} – ${when(a.end)}` : "", a.purpose,
    [a.result, a.result === "ok" ? "ok" : "bad"], a.detail,
  ])), "No entry matches.");
}

// ----- wiring -----
document.addEventListener("DOMContentLoaded", () => {
  $("#signin-form").addEventListener("submit", async (e) => {
    e.preventDefault();
    show($("#signin-error"), "");
    try { await signIn($("#token").value.trim()); $("#token").value = ""; }
    catch (err) { show($("#signin-error"), err.message); }
  });
  $("#signout").addEventListener("click", () => signOut(""));
  for (const b of $$("nav [data-page]")) b.addEventListener("click", () => showPage(b.dataset.page));
  $("#device-search").addEventListener("input", renderDevices);
  $("#wall-layout").addEventListener("change", (e) => buildWall(Number(e.target.value)));
  $("#rec-search").addEventListener("click", loadTimeline);
  $("#rec-channel").addEventListener("change", loadTimeline);
  $("#rec-day").addEventListener("change", loadTimeline);
  $("#rec-zoom").addEventListener("change", () => { state.viewCenter = state.cursor; renderTimeline(); });
  $("#timeline-bar").addEventListener("click", (e) => {
    const box = e.currentTarget.getBoundingClientRect();
    const { from, span } = timelineView();
    playFrom(from + ((e.clientX - box.left) / box.width) * span);
  });
  $("#export-form").addEventListener("submit", exportRange);
  $("#grant-form").addEventListener("submit", createGrant);
  $("#audit-form").addEventListener("submit", (e) => { e.preventDefault(); loadAudit(); });
  window.addEventListener("beforeunload", () => { for (const t of state.tiles) stopTile(t); });
  const saved = sessionStorage.getItem("sensing-node-token");
  if (saved) signIn(saved).catch((err) => signOut(err.message));
});
