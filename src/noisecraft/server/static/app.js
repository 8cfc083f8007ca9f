// noisecraft web page: plain JavaScript over the server's A1111-compatible API (no build step).
"use strict";

const PRESETS = [
  {
    id: "product", label: "Product shot",
    style: "professional product photography, isolated on a clean white seamless background, soft diffused studio lighting with a gentle shadow, three-quarter view from slightly above, sharp focus, high detail",
    negative: "blurry, cluttered background, text, watermark, logo, low quality, distorted",
  },
  {
    id: "menu", label: "Menu item",
    style: "appetizing food photography for a restaurant menu, served on a plain ceramic plate, warm natural window light, shallow depth of field, 45-degree overhead angle, fresh vibrant colours",
    negative: "blurry, messy, unappetizing, text, watermark, low quality",
  },
  {
    id: "social", label: "Social-media post",
    style: "eye-catching social media post, bold vibrant colours, clean flat illustration style, bright even lighting, centered composition, straight-on view, empty space for a caption",
    negative: "blurry, cluttered, dull colours, text, watermark, low quality",
  },
  {
    id: "signage", label: "Signage",
    style: "simple bold sign graphic, high-contrast flat colours, clean vector style, even front lighting, straight-on frontal view, readable from a distance, plain background",
    negative: "blurry, clutter, fine details, gradients, watermark, low quality",
  },
];

const $ = (id) => document.getElementById(id);
const state = { key: sessionStorage.getItem("noisecraft-key") || "", info: null, busy: false, task: null,
                lastSeed: null, preset: null, poller: null, stopped: false };

// ---- API --------------------------------------------------------------------------------------
async function api(path, options = {}) {
  const headers = { ...(options.headers || {}) };
  if (options.body !== undefined) headers["Content-Type"] = "application/json";
  if (state.key) headers["Authorization"] = "Bearer " + state.key;
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
    return { message: body.detail || response.statusText };
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
  load();
});

function fillSelect(select, values, selected) {
  select.replaceChildren(...values.map((value) => {
    const option = document.createElement("option");
    option.value = option.textContent = String(value);
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
  setStatus("Ready.");
}

function renderPresets() {
  const box = $("presets");
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

// The subject is what the user typed before any preset's style text; a preset appends its style.
function subjectOf(prompt) {
  for (const preset of PRESETS) {
    const tail = ", " + preset.style;
    if (prompt.endsWith(tail)) return prompt.slice(0, -tail.length);
    if (prompt === preset.style) return "";
  }
  return prompt;
}

function applyPreset(preset) {
  const prompt = $("prompt");
  const subject = subjectOf(prompt.value.trim()).trim();
  const same = state.preset === preset.id;
  state.preset = same ? null : preset.id;
  prompt.value = same ? subject : (subject ? subject + ", " : "") + preset.style;
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

// ---- generating -------------------------------------------------------------------------------
function setStatus(text, error = false) {
  $("status").textContent = text;
  $("status").classList.toggle("error", error);
}

function setProgress(fraction) {
  const percent = Math.max(0, Math.min(100, Math.round(fraction * 100)));
  $("progress").querySelector(".bar").style.width = percent + "%";
  $("progress").setAttribute("aria-valuenow", String(percent));
}

function setBusy(busy) {
  state.busy = busy;
  $("generate").disabled = busy;
  $("stop").disabled = !busy;
  $("progress").classList.toggle("busy", busy);
}

function readForm() {
  const number = (id) => Number($(id).value);
  return {
    prompt: $("prompt").value.trim(),
    negative_prompt: $("negative_prompt").value.trim(),
    width: number("width"), height: number("height"), steps: number("steps"), cfg_scale: number("cfg_scale"),
    sampler_name: $("sampler_name").value, seed: $("seed").value === "" ? -1 : number("seed"),
    batch_size: number("batch_size"), n_iter: 1, send_images: true,
  };
}

function clearInvalid() {
  for (const element of document.querySelectorAll("[aria-invalid]")) element.removeAttribute("aria-invalid");
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
    $("prompt").setAttribute("aria-invalid", "true");
    $("prompt").focus();
    setStatus("Describe the picture you want in the prompt.", true);
    return;
  }
  setBusy(true);
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
        const element = field && $(field);
        if (element) { element.setAttribute("aria-invalid", "true"); element.focus(); }
        setStatus(response.status === 401 ? "This server needs an API key." : message, true);
        return;
      }
      const result = await response.json();
      const info = JSON.parse(result.info);
      result.images.forEach((b64, k) => addCard(b64, info.all_seeds[k], info.width, info.height, info.infotexts[k]));
      state.lastSeed = info.seed;
      $("seed-reuse").disabled = false;
      setProgress(1);
      const seconds = ((performance.now() - started) / 1000).toFixed(1);
      const count = result.images.length;
      setStatus(info.interrupted ? `Stopped; ${count} picture(s) were finished.`
                                 : `Done: ${count} picture${count === 1 ? "" : "s"} in ${seconds} s (seed ${info.seed}).`);
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

// ---- results ----------------------------------------------------------------------------------
function addCard(b64, seed, width, height, parameters) {
  const card = $("card").content.firstElementChild.cloneNode(true);
  const url = "data:image/png;base64," + b64;
  const img = card.querySelector("img");
  img.src = url;
  img.width = width;
  img.height = height;
  img.alt = `Generated picture, seed ${seed}: ${parameters.split("\n")[0]}`;
  if (Math.max(width, height) < 192) img.classList.add("pixelated");
  card.querySelector(".seed").textContent = `Seed ${seed}`;
  card.querySelector(".size").textContent = `${width}×${height}`;
  const link = card.querySelector(".download");
  link.href = url;
  link.download = `noisecraft-${seed}.png`;
  link.setAttribute("aria-label", `Download picture with seed ${seed}`);
  const copy = card.querySelector(".copy");
  copy.addEventListener("click", async () => {
    const ok = await copyText(parameters);
    copy.textContent = ok ? "Copied" : "Copy failed";
    setTimeout(() => { copy.textContent = "Copy parameters"; }, 1500);
  });
  card.querySelector(".reuse").addEventListener("click", () => {
    $("seed").value = seed;
    $("seed").focus();
    setStatus(`Seed set to ${seed}.`);
  });
  $("gallery").prepend(card);
  $("empty").hidden = true;
  $("clear").disabled = false;
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
$("form").addEventListener("submit", (event) => { event.preventDefault(); generate(); });
$("form").addEventListener("keydown", (event) => {
  if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) { event.preventDefault(); generate(); }
});
$("stop").addEventListener("click", stop);
for (const id of ["prompt", "negative_prompt"]) $(id).addEventListener("input", () => fitHeight($(id)));
$("seed-random").addEventListener("click", () => { $("seed").value = -1; setStatus("A new random seed each time."); });
$("seed-reuse").addEventListener("click", () => {
  if (state.lastSeed !== null) { $("seed").value = state.lastSeed; setStatus(`Seed set to ${state.lastSeed}.`); }
});
$("clear").addEventListener("click", () => {
  $("gallery").replaceChildren();
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
  if (response.ok) await load();
  else setStatus((await errorText(response)).message, true);
  select.disabled = false;
});

renderPresets();
load();
