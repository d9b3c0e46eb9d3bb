// The TurboVid playground: the public API from a browser (service/playground.py says what it does).
// Live events are read with fetch() rather than EventSource, which cannot send an Authorization header.
"use strict";

const $ = (id) => document.getElementById(id);
const AUTH = document.body.dataset.auth === "on";
const KEY_STORAGE = "turbovid.apiKey";
// What the page did, for tests and the curious: every progress value shown, every event received.
const playground = { models: {}, jobId: null, progressLog: [], events: [], abort: null, urls: [] };
window.playground = playground;

// 1. API access ----------------------------------------------------------------------------------
function authHeaders() {
  const key = $("api-key").value.trim();
  return AUTH && key ? { Authorization: "Bearer " + key } : {};
}

async function api(path, options = {}) {
  const resp = await fetch(path, { ...options, headers: { ...authHeaders(), ...(options.headers || {}) } });
  if (!resp.ok) {
    let message = `${resp.status} ${resp.statusText}`;
    try {
      const body = await resp.json();
      if (body.error) message = body.error.message + (body.error.param ? ` (${body.error.param})` : "");
    } catch (_) { /* not JSON */ }
    const err = new Error(message);
    err.status = resp.status;
    throw err;
  }
  return resp;
}

async function blobUrl(path) {
  // content and previews need the Authorization header too, so they are fetched, not linked
  const blob = await (await api(path)).blob();
  const url = URL.createObjectURL(blob);
  playground.urls.push(url);
  return url;
}

// 2. models and the form -------------------------------------------------------------------------
function secondsChoices(model) {
  // frames are 4k+1 at 16 fps: quarter seconds up to 2 s, whole seconds above
  const out = [];
  for (let q = 1; q / 4 <= model.max_seconds + 1e-9; q++) {
    const s = q / 4;
    if (s <= 2 || Number.isInteger(s)) out.push(s);
  }
  return out;
}

function fillSelect(select, values, selected) {
  select.replaceChildren(...values.map((v) => {
    const opt = document.createElement("option");
    opt.value = String(v);
    opt.textContent = String(v);
    opt.selected = String(v) === String(selected);
    return opt;
  }));
}

function onModelChange() {
  const model = playground.models[$("model").value];
  if (!model) return;
  fillSelect($("size"), model.sizes, model.default_size);
  fillSelect($("seconds"), secondsChoices(model), (model.default_frames - 1) / 16);
  const steps = model.num_steps;
  if (steps) {
    $("steps").min = steps.min;
    $("steps").max = steps.max;
    $("steps").placeholder = `default ${steps.default} (${steps.min}-${steps.max})`;
  }
  $("image-row").hidden = model.kind !== "i2v";
  $("image").required = model.kind === "i2v";
  describe(model);
}

function describe(model) {
  const workers = model.available ? "a worker is ready" : "no worker is ready yet (jobs wait in the queue)";
  $("model-info").textContent = `${model.kind === "i2v" ? "image-to-video" : "text-to-video"}, up to ` +
    `${model.max_seconds} s at 16 fps; ${workers}`;
}

async function loadModels() {
  try {
    const body = await (await api("/v1/models")).json();
    playground.models = Object.fromEntries(body.data.map((m) => [m.id, m]));
    const previous = $("model").value;
    if (previous && playground.models[previous]) {
      describe(playground.models[previous]); // a refresh: keep what the user chose
    } else {
      fillSelect($("model"), body.data.map((m) => m.id), body.data[0] && body.data[0].id);
      onModelChange();
    }
    $("form-error").textContent = "";
  } catch (err) {
    $("form-error").textContent = err.status === 401 ? "Enter a valid API key." : `Could not list models: ${err.message}`;
  }
}

async function submit(event) {
  event.preventDefault();
  $("form-error").textContent = "";
  const form = new FormData();
  form.append("prompt", $("prompt").value);
  form.append("model", $("model").value);
  form.append("size", $("size").value);
  form.append("seconds", $("seconds").value);
  if ($("seed").value !== "") form.append("seed", $("seed").value);
  if ($("steps").value !== "") form.append("num_steps", $("steps").value);
  const image = $("image").files[0];
  if (!$("image-row").hidden && image) form.append("input_reference", image);
  $("submit").disabled = true;
  try {
    const video = await (await api("/v1/videos", { method: "POST", body: form })).json();
    showJob(video);
    loadJobs();
  } catch (err) {
    $("form-error").textContent = err.message;
  } finally {
    $("submit").disabled = false;
  }
}

// 3. one job: its live events --------------------------------------------------------------------
function setProgress(value) {
  const bar = $("progress");
  if (value < Number(bar.value)) return; // progress never goes back
  bar.value = value;
  $("progress-text").textContent = `${value} %`;
  playground.progressLog.push(value);
}

function showJob(video) {
  if (playground.abort) playground.abort.abort();
  playground.urls.forEach((u) => URL.revokeObjectURL(u));
  playground.urls = [];
  playground.jobId = video.id;
  playground.progressLog = [];
  playground.events = [];
  $("job").hidden = false;
  $("job-id").textContent = video.id;
  $("progress").value = 0;
  setProgress(video.progress || 0);
  $("status").textContent = video.status;
  $("queue-position").textContent = "";
  $("stage").textContent = "";
  $("elapsed").textContent = "";
  $("job-error").textContent = "";
  $("preview-box").hidden = true;
  $("video-box").hidden = true;
  $("video").removeAttribute("src");
  playground.abort = new AbortController();
  follow(video.id, playground.abort.signal);
}

function parseBlock(block) {
  // one SSE event: "field: value" lines; ":" starts a comment
  const ev = { id: null, event: "message", data: [] };
  for (const line of block.split("\n")) {
    if (!line || line.startsWith(":")) continue;
    const colon = line.indexOf(":");
    const field = colon < 0 ? line : line.slice(0, colon);
    let value = colon < 0 ? "" : line.slice(colon + 1);
    if (value.startsWith(" ")) value = value.slice(1);
    if (field === "id") ev.id = value;
    else if (field === "event") ev.event = value;
    else if (field === "data") ev.data.push(value);
  }
  return ev.data.length ? { id: ev.id, event: ev.event, data: ev.data.join("\n") } : null;
}

async function follow(id, signal) {
  let lastId = null;
  for (let attempt = 0; !signal.aborted; attempt++) {
    try {
      const headers = lastId ? { "Last-Event-ID": lastId } : {};
      const resp = await api(`/v1/videos/${id}/events`, { headers, signal });
      const reader = resp.body.pipeThrough(new TextDecoderStream()).getReader();
      let buffer = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += value.replace(/\r\n/g, "\n");
        let end;
        while ((end = buffer.indexOf("\n\n")) >= 0) {
          const ev = parseBlock(buffer.slice(0, end));
          buffer = buffer.slice(end + 2);
          if (!ev) continue;
          if (ev.id) lastId = ev.id;
          if (await onEvent(id, ev.event, JSON.parse(ev.data))) return;
        }
      }
    } catch (err) {
      if (signal.aborted) return;
      if (err.status && err.status < 500) {
        $("job-error").textContent = err.message;
        return;
      }
    }
    // the connection dropped before the end: resume after the last event seen
    await new Promise((r) => setTimeout(r, Math.min(5000, 500 * (attempt + 1))));
  }
}

async function onEvent(id, type, data) {
  if (id !== playground.jobId) return true;
  playground.events.push({ type, ...data });
  setProgress(data.progress);
  $("elapsed").textContent = `${data.elapsed_s.toFixed(1)} s`;
  $("queue-position").textContent = type === "queued" && data.queue_position != null
    ? `(${data.queue_position} ahead in the queue)` : "";
  if (type === "queued") $("status").textContent = "queued";
  if (type === "started" || type === "stage" || type === "preview") $("status").textContent = "in progress";
  if (data.stage) {
    $("stage").textContent = data.stage.replace("_", " ") + (data.steps ? ` ${data.step}/${data.steps}` : "");
  }
  if (type === "preview" && data.preview) {
    try {
      $("preview").src = await blobUrl(data.preview);
      $("preview-box").hidden = false;
    } catch (_) { /* the job moved on; the next preview will do */ }
  }
  if (type === "completed") {
    $("status").textContent = "completed";
    $("stage").textContent = "";
    const url = await blobUrl(`/v1/videos/${id}/content`);
    $("video").src = url;
    $("download").href = url;
    $("download").download = `${id}.mp4`;
    $("video-box").hidden = false;
    $("video").play().catch(() => {});
    loadJobs();
    return true;
  }
  if (type === "failed") {
    $("status").textContent = "failed";
    $("job-error").textContent = data.error ? `${data.error.code}: ${data.error.message}` : "the job failed";
    loadJobs();
    return true;
  }
  return false;
}

// 4. recent jobs ---------------------------------------------------------------------------------
async function loadJobs() {
  try {
    const body = await (await api("/v1/videos?limit=10")).json();
    $("jobs").replaceChildren(...body.data.map((v) => {
      const tr = document.createElement("tr");
      for (const text of [v.id, v.status, `${v.progress} %`, v.model, v.prompt]) {
        const td = document.createElement("td");
        td.textContent = text;
        tr.appendChild(td);
      }
      tr.addEventListener("click", () => showJob(v));
      return tr;
    }));
  } catch (_) {
    $("jobs").replaceChildren();
  }
}

// 5. start -----------------------------------------------------------------------------------------
$("key-row").hidden = !AUTH;
$("api-key").value = AUTH ? localStorage.getItem(KEY_STORAGE) || "" : "";
$("api-key").addEventListener("change", () => {
  localStorage.setItem(KEY_STORAGE, $("api-key").value.trim());
  loadModels();
  loadJobs();
});
$("model").addEventListener("change", onModelChange);
$("form").addEventListener("submit", submit);
$("refresh").addEventListener("click", loadJobs);
loadModels();
loadJobs();
setInterval(loadModels, 15000); // worker availability changes
