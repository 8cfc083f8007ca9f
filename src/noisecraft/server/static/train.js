"use strict";
// "Train on your photos": photos sent to POST /finetune, the training watched (its sample sheet after every
// checkpoint, the held-out loss) and its LoRA file downloaded (app.js: $, authHeaders, errorText).

const training = { id: null, timer: null, seen: 0, urls: [] };
const TRAIN_DONE = ["done", "failed", "cancelled"];

function trainStatus(text, error = false) {
  $("train-status").textContent = text;
  $("train-status").classList.toggle("error", error);
}

async function trainBlob(path) {
  const response = await fetch(path, { headers: authHeaders() });
  if (!response.ok) return null;
  const url = URL.createObjectURL(await response.blob());
  training.urls.push(url);
  return url;
}

function trainText(body) {
  const loss = body.loss == null ? "" : `, loss ${body.loss.toFixed(4)}`;
  const text = {
    waiting: `Waiting for the training before it (place ${body.position})…`,
    running: `Training: step ${body.step} of ${body.steps}${loss}${body.yielding_to_pictures ? " (paused while pictures are made)" : ""}.`,
    done: `Done: the LoRA kept is from step ${body.best_step} of ${body.steps}.`,
    failed: body.error || "The training failed.",
    cancelled: `Stopped at step ${body.step}.`,
  }[body.status];
  const held = body.held_out.map((c) => `${c.step}: ${c.loss.toFixed(4)}`).join(", ");
  return held ? `${text} Held-out loss by step: ${held}.` : text;
}

async function showTraining(body) {
  trainStatus(trainText(body), body.status === "failed");
  $("train-progress").value = body.steps ? body.step / body.steps : 0;
  if (body.samples_url && body.samples !== training.seen) {
    training.seen = body.samples;
    const url = await trainBlob(body.samples_url);
    if (url) {
      $("train-samples").src = url;
      $("train-samples").hidden = false;
    }
  }
  if (body.status === "done") {
    const [after, file] = await Promise.all([trainBlob(body.before_after_url), trainBlob(body.lora_url)]);
    if (after) {
      $("train-after").src = after;
      $("train-after").hidden = false;
    }
    if (file) {
      const download = $("train-download");
      download.href = file;
      download.download = `${body.name.toLowerCase().replace(/[^a-z0-9]+/g, "-").replace(/^-|-$/g, "") || "lora"}.safetensors`;
      download.hidden = false;
    }
  }
}

async function pollTraining() {
  const response = await fetch(`/finetune/${training.id}`, { headers: authHeaders() });
  if (!response.ok) return;
  const body = await response.json();
  await showTraining(body);
  if (TRAIN_DONE.includes(body.status)) {
    clearInterval(training.timer);
    training.timer = null;
    $("train-submit").disabled = false;
    $("train-stop").hidden = true;
  }
}

async function startTraining() {
  const files = $("train-photos").files;
  if (!files.length) return trainStatus("Choose your photos first (5-30 is typical).", true);
  const form = new FormData();
  for (const file of files) form.append("photos", file);
  form.append("name", $("train-name").value.trim());
  form.append("class_word", $("train-class").value.trim());
  if ($("train-steps").value) form.append("steps", $("train-steps").value);
  $("train-submit").disabled = true;
  for (const url of training.urls) URL.revokeObjectURL(url);
  Object.assign(training, { urls: [], seen: 0 });
  for (const id of ["train-samples", "train-after", "train-download"]) $(id).hidden = true;
  trainStatus(`Sending ${files.length} photo(s)…`);
  const response = await fetch("/finetune", { method: "POST", body: form, headers: authHeaders() });
  if (!response.ok) {
    $("train-submit").disabled = false;
    return trainStatus((await errorText(response)).message, true);
  }
  const body = await response.json();
  training.id = body.id;
  $("train-stop").hidden = false;
  await showTraining(body);
  training.timer = setInterval(pollTraining, 1000);
}

$("train-open").addEventListener("click", () => $("train-dialog").showModal());
$("train-close").addEventListener("click", () => $("train-dialog").close());
$("train-stop").addEventListener("click", () => {
  if (training.id) fetch(`/finetune/${training.id}/cancel`, { method: "POST", headers: authHeaders() });
});
$("train-form").addEventListener("submit", (event) => { event.preventDefault(); startTraining(); });
