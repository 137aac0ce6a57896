"use strict";
// The page calls the classifier as a user's page calls a Dapr app: it POSTs the raw image to
// {invoke_base}/classify?model=M&top_k=K and GETs {invoke_base}/models; config.json says where
// invoke_base is (the sidecar's invoke API, or this server's /api). Answers are the service's
// JSON; errors are its gRPC status as JSON (an ErrorInfo reason in the details), or daprd's own
// {"errorCode", "message"}, under an HTTP error code.

const page = { base: "", servedBy: "" };
const byId = (id) => document.getElementById(id);

function element(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

function showStatus(text, isError) {
  const status = byId("status");
  status.textContent = text;
  status.classList.toggle("error", Boolean(isError));
}

async function call(method, options) {
  const response = await fetch(`${page.base}/${method}${options.query || ""}`, options.request);
  const text = await response.text();
  let body = null;
  try {
    body = JSON.parse(text); // daprd's errors say text/plain: parse them as JSON regardless
  } catch (_) {
    body = null;
  }
  return { ok: response.ok, status: response.status, body, text };
}

function errorText(answer) {
  const body = answer.body;
  if (body && typeof body === "object") {
    const details = Array.isArray(body.details) ? body.details : [];
    const info = details.find((d) => String(d["@type"] || "").endsWith("google.rpc.ErrorInfo"));
    const code = info ? String(info.reason).toLowerCase() : body.errorCode || "error";
    return { code, text: `${code} (HTTP ${answer.status}): ${body.message || "no message"}` };
  }
  return { code: "error", text: `HTTP ${answer.status}: ${answer.text.slice(0, 300) || "no body"}` };
}

function unreachableText(error) {
  if (/^https?:/.test(page.base)) {
    const sidecar = new URL(page.base).origin;
    return (
      `Could not read an answer from the Dapr sidecar at ${sidecar} (${error.message}). ` +
      `If daprd runs there, start it with --allowed-origins ${location.origin}: ` +
      "without it daprd sends no CORS headers, and the browser keeps its answers from this page."
    );
  }
  return `Could not reach classifier ui at ${location.origin} (${error.message}): is it still running?`;
}

const RETRY_MS = 1000;

// The service is starting, waiting for a model, or (through daprd) not healthy yet: it will be.
function notReadyYet(answer) {
  const body = answer.body || {};
  return answer.status === 503 || (body.errorCode === "ERR_DIRECT_INVOKE" && /healthy/.test(body.message || ""));
}

// Fills the model list; "retry" while the service is not ready yet, else whether it has models.
async function loadModels() {
  const select = byId("model");
  let answer;
  try {
    answer = await call("models", { request: { method: "GET" } });
  } catch (error) {
    showStatus(unreachableText(error), true);
    return false;
  }
  if (!answer.ok) {
    if (notReadyYet(answer)) {
      showStatus(`The service is not ready yet: ${errorText(answer).text}. Trying again…`, true);
      return "retry";
    }
    showStatus(`The models could not be listed: ${errorText(answer).text}`, true);
    return false;
  }
  const models = (answer.body.models || []).filter((m) => m.ready);
  const previous = select.value;
  select.replaceChildren(
    ...models.map((m) => {
      const option = element("option", "", `${m.name} (version ${m.version})`);
      option.value = m.name;
      return option;
    }),
  );
  const names = models.map((m) => m.name);
  const preferred = [previous, answer.body.default_model, names[0]].find((n) => n && names.includes(n));
  if (preferred) select.value = preferred;
  if (models.length === 0) {
    showStatus(
      "There is no model in the store yet: store one with `classifier models put NAME MODEL.tflite`, " +
        "then reload this page.",
      true,
    );
    return false;
  }
  showStatus(`${models.length} model${models.length === 1 ? "" : "s"} in the store.`, false);
  return true;
}

function resultCard(file) {
  const card = element("li", "result");
  card.dataset.file = file.name;
  const figure = element("figure");
  const image = element("img");
  image.alt = file.name;
  image.src = URL.createObjectURL(file);
  image.addEventListener("error", () => {
    figure.replaceChildren(element("p", "no-preview", "No preview: the browser cannot show this file."));
  });
  figure.append(image);
  const answer = element("div", "answer");
  answer.append(element("h3", "", file.name), element("p", "pending", "Classifying…"));
  card.append(figure, answer);
  return { card, image, answer };
}

function showPredictions(view, file, body, roundTripMs) {
  const meta = element(
    "p",
    "meta",
    `${body.model} version ${body.version} · ${Number(body.elapsed_ms).toFixed(1)} ms in the service · ` +
      `${Math.round(roundTripMs)} ms round trip`,
  );
  meta.dataset.model = body.model;
  meta.dataset.version = body.version;
  meta.dataset.elapsedMs = body.elapsed_ms;
  const parts = [element("h3", "", file.name), meta];
  if (Array.isArray(body.predictions)) {
    const list = element("ol", "predictions");
    list.setAttribute("aria-label", `Top classes for ${file.name}`);
    for (const p of body.predictions) {
      const item = element("li", "prediction");
      const score = Number(p.score);
      const bar = element("span", "bar");
      bar.setAttribute("aria-hidden", "true");
      const fill = element("span");
      fill.style.width = `${Math.max(0, Math.min(1, score)) * 100}%`;
      bar.append(fill);
      item.append(element("span", "label", p.label || `class ${p.index}`), element("span", "score", score.toFixed(3)), bar);
      list.append(item);
    }
    parts.push(list);
    if (body.predictions.length > 0) {
      view.image.alt = `${file.name}, classified as ${body.predictions[0].label || `class ${body.predictions[0].index}`}`;
    }
  } else {
    parts.push(element("pre", "output", JSON.stringify(body.output ?? body, null, 2)));
  }
  view.answer.replaceChildren(...parts);
}

function showError(view, file, text) {
  const message = element("p", "error", text);
  message.setAttribute("role", "alert");
  view.answer.replaceChildren(element("h3", "", file.name), message);
}

async function classifyOne(file) {
  const view = resultCard(file);
  byId("results").append(view.card);
  const query = `?model=${encodeURIComponent(byId("model").value)}&top_k=${encodeURIComponent(byId("top-k").value)}`;
  let bytes;
  try {
    bytes = await file.arrayBuffer();
  } catch (error) {
    showError(view, file, `The file could not be read: ${error.message}`);
    return false;
  }
  const started = performance.now();
  let answer;
  try {
    answer = await call("classify", {
      query,
      request: { method: "POST", body: bytes, headers: { "Content-Type": "application/octet-stream" } },
    });
  } catch (error) {
    showError(view, file, unreachableText(error));
    return false;
  }
  if (answer.ok && answer.body) {
    showPredictions(view, file, answer.body, performance.now() - started);
    return true;
  }
  const error = errorText(answer);
  if (error.code === "not_found") {
    showError(view, file, `${error.text}. The list of models has been reloaded.`);
    await loadModels();
  } else {
    showError(view, file, error.text);
  }
  return false;
}

async function classifyFiles(files) {
  const chosen = Array.from(files);
  if (chosen.length === 0) return;
  if (!byId("model").value) {
    showStatus("Choose a model first: there is none to choose from yet.", true);
    return;
  }
  showStatus(`Classifying ${chosen.length} image${chosen.length === 1 ? "" : "s"}…`, false);
  let failed = 0;
  for (const file of chosen) {
    if (!(await classifyOne(file))) failed += 1;
  }
  const done = chosen.length - failed;
  showStatus(`Classified ${done} of ${chosen.length}${failed ? `; ${failed} failed` : ""}.`, failed > 0);
}

function acceptDrops() {
  const zone = byId("drop-zone");
  let depth = 0; // dragenter/dragleave fire for every child element crossed
  document.addEventListener("dragenter", (event) => {
    event.preventDefault();
    depth += 1;
    zone.classList.add("dragging");
  });
  document.addEventListener("dragleave", () => {
    depth = Math.max(0, depth - 1);
    if (depth === 0) zone.classList.remove("dragging");
  });
  document.addEventListener("dragover", (event) => event.preventDefault());
  document.addEventListener("drop", (event) => {
    event.preventDefault(); // else the browser opens the dropped file instead of the page
    depth = 0;
    zone.classList.remove("dragging");
    classifyFiles(event.dataTransfer ? event.dataTransfer.files : []);
  });
}

// The stream view: GET /api/streams/<id>/events (Server-Sent Events from this server, which follows
// the results topic through its sidecar): {"type": "result", "seq", "result"} in seq order,
// {"type": "skipped", "first", "last"}, {"type": "duplicate", "seq"}, {"type": "dropped", "count"}
// (this page read too slowly and lost that many events).
const STREAM_ID = /^[A-Za-z0-9._:-]{1,128}$/;
const STREAM_ROWS = 50; // the last frames shown
const stream = { source: null, id: "", received: 0, skipped: 0, duplicates: 0, dropped: 0 };

function showStreamSummary(text, isError) {
  const summary = byId("stream-summary");
  summary.textContent = text;
  summary.classList.toggle("error", Boolean(isError));
}

function streamCounts() {
  const dropped = stream.dropped ? `, ${stream.dropped} dropped (this page fell behind)` : "";
  return (
    `Following stream ${stream.id}: ${stream.received} frame${stream.received === 1 ? "" : "s"} received, ` +
    `${stream.skipped} skipped, ${stream.duplicates} duplicate${stream.duplicates === 1 ? "" : "s"}${dropped}.`
  );
}

function frameRow(seq, result) {
  const row = element("tr");
  row.dataset.seq = String(seq);
  const cell = (text, className) => element("td", className, text);
  if (result.error) {
    row.append(cell(String(seq)), cell(`error ${result.error.code}: ${result.error.message}`, "error-cell"));
    row.lastChild.colSpan = 3;
  } else {
    const best = (result.predictions || [])[0] || {};
    const score = Number(best.score);
    row.append(
      cell(String(seq)),
      cell(best.label || (best.index !== undefined ? `class ${best.index}` : "(none)"), "label"),
      cell(Number.isFinite(score) ? score.toFixed(3) : "", "score"),
      cell(`${result.model || "?"} version ${result.version ?? "?"}`),
    );
  }
  const latency = Number(result.capture_latency_ms);
  row.append(cell(Number.isFinite(latency) ? `${Math.round(latency)} ms` : "", "latency"));
  return row;
}

function onStreamEvent(message) {
  const event = JSON.parse(message.data);
  const rows = byId("stream-frames").tBodies[0];
  if (event.type === "result") {
    stream.received += 1;
    rows.append(frameRow(event.seq, event.result));
    while (rows.rows.length > STREAM_ROWS) rows.deleteRow(0);
  } else if (event.type === "skipped") {
    stream.skipped += event.last - event.first + 1;
  } else if (event.type === "duplicate") {
    stream.duplicates += 1;
  } else if (event.type === "dropped") {
    stream.dropped += event.count;
  }
  showStreamSummary(streamCounts(), false);
}

function stopFollowing() {
  if (stream.source) stream.source.close();
  stream.source = null;
  byId("stream-follow").textContent = "Follow";
  byId("stream-id").disabled = false;
}

function follow() {
  const id = byId("stream-id").value.trim();
  if (!STREAM_ID.test(id)) {
    showStreamSummary(`"${id}" is not a stream id: 1-128 characters of A-Z a-z 0-9 . _ : -`, true);
    return;
  }
  Object.assign(stream, { id, received: 0, skipped: 0, duplicates: 0, dropped: 0 });
  byId("stream-frames").tBodies[0].replaceChildren();
  byId("stream-frames").hidden = false;
  const source = new EventSource(`api/streams/${encodeURIComponent(id)}/events`);
  stream.source = source;
  source.addEventListener("message", onStreamEvent);
  source.addEventListener("open", () => showStreamSummary(streamCounts(), false));
  source.addEventListener("error", () => {
    // EventSource reconnects by itself; say so rather than leave the counts looking live.
    if (stream.source === source) showStreamSummary(`${streamCounts()} Reconnecting to classifier ui…`, true);
  });
  byId("stream-follow").textContent = "Stop";
  byId("stream-id").disabled = true;
}

function setUpStreams(enabled) {
  const form = byId("stream-form");
  if (!enabled) {
    for (const control of form.querySelectorAll("input, button")) control.disabled = true;
    showStreamSummary(
      "Streams need a Dapr sidecar: start classifier ui with one (dapr run … -- classifier ui) " +
        "to follow the results of a stream here.",
      false,
    );
    return;
  }
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    if (stream.source) stopFollowing();
    else follow();
  });
}

async function start() {
  const picker = byId("images");
  picker.addEventListener("change", async () => {
    const files = Array.from(picker.files);
    picker.value = ""; // so that choosing the same file again classifies it again
    await classifyFiles(files);
  });
  acceptDrops();
  let config;
  try {
    config = await (await fetch("config.json")).json();
    page.base = config.invoke_base;
    page.servedBy = config.served_by;
  } catch (error) {
    showStatus(unreachableText(error), true);
    return;
  }
  byId("served-by").textContent = `Classifying with ${page.servedBy}.`;
  setUpStreams(Boolean(config.streams));
  while ((await loadModels()) === "retry") {
    await new Promise((resolve) => setTimeout(resolve, RETRY_MS));
  }
  document.body.dataset.ready = "true";
}

start();
