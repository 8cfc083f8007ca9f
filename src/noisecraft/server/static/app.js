// noisecraft studio: plain JavaScript over the server's studio, gallery and A1111 APIs (no build step).
// Imagine a 2x2 grid from a prompt with Midjourney's flags, then upscale (U), vary (V), vary a region,
// zoom out or pan any picture; every picture lands in the gallery with its lineage.
"use strict";

// The presets come from the server (/presets: noisecraft's presets.toml, shared with the CLI and the APIs);
// `style` is the template's words after "{prompt}, ".
let PRESETS = [];
const ASPECTS = ["1:1", "4:5", "2:3", "3:2", "16:9", "9:16"];
const FEED_LIMIT = 12;  // blocks kept in the studio feed (all pictures stay in the gallery)
const PAGE_SIZE = 24;   // gallery rows per request

const $ = (id) => document.getElementById(id);
const state = { key: sessionStorage.getItem("noisecraft-key") || "", info: null, busy: false, task: null,
                lastSeed: null, preset: null, poller: null, stopped: false, gallery: false, mode: null };

// ---- API --------------------------------------------------------------------------------------
function authHeaders() {
  return state.key ? { Authorization: "Bearer " + state.key } : {};
}

async function api(path, options = {}) {
  const headers = { ...(options.headers || {}), ...authHeaders() };
  if (options.body !== undefined) headers["Content-Type"] = "application/json";
  const response = await fetch(path, { ...options, headers, body: options.body === undefined ? undefined : JSON.stringify(options.body) });
  if (response.status === 401) showAuth();
  return response;
}

async function errorText(response) {
  try {
    const body = await response.json();
    if (Array.isArray(body.detail)) {
      const first = body.detail[0] || {};
      return { message: first.msg || "the request was refused", field: (first.loc || [])[1] };
    }
    return { message: (body.detail && String(body.detail)) || response.statusText || `error ${response.status}` };
  } catch (e) {
    return { message: `${response.status} ${response.statusText}` };
  }
}

function newTaskId() {
  if (window.crypto && crypto.randomUUID) return "web-" + crypto.randomUUID();
  const bytes = new Uint8Array(16);
  crypto.getRandomValues(bytes);
  return "web-" + Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

// Pictures come from /gallery/{id}/image; <img src> cannot send the API key, so they are fetched
// (with it) and shown from blob: URLs, one fetch per picture per page load.
const pictures = new Map();  // id -> Promise<{url, blob}>

function picture(item) {
  if (!pictures.has(item.id)) {
    const promise = fetch(item.image_url, { headers: authHeaders() }).then(async (response) => {
      if (!response.ok) throw new Error(`picture #${item.id}: ${response.status}`);
      const blob = await response.blob();
      return { url: URL.createObjectURL(blob), blob };
    });
    promise.catch(() => pictures.delete(item.id));
    pictures.set(item.id, promise);
  }
  return pictures.get(item.id);
}

function showPicture(img, item) {
  img.width = item.width;
  img.height = item.height;
  img.dataset.id = item.id;
  img.classList.add("loading");
  picture(item).then(({ url }) => { img.src = url; img.classList.remove("loading"); })
               .catch(() => { img.classList.replace("loading", "broken"); });
}

// The A1111 `parameters` text in a PNG (tEXt, or uncompressed iTXt).
async function pngParameters(blob) {
  const bytes = new Uint8Array(await blob.arrayBuffer());
  const view = new DataView(bytes.buffer);
  for (let at = 8; at + 12 <= bytes.length;) {
    const length = view.getUint32(at);
    const type = String.fromCharCode(...bytes.subarray(at + 4, at + 8));
    const data = bytes.subarray(at + 8, at + 8 + length);
    if (type === "tEXt" || type === "iTXt") {
      const zero = data.indexOf(0);
      if (new TextDecoder("latin1").decode(data.subarray(0, zero)) === "parameters") {
        if (type === "tEXt") return new TextDecoder("latin1").decode(data.subarray(zero + 1));
        if (data[zero + 1] !== 0) return null;  // compressed iTXt: not written by noisecraft
        let text = data.indexOf(0, zero + 3) + 1;  // skip the language tag
        text = data.indexOf(0, text) + 1;           // and the translated keyword
        return new TextDecoder().decode(data.subarray(text));
      }
    }
    if (type === "IEND") break;
    at += 12 + length;
  }
  return null;
}

// ---- prompt flags -----------------------------------------------------------------------------
const FLAG_START = /(^|\s)--\w/;

function flagPattern(names) {  // `--name value` up to the next flag
  return new RegExp(`(^|\\s)--(?:${names})(?=\\s|$)(?:(?!\\s--\\w)[\\s\\S])*`, "gi");
}

function withoutFlag(text, names) {
  return text.replace(flagPattern(names), "").replace(/\s+$/, "");
}

function withFlag(text, names, flag) {  // replace (or add) one flag, e.g. withFlag(t, "ar|aspect", "--ar 16:9")
  return (withoutFlag(text, names).trim() + " " + flag).trim();
}

function flagValue(text, names) {
  const match = text.match(new RegExp(`(?:^|\\s)--(?:${names})\\s+((?:(?!\\s--\\w)[\\s\\S])*)`, "i"));
  return match ? match[1].trim() : null;
}

function splitPrompt(text) {  // {words, flags}: what to draw, and the " --ar 16:9 --seed 7" after it
  const match = FLAG_START.exec(text);
  return match ? { words: text.slice(0, match.index).trim(), flags: text.slice(match.index) } : { words: text.trim(), flags: "" };
}

function seedFlag() {
  const value = flagValue($("prompt").value, "seed");
  return value !== null && /^\d+$/.test(value) ? Number(value) : null;
}

function aspectFor(width, height) {
  let best = "1:1";
  for (const aspect of ASPECTS) {
    const [w, h] = aspect.split(":").map(Number);
    const [bw, bh] = best.split(":").map(Number);
    if (Math.abs(Math.log((width / height) * (h / w))) < Math.abs(Math.log((width / height) * (bh / bw)))) best = aspect;
  }
  return best;
}

// ---- set-up -----------------------------------------------------------------------------------
function showAuth() {
  $("auth").hidden = false;
  $("api-key").focus();
  setStatus("Enter the server's API key to continue.", true);
}

$("auth-form").addEventListener("submit", (event) => {
  event.preventDefault();
  state.key = $("api-key").value.trim();
  sessionStorage.setItem("noisecraft-key", state.key);
  $("api-key").value = "";
  pictures.clear();
  reload();
});

function fillSelect(select, values, selected, labels = values) {
  select.replaceChildren(...values.map((value, k) => {
    const option = document.createElement("option");
    option.value = String(value);
    option.textContent = String(labels[k]);
    option.selected = String(value) === String(selected);
    return option;
  }));
}

function sizeChoices(info) {
  const sizes = new Set();
  for (const scale of [0.5, 0.75, 1, 1.25, 1.5, 2, 3, 4]) {
    const side = Math.round((info.image_size * scale) / info.size_factor) * info.size_factor;
    if (side >= info.size_factor && side <= info.max_side) sizes.add(side);
  }
  return [...sizes].sort((a, b) => a - b);
}

const modelName = (title) => title.replace(/\s+\[[0-9a-f]+\]$/i, "");  // the gallery stores names, /info titles

// what the page knows of the server (sizes, samplers, whether it keeps a gallery), as a promise that actions wait for:
// Ctrl+Enter pressed while the page is still loading imagines a grid once it knows the studio is there
function reload() {
  state.ready = load();
  return state.ready;
}

async function load() {
  const response = await api("/info");
  if (!response.ok) {
    if (response.status !== 401) setStatus((await errorText(response)).message, true);
    return;
  }
  $("auth").hidden = true;
  const info = (state.info = await response.json());
  const sizes = sizeChoices(info);
  fillSelect($("width"), sizes, info.image_size);
  fillSelect($("height"), sizes, info.image_size);
  fillSelect($("sampler_name"), info.samplers, info.defaults.sampler);
  fillSelect($("model"), info.models, info.model);
  $("model").hidden = info.models.length < 2;  // one model: its name, no menu
  $("model-name").textContent = info.models.length < 2 ? info.model : "";
  $("steps").value = info.defaults.steps;
  $("steps").max = info.max_steps;
  $("cfg_scale").value = info.defaults.cfg_scale;
  $("batch_size").max = info.max_images;
  const names = [...new Set(info.models.map(modelName))];
  fillSelect($("filter-model"), ["", ...names], $("filter-model").value, ["All models", ...names]);
  $("filter-model").hidden = names.length < 2;
  const presets = await api("/presets");
  if (presets.ok) {
    PRESETS = (await presets.json()).filter((p) => p.chip).map((p) => ({ ...p, style: p.prompt.replace(/^\{prompt\},?\s*/, "") }));
    renderPresets();
  }
  const brands = await api("/brands");
  if (brands.ok) {
    const names = (await brands.json()).map((b) => b.name);
    fillSelect($("brand"), ["", ...names], $("brand").value, ["No brand", ...names]);
    $("brand-field").hidden = names.length === 0;
  }
  await loadHistory(true);
  setStatus(state.gallery ? "Ready." : "Ready. This server keeps no gallery, so pictures are one-offs with the settings under Advanced.");
}

function renderPresets() {
  const box = $("presets");
  box.replaceChildren();
  for (const preset of PRESETS) {
    const button = document.createElement("button");
    button.type = "button";
    button.className = "chip";
    button.textContent = preset.label;
    button.setAttribute("aria-pressed", "false");
    button.dataset.preset = preset.id;
    button.addEventListener("click", () => applyPreset(preset));
    box.append(button);
  }
}

function renderRatios() {
  const box = $("ratios");
  for (const aspect of ASPECTS) {
    const [w, h] = aspect.split(":").map(Number);
    const label = document.createElement("label");
    label.className = "ratio";
    const input = document.createElement("input");
    input.type = "radio";
    input.name = "aspect";
    input.value = aspect;
    input.checked = aspect === "1:1";
    input.addEventListener("change", () => setAspect(aspect));
    const shape = document.createElement("span");
    shape.className = "shape";
    shape.setAttribute("aria-hidden", "true");
    const scale = 18 / Math.max(w, h);
    shape.style.width = Math.round(w * scale) + "px";
    shape.style.height = Math.round(h * scale) + "px";
    const text = document.createElement("span");
    text.textContent = aspect;
    label.append(input, shape, text);
    box.append(label);
  }
}

function setAspect(aspect) {
  const prompt = $("prompt");
  prompt.value = withFlag(prompt.value, "ar|aspect", "--ar " + aspect);
  fitHeight(prompt);
  setStatus(`Aspect ratio ${aspect}.`);
}

function syncAspect() {  // the picker follows an --ar typed in the prompt
  const aspect = flagValue($("prompt").value, "ar|aspect") || "1:1";
  for (const input of document.querySelectorAll("input[name=aspect]")) input.checked = input.value === aspect;
}

// The subject is what the user typed before any preset's style text; a preset appends its style (before the flags).
function subjectOf(words) {
  for (const preset of PRESETS) {
    const tail = ", " + preset.style;
    if (words.endsWith(tail)) return words.slice(0, -tail.length);
    if (words === preset.style) return "";
  }
  return words;
}

function applyPreset(preset) {
  const prompt = $("prompt");
  const { words, flags } = splitPrompt(prompt.value);
  const subject = subjectOf(words).trim();
  const same = state.preset === preset.id;
  state.preset = same ? null : preset.id;
  prompt.value = (same ? subject : (subject ? subject + ", " : "") + preset.style) + flags;
  fitHeight(prompt);
  const negative = $("negative_prompt");
  const presetNegatives = PRESETS.map((p) => p.negative);
  if (!negative.value.trim() || presetNegatives.includes(negative.value.trim())) negative.value = same ? "" : preset.negative;
  fitHeight(negative);
  for (const chip of document.querySelectorAll(".chip")) {
    chip.setAttribute("aria-pressed", String(chip.dataset.preset === state.preset));
  }
  if (!subject && !same) {
    prompt.focus();
    prompt.setSelectionRange(0, 0);
    setStatus(`${preset.label}: type your subject at the start of the prompt.`);
  }
}

function fitHeight(area) {  // grow a textarea with its text (up to the CSS max-height)
  area.style.height = "auto";
  area.style.height = area.scrollHeight + 2 + "px";
}

// ---- status and progress ----------------------------------------------------------------------
function setStatus(text, error = false) {
  $("status").textContent = text;
  $("status").classList.toggle("error", error);
}

function setProgress(fraction) {
  const percent = Math.max(0, Math.min(100, Math.round(fraction * 100)));
  $("progress").querySelector(".bar").style.width = percent + "%";
  $("progress").setAttribute("aria-valuenow", String(percent));
}

function setBusy(busy, mode = null) {
  state.busy = busy;
  state.mode = busy ? mode : null;
  $("generate").disabled = busy;
  $("imagine").disabled = busy;
  $("stop").disabled = !busy;
  $("progress").classList.toggle("busy", busy);
  document.body.classList.toggle("working", busy);
  for (const button of document.querySelectorAll("button.op")) button.disabled = busy || button.dataset.gone === "true";
  if (!busy) $("preview").hidden = true;
}

function clearInvalid() {
  for (const element of document.querySelectorAll("[aria-invalid]")) element.removeAttribute("aria-invalid");
}

function markInvalid(field) {
  const element = field && $(field);
  if (element) {
    element.setAttribute("aria-invalid", "true");
    if (element.closest("details")) element.closest("details").open = true;
    element.focus();
  }
}

// A studio request carries its own task id: /sdapi/v1/progress tells how the running job is doing,
// with its picture so far (one small preview per sampling step), shown only when that job is ours.
function startProgressPolling(label, task) {
  let inFlight = false;
  const preview = $("preview");
  preview.removeAttribute("src");
  preview.hidden = true;
  state.poller = setInterval(async () => {
    if (inFlight) return;
    inFlight = true;
    try {
      const response = await api("/sdapi/v1/progress");
      if (!response.ok || !state.busy) return;
      const body = await response.json();
      const s = body.state || {};
      if (s.job !== task) {
        if (s.job) setStatus(`${label}: waiting for the job ahead of it…`);
        return;
      }
      if (s.sampling_steps > 0) {
        setProgress(body.progress);
        const eta = body.eta_relative > 0.5 ? ` · about ${Math.ceil(body.eta_relative)} s left` : "";
        setStatus(`${label}: step ${s.sampling_step} of ${s.sampling_steps}${eta}`);
      }
      if (body.current_image) {
        preview.src = "data:image/png;base64," + body.current_image;
        preview.hidden = false;
      }
    } catch (e) { /* the next poll tries again */ } finally {
      inFlight = false;
    }
  }, 300);
}

// ---- the studio -------------------------------------------------------------------------------
async function studio(path, body, label) {
  if (state.busy) return null;
  if (!state.gallery) {
    setStatus("This server keeps no gallery, so the studio cannot keep its pictures: use Advanced instead.", true);
    return null;
  }
  clearInvalid();
  setBusy(true, "studio");
  state.stopped = false;
  setProgress(0);
  setStatus(`${label}…`);
  const task = (state.task = newTaskId());
  startProgressPolling(label, task);
  const started = performance.now();
  try {
    const response = await api(path, { method: "POST", body: { ...body, task_id: task } });
    if (!response.ok) {
      const { message, field } = await errorText(response);
      if (response.status === 429) setStatus(`The server is busy (its queue is full): try again in a moment. ${message}`, true);
      else if (response.status === 401) setStatus("This server needs an API key.", true);
      else {
        setStatus(message.charAt(0).toUpperCase() + message.slice(1), true);
        if (field === "prompt") markInvalid("prompt");
      }
      return null;
    }
    const result = await response.json();
    setProgress(1);
    if (!result.items || !result.items.length) {
      setStatus(state.stopped ? "Stopped." : "The server made no pictures.", !state.stopped);
      return null;
    }
    result.seconds = ((performance.now() - started) / 1000).toFixed(1);
    return result;
  } catch (error) {
    setStatus("Could not reach the server: " + error.message, true);
    return null;
  } finally {
    clearInterval(state.poller);
    state.task = null;
    setBusy(false);
  }
}

function seedsText(items) {
  const seeds = items.map((i) => i.seed);
  const consecutive = seeds.every((s, k) => s === seeds[0] + k);
  return seeds.length > 1 && consecutive ? `seeds ${seeds[0]}–${seeds[seeds.length - 1]}` : `seed${seeds.length > 1 ? "s" : ""} ${seeds.join(", ")}`;
}

async function imagine(text = null, negative = null) {
  if (state.busy) return;
  await state.ready?.catch(() => {});  // a failed load has said why already
  if (!state.gallery) return generate();  // no gallery, no studio: one-off pictures with the Advanced settings
  clearInvalid();
  const prompt = (text ?? $("prompt").value).trim();
  const negativePrompt = (negative ?? $("negative_prompt").value).trim();
  if (!splitPrompt(prompt).words) {
    markInvalid("prompt");
    setStatus("Describe the picture you want in the prompt.", true);
    return;
  }
  const brand = $("brand").value || null;
  const control = typeof controlUnit === "function" ? controlUnit() : null;  // control.js: "keep the shape of a photo"
  const result = await studio("/studio/imagine", { prompt, negative_prompt: negativePrompt, brand, ...(control ? { control } : {}) }, "Imagining");
  if (!result) return;
  addGrid(result, { text: prompt, negative: negativePrompt });
  setStatus(`Done: 4 pictures in ${result.seconds} s (${seedsText(result.items)}).`);
  refreshHistory();
}

// vary, region, zoom, pan: with Remix on, the prompt box's words; a --seed there pins the new pictures' seed.
function changeBody(extra) {
  const body = { ...extra };
  const seed = seedFlag();
  if (seed !== null) body.seed = seed;
  if ($("remix").checked) {
    const words = splitPrompt($("prompt").value).words;
    if (words) body.prompt = words;
  }
  return body;
}

const OPERATION_LABELS = { vary: "Varying", region: "Repainting the region", zoom: "Zooming out", pan: "Panning", upscale: "Upscaling" };

async function change(item, operation, extra, exactly = false) {  // exactly: send `extra` as it is (a re-roll)
  const body = operation === "upscale" || exactly ? { ...extra } : changeBody(extra);
  const result = await studio(`/studio/${item.id}/${operation}`, body, `${OPERATION_LABELS[operation]} #${item.id}`);
  if (!result) return;
  if (operation === "upscale") {
    const made = result.items[0];
    addSingle(made, { focus: true });
    setStatus(`Done: #${made.id}, ${made.width}×${made.height}, in ${result.seconds} s${result.how ? ` (${result.how})` : ""}.`);
  } else {
    const { seed, ...again } = body;  // re-roll: the same operation with new seeds
    addGrid(result, { redo: { item, operation, body: again } });
    setStatus(`Done: 4 pictures (${result.operation} of #${item.id}) in ${result.seconds} s.`);
  }
  refreshHistory();
}

// ---- the feed: grids of four and single pictures, newest first ---------------------------------
function element(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

function opButton(text, label, onClick, extraClass = "") {
  const button = element("button", ("op " + extraClass).trim(), text);
  button.type = "button";
  if (label) { button.setAttribute("aria-label", label); button.title = label; }
  button.disabled = state.busy;
  button.addEventListener("click", onClick);
  return button;
}

function group(label, ...buttons) {
  const row = element("div", "op-group");
  row.setAttribute("role", "group");
  row.setAttribute("aria-label", label);
  const box = element("div", "op-buttons");
  box.append(...buttons);
  row.append(element("span", "op-label", label), box);
  return row;
}

function strengthText(strength) {
  return strength === null || strength === undefined ? "" : ` · ${Math.round(strength * 100) / 100}`;
}

// "from #12 · vary (subtle) · 0.5", the parent a link that opens it
function lineageLine(item, operation = item.operation, strength = item.strength) {
  const line = element("p", "lineage");
  if (item.parent_id) {
    line.append("from ");
    const link = element("button", "link parent", "#" + item.parent_id);
    link.type = "button";
    link.dataset.parent = item.parent_id;
    link.setAttribute("aria-label", `Open picture #${item.parent_id}, the one this came from`);
    link.addEventListener("click", () => openItem(item.parent_id));
    line.append(link, ` · ${operation}${strengthText(strength)}`);
  } else {
    line.append(operation || "generate");
  }
  return line;
}

function addBlock(block) {
  const feed = $("feed");
  feed.prepend(block);
  while (feed.children.length > FEED_LIMIT) feed.lastElementChild.remove();
  $("empty").hidden = true;
  $("clear").disabled = false;
  block.scrollIntoView({ block: "nearest" });
}

function addGrid(result, { text = null, negative = "", redo = null }) {
  const items = result.items;
  const first = items[0];
  const block = element("article", "block grid-block");
  block.dataset.kind = "grid";
  block.dataset.operation = result.operation;
  const head = element("header", "block-head");
  const title = element("h3", "block-title", splitPrompt(text ?? first.prompt).words || first.prompt);
  title.title = text ?? first.prompt;
  const line = result.parent ? lineageLine(first) : element("p", "lineage", "imagine");
  line.append(` · ${seedsText(items)}`);
  if (result.chaos) line.append(` · chaos ${result.chaos}`);
  line.append(` · ${first.width}×${first.height}`);
  head.append(title, line);
  const quad = element("div", "quad");
  quad.style.maxWidth = Math.round(560 * Math.min(1, first.width / first.height)) + "px";
  items.forEach((item, k) => {
    const cell = element("button", "cell");
    cell.type = "button";
    cell.dataset.id = item.id;
    cell.setAttribute("aria-label", `Open picture ${k + 1} (#${item.id}, seed ${item.seed})`);
    const img = element("img");
    img.alt = `Picture ${k + 1} of ${items.length}: ${item.prompt} (seed ${item.seed})`;
    if (Math.max(item.width, item.height) < 192) img.classList.add("pixelated");
    showPicture(img, item);
    cell.append(img, element("span", "num", String(k + 1)));
    cell.addEventListener("click", () => addSingle(item, { focus: true }));
    quad.append(cell);
  });
  const ops = element("div", "ops grid-ops");
  const again = redo ? () => change(redo.item, redo.operation, redo.body, true)
                     : () => reroll(text ?? first.prompt, negative);
  ops.append(
    group("Upscale", ...items.map((item, k) => withId(opButton(`U${k + 1}`, `Upscale picture ${k + 1}`, () => change(item, "upscale", { mode: "subtle" })), item))),
    group("Vary", ...items.map((item, k) => withId(opButton(`V${k + 1}`, `Vary picture ${k + 1} (strong)`, () => change(item, "vary", { mode: "strong" })), item)),
          opButton("↻", "Re-roll: the same again with new seeds", again, "reroll")),
  );
  block.append(head, quad, ops);
  addBlock(block);
  return block;
}

function withId(button, item) {
  button.dataset.id = item.id;
  return button;
}

function reroll(text, negative) {  // the grid's own prompt and negative prompt, new seeds
  imagine(withoutFlag(text, "seed"), negative);
}

function addSingle(item, { focus = false } = {}) {
  const top = $("feed").firstElementChild;
  if (top && top.dataset.kind === "single" && top.dataset.id === String(item.id)) {
    top.scrollIntoView({ block: "nearest" });
    if (focus) top.querySelector(".block-title").focus();
    return top;
  }
  const block = element("article", "block single-block");
  block.dataset.kind = "single";
  block.dataset.id = item.id;
  const head = element("header", "block-head");
  const title = element("h3", "block-title", item.prompt || "(no prompt)");
  title.tabIndex = -1;
  const line = lineageLine(item);
  line.prepend(`#${item.id} · `);
  const chain = element("p", "chain");
  chain.hidden = true;
  head.append(title, line, chain);

  const figure = element("figure", "big");
  const img = element("img");
  img.alt = `Picture #${item.id}: ${item.prompt}`;
  if (Math.max(item.width, item.height) < 192) img.classList.add("pixelated");
  const scale = Math.min(560 / item.width, 560 / item.height);
  img.style.width = Math.round(item.width * scale) + "px";
  showPicture(img, item);
  const caption = element("figcaption", "meta-line",
                          `seed ${item.seed} · ${item.width}×${item.height} · ${item.model} · ${new Date(item.created * 1000).toLocaleString()}`);
  figure.append(img, caption);

  const ops = element("div", "ops single-ops");
  ops.append(
    group("Vary",
          opButton("Vary (Subtle)", null, () => change(item, "vary", { mode: "subtle" })),
          opButton("Vary (Strong)", null, () => change(item, "vary", { mode: "strong" })),
          opButton("Vary (Region)", null, () => openRegion(item))),
    group("Zoom out",
          opButton("Zoom out 1.5x", null, () => change(item, "zoom", { factor: 1.5 })),
          opButton("Zoom out 2x", null, () => change(item, "zoom", { factor: 2 }))),
    group("Pan", ...[["←", "left"], ["→", "right"], ["↑", "up"], ["↓", "down"]].map(
      ([arrow, direction]) => opButton(arrow, `Pan ${direction}`, () => change(item, "pan", { direction }), "arrow"))),
    group("Upscale",
          opButton("Upscale (Subtle)", null, () => change(item, "upscale", { mode: "subtle" })),
          opButton("Upscale (Creative)", null, () => change(item, "upscale", { mode: "creative" }))),
    group("Layout", opButton("Put in a layout…", `Put picture #${item.id} in a layout`, () => openLayout(item))),  // layout.js
  );
  for (const button of ops.querySelectorAll("button.op")) button.dataset.id = item.id;

  const more = element("div", "more");
  const download = element("a", "button download", "Download");
  download.download = `noisecraft-${item.id}-${item.seed}.png`;
  download.setAttribute("aria-label", `Download picture #${item.id}`);
  picture(item).then(({ url }) => { download.href = url; }).catch(() => null);
  const copy = element("button", "copy", "Copy parameters");
  copy.type = "button";
  copy.addEventListener("click", async () => {
    const { blob } = await picture(item);
    const ok = await copyText((await pngParameters(blob)) || item.prompt);
    copy.textContent = ok ? "Copied" : "Copy failed";
    setTimeout(() => { copy.textContent = "Copy parameters"; }, 1500);
  });
  const reuse = element("button", "reuse", "Reuse seed");
  reuse.type = "button";
  reuse.addEventListener("click", () => {
    const prompt = $("prompt");
    prompt.value = withFlag(prompt.value, "seed", `--seed ${item.seed}`);
    fitHeight(prompt);
    $("seed").value = item.seed;
    setStatus(`Seed ${item.seed} is in the prompt (--seed) and in Advanced.`);
  });
  more.append(favouriteButton(item), download, copy, reuse, reopenButton(item));

  block.append(head, figure, ops, more);
  addBlock(block);
  if (focus) title.focus({ preventScroll: true });
  showChain(item, chain);
  return block;
}

async function showChain(item, chain) {  // "#20 upscale (subtle) ← #17 vary (strong) ← #3 imagine"
  if (!item.parent_id) return;
  const response = await api(`/gallery/${item.id}`).catch(() => null);
  if (!response || !response.ok) return;
  const lineage = (await response.json()).lineage || [];
  if (lineage.length < 3) return;  // the lineage line already says it all
  chain.replaceChildren("Lineage: ");
  lineage.forEach((step, k) => {
    if (k) chain.append(" ← ");
    const link = element("button", "link", `#${step.id}`);
    link.type = "button";
    link.disabled = k === 0;
    link.addEventListener("click", () => openItem(step.id));
    chain.append(link, ` ${step.operation}`);
  });
  chain.hidden = false;
}

async function openItem(id) {
  const response = await api(`/gallery/${id}`);
  if (!response.ok) {
    setStatus((await errorText(response)).message, true);
    return;
  }
  addSingle(await response.json(), { focus: true });
}

function favouriteButton(item) {
  const button = element("button", "fav");
  button.type = "button";
  button.dataset.id = item.id;
  button.append(element("span", "star", "★"), element("span", "fav-text", "Favourite"));
  button.setAttribute("aria-pressed", String(Boolean(item.favourite)));
  button.setAttribute("aria-label", `Favourite #${item.id}`);
  button.addEventListener("click", () => setFavourite(item, button.getAttribute("aria-pressed") !== "true"));
  return button;
}

function reopenButton(item) {
  const button = element("button", "reopen", "Settings");
  button.type = "button";
  button.title = "Put this picture's prompt and settings back in the form";
  button.setAttribute("aria-label", `Re-open the settings of #${item.id}`);
  button.addEventListener("click", () => reopen(item));
  return button;
}

async function setFavourite(item, value) {
  const response = await api(`/gallery/${item.id}/favourite`, { method: "POST", body: { favourite: value } });
  if (!response.ok) {
    setStatus((await errorText(response)).message, true);
    return;
  }
  item.favourite = value;
  for (const button of document.querySelectorAll(`.fav[data-id="${item.id}"]`)) button.setAttribute("aria-pressed", String(value));
  setStatus(value ? `#${item.id} is a favourite.` : `#${item.id} is no longer a favourite.`);
  if (!value && $("filter-fav").checked) {
    const row = document.querySelector(`.hist[data-id="${item.id}"]`);
    if (row) row.remove();
    updateHistoryEmpty();
  }
}

// Re-open settings: the prompt box (with --ar, --seed and --steps) and Advanced, from what made the picture.
function reopen(item) {
  const s = item.settings || {};
  let text = s.prompt ?? item.prompt ?? "";
  const aspect = aspectFor(item.width, item.height);
  if (aspect !== "1:1") text = withFlag(text, "ar|aspect", `--ar ${aspect}`);
  const seed = s.seed ?? item.seed;
  if (seed !== null && seed !== undefined) text = withFlag(text, "seed", `--seed ${seed}`);
  if (s.steps && state.info && s.steps !== state.info.defaults.steps) text = withFlag(text, "steps", `--steps ${s.steps}`);
  const prompt = $("prompt");
  prompt.value = text;
  $("negative_prompt").value = s.negative_prompt ?? item.negative_prompt ?? "";
  for (const [id, value] of [["width", s.width], ["height", s.height], ["steps", s.steps], ["cfg_scale", s.guidance_scale],
                             ["seed", seed]]) {
    if (value === null || value === undefined) continue;
    const field = $(id);
    if (field.tagName === "SELECT" && ![...field.options].some((o) => o.value === String(value))) continue;
    field.value = String(value);
  }
  if (s.sampler && [...$("sampler_name").options].some((o) => o.value === s.sampler)) $("sampler_name").value = s.sampler;
  state.preset = null;
  for (const chip of document.querySelectorAll(".chip")) chip.setAttribute("aria-pressed", "false");
  fitHeight(prompt);
  fitHeight($("negative_prompt"));
  syncAspect();
  prompt.focus();
  prompt.scrollIntoView({ block: "nearest" });
  setStatus(`The settings of #${item.id} are back in the form.`);
}

// ---- Vary (Region): paint a mask over the picture -----------------------------------------------
const paint = { item: null, drawing: false, last: null, painted: false, scale: 1 };

async function openRegion(item) {
  if (state.busy) return;
  paint.item = item;
  paint.painted = false;
  const dialog = $("region-dialog");
  const img = $("region-img");
  const canvas = $("region-canvas");
  img.width = item.width;
  img.height = item.height;
  img.alt = `Picture #${item.id}`;
  img.classList.toggle("pixelated", Math.max(item.width, item.height) < 192);
  const fit = Math.min(512 / item.width, (window.innerHeight * 0.6) / item.height);
  img.style.width = Math.round(item.width * fit) + "px";
  $("region-remix").hidden = !$("remix").checked;
  $("region-submit").disabled = true;
  dialog.showModal();
  const { url } = await picture(item);
  img.src = url;
  // the canvas draws finer than the picture (a smooth brush); the mask is made at the picture's size
  paint.scale = Math.max(1, Math.min(8, Math.ceil(img.getBoundingClientRect().width / item.width)));
  canvas.width = item.width * paint.scale;
  canvas.height = item.height * paint.scale;
  canvas.getContext("2d").clearRect(0, 0, canvas.width, canvas.height);
}

function canvasPoint(event) {
  const canvas = $("region-canvas");
  const rect = canvas.getBoundingClientRect();
  return { x: ((event.clientX - rect.left) * canvas.width) / rect.width, y: ((event.clientY - rect.top) * canvas.height) / rect.height,
           perPixel: canvas.width / rect.width };
}

function stroke(from, to) {
  const ctx = $("region-canvas").getContext("2d");
  ctx.strokeStyle = ctx.fillStyle = "#ff2d7a";
  ctx.lineCap = ctx.lineJoin = "round";
  ctx.lineWidth = Number($("brush").value) * to.perPixel;
  ctx.beginPath();
  ctx.moveTo(from.x, from.y);
  ctx.lineTo(to.x + 0.01, to.y);
  ctx.stroke();
  paint.painted = true;
  $("region-submit").disabled = false;
}

function regionMask() {  // white = repaint, black = keep; the picture's own size, hard edges
  const canvas = $("region-canvas");
  const { width, height } = paint.item;
  const out = document.createElement("canvas");
  out.width = width;
  out.height = height;
  const ctx = out.getContext("2d");
  ctx.drawImage(canvas, 0, 0, width, height);
  const data = ctx.getImageData(0, 0, width, height);
  const px = data.data;
  for (let k = 0; k < px.length; k += 4) {
    const value = px[k + 3] >= 128 ? 255 : 0;
    px[k] = px[k + 1] = px[k + 2] = value;
    px[k + 3] = 255;
  }
  ctx.putImageData(data, 0, 0);
  return out.toDataURL("image/png").split(",", 2)[1];
}

function setupRegion() {
  const canvas = $("region-canvas");
  canvas.addEventListener("pointerdown", (event) => {
    event.preventDefault();
    canvas.setPointerCapture(event.pointerId);
    paint.drawing = true;
    paint.last = canvasPoint(event);
    stroke(paint.last, paint.last);
  });
  canvas.addEventListener("pointermove", (event) => {
    if (!paint.drawing) return;
    const point = canvasPoint(event);
    stroke(paint.last, point);
    paint.last = point;
  });
  for (const type of ["pointerup", "pointercancel", "lostpointercapture"]) {
    canvas.addEventListener(type, () => { paint.drawing = false; });
  }
  $("region-clear").addEventListener("click", () => {
    canvas.getContext("2d").clearRect(0, 0, canvas.width, canvas.height);
    paint.painted = false;
    $("region-submit").disabled = true;
  });
  $("region-cancel").addEventListener("click", () => $("region-dialog").close());
  $("region-form").addEventListener("submit", (event) => {
    event.preventDefault();
    if (!paint.painted) return;
    const mask = regionMask();
    $("region-dialog").close();
    change(paint.item, "region", { mask });
  });
}

// ---- the gallery panel: history, search, filters, infinite scroll ------------------------------
const shelf = { next: null, loading: false, done: false, generation: 0, observer: null, count: 0 };

function historyQuery(before) {
  const params = new URLSearchParams({ limit: String(PAGE_SIZE) });
  const query = $("search").value.trim();
  if (query) params.set("query", query);
  if ($("filter-model").value) params.set("model", $("filter-model").value);
  if ($("filter-fav").checked) params.set("favourite", "true");
  const when = $("filter-date").value;
  if (when) {
    const start = new Date();
    start.setHours(0, 0, 0, 0);
    if (when === "week") start.setDate(start.getDate() - ((start.getDay() + 6) % 7));  // since Monday
    params.set("since", String(start.getTime() / 1000));
  }
  if (before !== null && before !== undefined) params.set("before", String(before));
  return params;
}

async function loadHistory(reset) {
  if (reset) {
    shelf.generation += 1;
    shelf.next = null;
    shelf.done = false;
    shelf.loading = false;
  }
  if (shelf.loading || shelf.done) return;
  shelf.loading = true;
  const generation = shelf.generation;
  try {
    const response = await api("/gallery?" + historyQuery(reset ? null : shelf.next));
    if (generation !== shelf.generation) return;
    if (response.status === 404) {  // started without a gallery: no panel, no studio
      state.gallery = false;
      $("history-panel").hidden = true;
      $("advanced").open = true;
      document.body.classList.add("no-gallery");
      shelf.done = true;
      return;
    }
    if (!response.ok) {
      if (response.status !== 401) setStatus((await errorText(response)).message, true);
      return;
    }
    state.gallery = true;
    $("history-panel").hidden = false;
    document.body.classList.remove("no-gallery");
    const body = await response.json();
    if (reset) { $("history").replaceChildren(); shelf.count = 0; }
    for (const item of body.items) $("history").append(historyRow(item));
    shelf.count += body.items.length;
    shelf.next = body.next;
    shelf.done = body.next === null || body.next === undefined;
    updateHistoryEmpty();
  } catch (e) {
    /* offline: the next scroll or search tries again */
  } finally {
    if (generation === shelf.generation) shelf.loading = false;
  }
  if (!shelf.done && generation === shelf.generation && shelf.observer) {
    shelf.observer.unobserve($("history-more"));  // observing again reports at once if it is still in view
    shelf.observer.observe($("history-more"));
  }
}

function refreshHistory() {
  if (state.gallery) loadHistory(true);
}

function updateHistoryEmpty() {
  const rows = $("history").children.length;
  const filtered = $("search").value.trim() || $("filter-model").value || $("filter-date").value || $("filter-fav").checked;
  $("history-empty").hidden = rows > 0;
  $("history-empty").textContent = filtered ? "No pictures match." : "No pictures yet: imagine some.";
  $("history-count").textContent = rows ? `${rows}${shelf.done ? "" : "+"} picture${rows === 1 ? "" : "s"}` : "";
}

function historyRow(item) {
  const row = element("li", "hist");
  row.dataset.id = item.id;
  const thumb = element("button", "thumb");
  thumb.type = "button";
  thumb.setAttribute("aria-label", `Open #${item.id}: ${item.prompt}`);
  const img = element("img");
  img.alt = "";
  img.classList.add("pixelated");
  showPicture(img, item);
  thumb.append(img);
  thumb.addEventListener("click", () => addSingle(item, { focus: true }));
  const body = element("div", "hist-body");
  const prompt = element("p", "hist-prompt", item.prompt || "(no prompt)");
  prompt.title = item.prompt;
  const meta = element("p", "hist-meta");
  meta.append(`#${item.id} · `);
  const line = lineageLine(item);
  meta.append(...line.childNodes);
  meta.append(` · ${item.width}×${item.height} · ${timeText(item.created)}`);
  const actions = element("div", "hist-actions");
  const remove = element("button", "del", "Delete");
  remove.type = "button";
  remove.setAttribute("aria-label", `Delete #${item.id}`);
  remove.addEventListener("click", () => deleteItem(item));
  actions.append(reopenButton(item), favouriteButton(item), remove);
  body.append(prompt, meta, actions);
  row.append(thumb, body);
  return row;
}

function timeText(unix) {
  const date = new Date(unix * 1000);
  const today = new Date();
  return date.toDateString() === today.toDateString()
    ? date.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" })
    : date.toLocaleDateString([], { day: "numeric", month: "short", year: date.getFullYear() === today.getFullYear() ? undefined : "numeric" });
}

async function deleteItem(item) {
  if (!window.confirm(`Delete picture #${item.id} (“${item.prompt}”)? This cannot be undone.`)) return;
  const response = await api(`/gallery/${item.id}`, { method: "DELETE" });
  if (!response.ok) {
    setStatus((await errorText(response)).message, true);
    return;
  }
  for (const row of document.querySelectorAll(`.hist[data-id="${item.id}"], .single-block[data-id="${item.id}"]`)) row.remove();
  for (const cell of document.querySelectorAll(`.cell[data-id="${item.id}"]`)) { cell.disabled = true; cell.classList.add("gone"); }
  for (const button of document.querySelectorAll(`button.op[data-id="${item.id}"]`)) { button.dataset.gone = "true"; button.disabled = true; }
  pictures.delete(item.id);
  updateHistoryEmpty();
  if (!$("feed").children.length) { $("empty").hidden = false; $("clear").disabled = true; }
  setStatus(`Deleted #${item.id}.`);
}

function setupHistory() {
  let timer = null;
  $("search").addEventListener("input", () => {
    clearTimeout(timer);
    timer = setTimeout(() => loadHistory(true), 250);
  });
  $("history-filters").addEventListener("submit", (event) => {
    event.preventDefault();
    clearTimeout(timer);
    loadHistory(true);
  });
  for (const id of ["filter-model", "filter-date", "filter-fav"]) $(id).addEventListener("change", () => loadHistory(true));
  shelf.observer = new IntersectionObserver((entries) => {
    if (entries.some((entry) => entry.isIntersecting) && shelf.next !== null) loadHistory(false);
  }, { rootMargin: "200px" });
  shelf.observer.observe($("history-more"));
}

// ---- Advanced: the A1111 form ------------------------------------------------------------------
function readForm() {
  const number = (id) => Number($(id).value);
  return {
    prompt: $("prompt").value.trim(),
    negative_prompt: $("negative_prompt").value.trim(),
    width: number("width"), height: number("height"), steps: number("steps"), cfg_scale: number("cfg_scale"),
    sampler_name: $("sampler_name").value, seed: $("seed").value === "" ? -1 : number("seed"),
    batch_size: number("batch_size"), n_iter: 1, send_images: true, brand: $("brand").value || null,
  };
}

async function pollQueue(task) {
  const response = await api(`/queue?task_id=${encodeURIComponent(task)}`).catch(() => null);
  if (!response || !response.ok || state.task !== task) return;
  const body = await response.json();
  const job = body.task;
  if (job.status === "queued") {
    setProgress(0);
    setStatus(job.position > 0 ? `Waiting in line: ${job.position} ahead of you…` : "Starting…");
  } else if (job.status === "running") {
    setProgress(job.progress);
    const eta = job.eta > 0.5 ? ` · about ${Math.ceil(job.eta)} s left` : "";
    const batch = job.batches > 1 ? ` · batch ${job.batch + 1}/${job.batches}` : "";
    setStatus(job.steps ? `Step ${job.step} of ${job.steps}${batch}${eta}` : "Preparing…");
  }
}

async function generate() {
  if (state.busy) return;
  clearInvalid();
  const request = readForm();
  if (!request.prompt) {
    markInvalid("prompt");
    setStatus("Describe the picture you want in the prompt.", true);
    return;
  }
  setBusy(true, "generate");
  state.stopped = false;
  setProgress(0);
  const started = performance.now();
  try {
    for (;;) {
      const task = (state.task = newTaskId());
      setStatus("Sending…");
      state.poller = setInterval(() => pollQueue(task), 400);
      const response = await api("/sdapi/v1/txt2img", { method: "POST", body: { ...request, force_task_id: task } });
      clearInterval(state.poller);
      if (response.status === 429 && !state.stopped) {
        const wait = Number(response.headers.get("Retry-After") || "2");
        setStatus(`The server is busy; trying again in ${wait} s…`);
        await new Promise((resolve) => setTimeout(resolve, wait * 1000));
        if (state.stopped) { setStatus("Stopped."); return; }
        continue;
      }
      if (!response.ok) {
        if (state.stopped) { setStatus("Stopped."); return; }
        const { message, field } = await errorText(response);
        markInvalid(field);
        setStatus(response.status === 401 ? "This server needs an API key." : message, true);
        return;
      }
      const result = await response.json();
      const info = JSON.parse(result.info);
      const block = element("article", "block cards-block");
      block.dataset.kind = "cards";
      const head = element("header", "block-head");
      head.append(element("h3", "block-title", splitPrompt(request.prompt).words || request.prompt),
                  element("p", "lineage", `generate · ${info.width}×${info.height} · ${request.steps} steps`));
      const list = element("ol", "cards");
      block.append(head, list);
      result.images.forEach((b64, k) => list.prepend(card(b64, info.all_seeds[k], info.width, info.height, info.infotexts[k])));
      addBlock(block);
      state.lastSeed = info.seed;
      $("seed-reuse").disabled = false;
      setProgress(1);
      const seconds = ((performance.now() - started) / 1000).toFixed(1);
      const count = result.images.length;
      setStatus(info.interrupted ? `Stopped; ${count} picture(s) were finished.`
                                 : `Done: ${count} picture${count === 1 ? "" : "s"} in ${seconds} s (seed ${info.seed}).`);
      refreshHistory();
      return;
    }
  } catch (error) {
    setStatus("Could not reach the server: " + error.message, true);
  } finally {
    clearInterval(state.poller);
    state.task = null;
    setBusy(false);
  }
}

async function stop() {
  state.stopped = true;
  if (state.task) await api(`/queue/${encodeURIComponent(state.task)}/cancel`, { method: "POST" }).catch(() => null);
  setStatus("Stopping…");
}

function card(b64, seed, width, height, parameters) {
  const node = $("card").content.firstElementChild.cloneNode(true);
  const url = "data:image/png;base64," + b64;
  const img = node.querySelector("img");
  img.src = url;
  img.width = width;
  img.height = height;
  img.alt = `Generated picture, seed ${seed}: ${parameters.split("\n")[0]}`;
  if (Math.max(width, height) < 192) img.classList.add("pixelated");
  node.querySelector(".seed").textContent = `Seed ${seed}`;
  node.querySelector(".size").textContent = `${width}×${height}`;
  const link = node.querySelector(".download");
  link.href = url;
  link.download = `noisecraft-${seed}.png`;
  link.setAttribute("aria-label", `Download picture with seed ${seed}`);
  const copy = node.querySelector(".copy");
  copy.addEventListener("click", async () => {
    const ok = await copyText(parameters);
    copy.textContent = ok ? "Copied" : "Copy failed";
    setTimeout(() => { copy.textContent = "Copy parameters"; }, 1500);
  });
  node.querySelector(".reuse").addEventListener("click", () => {
    $("seed").value = seed;
    $("seed").focus();
    setStatus(`Seed set to ${seed}.`);
  });
  return node;
}

async function copyText(text) {
  try {
    if (navigator.clipboard && window.isSecureContext) {
      await navigator.clipboard.writeText(text);
      return true;
    }
  } catch (e) { /* fall back below */ }
  const area = document.createElement("textarea");
  area.value = text;
  area.setAttribute("readonly", "");
  area.style.position = "fixed";
  area.style.opacity = "0";
  document.body.append(area);
  area.select();
  let ok = false;
  try { ok = document.execCommand("copy"); } catch (e) { ok = false; }
  area.remove();
  return ok;
}

// ---- wiring -----------------------------------------------------------------------------------
$("form").addEventListener("submit", (event) => { event.preventDefault(); imagine(); });
$("form").addEventListener("keydown", (event) => {
  if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) {
    event.preventDefault();
    if (event.target.closest("#advanced")) generate(); else imagine();
  }
});
$("generate").addEventListener("click", generate);
$("stop").addEventListener("click", stop);
for (const id of ["prompt", "negative_prompt"]) $(id).addEventListener("input", () => fitHeight($(id)));
$("prompt").addEventListener("input", syncAspect);
$("seed-random").addEventListener("click", () => { $("seed").value = -1; setStatus("A new random seed each time."); });
$("seed-reuse").addEventListener("click", () => {
  if (state.lastSeed !== null) { $("seed").value = state.lastSeed; setStatus(`Seed set to ${state.lastSeed}.`); }
});
$("clear").addEventListener("click", () => {
  $("feed").replaceChildren();
  $("empty").hidden = false;
  $("clear").disabled = true;
  $("prompt").focus();
});
$("model").addEventListener("change", async () => {
  const select = $("model");
  select.disabled = true;
  setStatus(`Loading ${select.value}…`);
  clearInvalid();
  const response = await api("/sdapi/v1/options", { method: "POST", body: { sd_model_checkpoint: select.value } });
  if (response.ok) await reload();
  else setStatus((await errorText(response)).message, true);
  select.disabled = false;
});

renderRatios();
setupRegion();
setupHistory();
reload();
