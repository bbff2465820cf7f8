// sam2-video annotate: the page. Plain JS + canvas, talking to the JSON API of server.py.
"use strict";

const $ = (id) => document.getElementById(id);
const canvas = $("canvas"), ctx = canvas.getContext("2d");
const overlay = document.createElement("canvas"), overlayCtx = overlay.getContext("2d");
const decoder = document.createElement("canvas"), decoderCtx = decoder.getContext("2d", { willReadFrequently: true });

// DAVIS / PASCAL VOC palette: the colours of the exported PNGs; colour -> id decodes served masks
const PALETTE = [...Array(256).keys()].map((index) => {
  let r = 0, g = 0, b = 0, v = index;
  for (let bit = 0; bit < 8; bit++) {
    r |= (v & 1) << (7 - bit); g |= ((v >> 1) & 1) << (7 - bit); b |= ((v >> 2) & 1) << (7 - bit);
    v >>= 3;
  }
  return [r, g, b];
});
const COLOUR_TO_ID = new Map(PALETTE.map(([r, g, b], id) => [(r << 16) | (g << 8) | b, id]));

const S = {
  info: null, frame: 0, selected: null, version: 0, frameVersions: {}, running: false,
  lastDirection: "", images: new Map(), masks: new Map(), busyText: "", repropagate: null, drag: null,
};

async function api(method, path, body) {
  const response = await fetch(path, {
    method, headers: body === undefined ? {} : { "Content-Type": "application/json" },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const data = await response.json();
  if (!response.ok) throw new Error(data.error || `${method} ${path}: HTTP ${response.status}`);
  return data;
}

function showMessage(text) { $("message").textContent = text; }

async function guarded(work) {
  try { showMessage(""); return await work(); } catch (err) { showMessage(err.message); }
  return undefined;
}

// ------------------------------------------------------------------ session and frames
async function loadSession() {
  const info = await api("GET", "/api/session");
  S.info = info;
  S.frameVersions = info.frame_versions;
  S.version = Math.max(S.version, info.version);
  if (!info.objects.some((o) => o.obj_id === S.selected)) S.selected = info.objects.length ? info.objects[0].obj_id : null;
  if (canvas.width !== info.width) {
    canvas.width = overlay.width = decoder.width = info.width;
    canvas.height = overlay.height = decoder.height = info.height;
    $("slider").max = info.num_frames - 1;
    $("video-name").textContent = `${info.video} · ${info.num_frames} frames · ${info.width}x${info.height}`;
  }
  renderObjects();
  applyStatus(info.status);
  await showFrame(S.frame);
}

function frameImage(frame) {
  if (!S.images.has(frame)) {
    const image = new Image();
    image.src = `/api/frames/${frame}.jpg`;
    S.images.set(frame, image.decode().then(() => image));
    if (S.images.size > 48) S.images.delete(S.images.keys().next().value);
  }
  return S.images.get(frame);
}

async function frameMask(frame) {
  const version = S.frameVersions[frame];
  if (version === undefined) return null;
  const cached = S.masks.get(frame);
  if (cached && cached.version === version) return cached.ids;
  const image = new Image();
  image.src = `/api/masks/${frame}.png?v=${version}`;
  await image.decode();
  decoderCtx.drawImage(image, 0, 0);
  const rgba = decoderCtx.getImageData(0, 0, decoder.width, decoder.height).data;
  const ids = new Uint8Array(rgba.length / 4);
  for (let p = 0, q = 0; q < ids.length; p += 4, q++) ids[q] = COLOUR_TO_ID.get((rgba[p] << 16) | (rgba[p + 1] << 8) | rgba[p + 2]) || 0;
  S.masks.set(frame, { version, ids });
  if (S.masks.size > 64) S.masks.delete(S.masks.keys().next().value);
  return ids;
}

async function showFrame(frame) {
  frame = Math.max(0, Math.min(S.info.num_frames - 1, frame));
  S.frame = frame;
  $("slider").value = frame;
  $("frame-label").textContent = `frame ${frame + 1} / ${S.info.num_frames}`;
  const [image, ids] = await Promise.all([frameImage(frame), frameMask(frame)]);
  if (S.frame === frame) draw(image, ids);
}

// ------------------------------------------------------------------ drawing
function draw(image, ids) {
  const { width, height } = canvas;
  ctx.drawImage(image, 0, 0, width, height);
  if (ids) {
    const alpha = Math.round(255 * Number($("opacity").value));
    const hidden = new Set(S.info.objects.filter((o) => o.hidden).map((o) => o.obj_id));
    const pixels = overlayCtx.createImageData(width, height);
    const data = pixels.data;
    for (let q = 0, p = 0; q < ids.length; q++, p += 4) {
      const id = ids[q];
      if (id === 0 || id === 255 || hidden.has(id)) continue;
      const [r, g, b] = PALETTE[id];
      data[p] = r; data[p + 1] = g; data[p + 2] = b; data[p + 3] = alpha;
    }
    overlayCtx.putImageData(pixels, 0, 0);
    ctx.drawImage(overlay, 0, 0);
  }
  drawPrompts();
  drawTimeline();
}

function drawPrompts() {
  const radius = Math.max(4, canvas.width / 150);
  ctx.lineWidth = Math.max(2, canvas.width / 400);
  for (const object of S.info.objects) {
    if (object.hidden) continue;
    const [r, g, b] = PALETTE[object.obj_id];
    for (const action of effectivePrompts(object.obj_id, S.frame)) {
      ctx.strokeStyle = `rgb(${r},${g},${b})`;
      if (action.box) {
        const [x0, y0, x1, y1] = action.box;
        ctx.strokeRect(x0, y0, x1 - x0, y1 - y0);
        continue;
      }
      ctx.beginPath();
      ctx.arc(action.point[0], action.point[1], radius, 0, 2 * Math.PI);
      ctx.fillStyle = action.label === 1 ? "#2ecc71" : "#e74c3c";
      ctx.fill();
      ctx.strokeStyle = "#fff";
      ctx.stroke();
    }
  }
  if (S.drag && S.drag.moved) {
    ctx.setLineDash([6, 4]);
    ctx.strokeStyle = "#fff";
    const [x0, y0, x1, y1] = S.drag.box;
    ctx.strokeRect(x0, y0, x1 - x0, y1 - y0);
    ctx.setLineDash([]);
  }
}

function drawTimeline() {
  const line = $("timeline"), n = S.info.num_frames;
  line.width = line.clientWidth || 600;
  const c = line.getContext("2d"), step = line.width / n;
  c.fillStyle = "#333"; c.fillRect(0, 0, line.width, line.height);
  c.fillStyle = "#3fa34d";
  for (const frame of Object.keys(S.frameVersions)) c.fillRect(frame * step, 0, Math.max(step, 1), line.height);
  c.fillStyle = "#fff";
  for (const action of S.info.actions) c.fillRect(action.frame * step, 0, Math.max(step / 3, 2), line.height);
  c.fillStyle = "#8ab4f8"; c.fillRect(S.frame * step, 0, Math.max(step, 2), 3);
}

function effectivePrompts(objId, frame) {
  const actions = S.info.actions.filter((a) => a.obj_id === objId && a.frame === frame);
  let last = -1;
  actions.forEach((a, k) => { if (a.box) last = k; });
  return last >= 0 ? actions.slice(last) : actions;
}

async function redraw() { await showFrame(S.frame); }

// ------------------------------------------------------------------ objects
function renderObjects() {
  const list = $("objects");
  list.replaceChildren();
  for (const object of S.info.objects) {
    const [r, g, b] = PALETTE[object.obj_id];
    const item = document.createElement("li");
    item.dataset.objId = object.obj_id;
    item.className = (object.obj_id === S.selected ? "selected " : "") + (object.hidden ? "hidden-object" : "");
    item.innerHTML = `<span class="swatch" style="background: rgb(${r},${g},${b})"></span>` +
      `<span class="name"></span><button class="hide" title="hide / show">${object.hidden ? "show" : "hide"}</button>` +
      `<button class="delete" title="delete object">✕</button>`;
    item.querySelector(".name").textContent = `${object.name} (id ${object.obj_id})`;
    item.addEventListener("click", () => { S.selected = object.obj_id; renderObjects(); });
    item.querySelector(".hide").addEventListener("click", (e) => {
      e.stopPropagation();
      guarded(async () => { await api("PATCH", `/api/objects/${object.obj_id}`, { hidden: !object.hidden }); await loadSession(); });
    });
    item.querySelector(".delete").addEventListener("click", (e) => {
      e.stopPropagation();
      if (!confirm(`Delete ${object.name} and all its prompts and masks?`)) return;
      edit(() => api("DELETE", `/api/objects/${object.obj_id}?since=${S.version}`));
    });
    list.appendChild(item);
  }
}

async function addObject() {
  const object = await api("POST", "/api/objects", {});
  S.selected = object.obj_id;
  await loadSession();
  return object;
}

// ------------------------------------------------------------------ edits
async function stopPropagation() {
  clearTimeout(S.repropagate);
  if (S.running) { await api("POST", "/api/cancel", {}); S.running = false; }
}

async function edit(request, frame) {
  return guarded(async () => {
    await stopPropagation();
    S.busyText = "segmenting…";
    applyStatus();
    try {
      const result = await request();
      mergeChanged(result);
      await loadSession();
      if (frame !== undefined && $("auto").checked && S.lastDirection) {
        S.repropagate = setTimeout(() => propagate(S.lastDirection, frame), 700);
      }
      return result;
    } finally {
      S.busyText = "";
      applyStatus();
    }
  });
}

async function prompt(body) {
  if (S.selected === null) await guarded(addObject);
  if (S.selected === null) return;
  const kind = body.box ? "box" : "click";
  await edit(() => api("POST", `/api/${kind}?since=${S.version}`, { frame: S.frame, obj_id: S.selected, ...body }), S.frame);
}

function canvasPoint(event) {
  const rect = canvas.getBoundingClientRect();
  // the canvas keeps the video's aspect ratio inside its box (object-fit: contain)
  const scale = Math.min(rect.width / canvas.width, rect.height / canvas.height);
  const offsetX = (rect.width - canvas.width * scale) / 2, offsetY = (rect.height - canvas.height * scale) / 2;
  return [(event.clientX - rect.left - offsetX) / scale, (event.clientY - rect.top - offsetY) / scale];
}

canvas.addEventListener("contextmenu", (e) => e.preventDefault());
canvas.addEventListener("mousedown", (e) => {
  S.drag = { start: canvasPoint(e), screen: [e.clientX, e.clientY], moved: false, box: null };
});
canvas.addEventListener("mousemove", (e) => {
  if (!S.drag) return;
  if (Math.hypot(e.clientX - S.drag.screen[0], e.clientY - S.drag.screen[1]) > 6) S.drag.moved = true;
  if (S.drag.moved) {
    const [x, y] = canvasPoint(e), [sx, sy] = S.drag.start;
    S.drag.box = [Math.min(x, sx), Math.min(y, sy), Math.max(x, sx), Math.max(y, sy)];
    redraw();
  }
});
canvas.addEventListener("mouseup", (e) => {
  const drag = S.drag;
  S.drag = null;
  if (!drag) return;
  const clamp = (v, max) => Math.max(0, Math.min(max, v));
  if (drag.moved && drag.box) {
    const [x0, y0, x1, y1] = drag.box;
    prompt({ box: [clamp(x0, canvas.width), clamp(y0, canvas.height), clamp(x1, canvas.width), clamp(y1, canvas.height)] });
  } else {
    const [x, y] = drag.start;
    if (x < 0 || y < 0 || x > canvas.width || y > canvas.height) return;
    prompt({ x, y, label: e.button === 2 || e.shiftKey ? 0 : 1 });
  }
});

// ------------------------------------------------------------------ propagation and status
async function propagate(direction, frame = S.frame) {
  await guarded(async () => {
    clearTimeout(S.repropagate);
    applyStatus(await api("POST", "/api/propagate", { frame, direction }));
    S.lastDirection = direction;
  });
}

function mergeChanged(result) {
  Object.assign(S.frameVersions, result.changed);
  S.version = Math.max(S.version, result.version);
}

function applyStatus(status) {
  if (status) {
    S.running = status.running;
    if (status.direction) S.lastDirection = status.direction;
    if (status.message) showMessage(status.message);
    $("progress").hidden = !status.running;
    $("progress").max = status.total || 1;
    $("progress").value = status.done;
    S.statusText = status.text;
  }
  $("status").textContent = S.busyText || S.statusText || "ready";
  $("cancel").disabled = !S.running;
  for (const id of ["propagate-forward", "propagate-backward", "propagate-both", "export"]) $(id).disabled = S.running;
}

async function poll() {
  try {
    const wasRunning = S.running;
    const status = await api("GET", `/api/status?since=${S.version}`);
    const changed = Object.keys(status.changed).map(Number);
    mergeChanged(status);
    applyStatus(status);
    if (status.running && changed.length) {
      // follow the propagation: show the frame that finished last
      const latest = changed.reduce((a, b) => (status.changed[a] > status.changed[b] ? a : b));
      await showFrame(latest);
    } else if (changed.includes(S.frame) || (wasRunning && !status.running)) {
      await loadSession();
    }
  } catch (err) {
    showMessage(`lost contact with the server: ${err.message}`);
  }
  setTimeout(poll, S.running ? 150 : 1000);
}

// ------------------------------------------------------------------ controls
$("slider").addEventListener("input", () => showFrame(Number($("slider").value)));
$("prev").addEventListener("click", () => showFrame(S.frame - 1));
$("next").addEventListener("click", () => showFrame(S.frame + 1));
$("opacity").addEventListener("input", redraw);
$("add-object").addEventListener("click", () => guarded(addObject));
$("undo").addEventListener("click", () => edit(() => api("POST", `/api/undo?since=${S.version}`, {})));
$("clear").addEventListener("click", () => {
  if (S.selected !== null) edit(() => api("POST", `/api/clear?since=${S.version}`, { frame: S.frame, obj_id: S.selected }));
});
$("propagate-forward").addEventListener("click", () => propagate("forward"));
$("propagate-backward").addEventListener("click", () => propagate("backward"));
$("propagate-both").addEventListener("click", () => propagate("both"));
$("cancel").addEventListener("click", () => guarded(async () => { clearTimeout(S.repropagate); applyStatus(await api("POST", "/api/cancel", {})); }));
$("export").addEventListener("click", () => guarded(async () => {
  S.busyText = "exporting…"; applyStatus();
  try {
    const result = await api("POST", "/api/export", {});
    $("export-result").textContent = `exported ${result.annotated_frames} annotated frames to ${result.davis}`;
  } finally { S.busyText = ""; applyStatus(); }
}));
document.addEventListener("keydown", (e) => {
  if (e.target.tagName === "INPUT" && e.target.type !== "range") return;
  if (e.key === "ArrowLeft" || e.key === "ArrowRight") {
    e.preventDefault();
    showFrame(S.frame + (e.key === "ArrowRight" ? 1 : -1));
  } else if ((e.ctrlKey || e.metaKey) && e.key === "z") {
    e.preventDefault();
    $("undo").click();
  }
});

loadSession().then(poll, (err) => showMessage(`cannot load the session: ${err.message}`));
