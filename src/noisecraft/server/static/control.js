"use strict";
// "Keep the shape of a photo": a photo's edges (canny) guide the grid through a ControlNet the server offers
// (serve --controlnet FILE). app.js's imagine sends `controlUnit()` as the request's control (app.js: $, api).

const controlState = { image: null, name: "" };

async function loadControlNets() {
  const response = await api("/controlnet/model_list");
  if (!response.ok) return;
  const { model_list: models } = await response.json();
  if (!models.length) return;
  $("control-model").replaceChildren(...models.map((title) => {
    const option = document.createElement("option");
    option.value = option.textContent = title;
    return option;
  }));
  $("control-field").hidden = false;
}

function controlUnit() {
  if (!controlState.image || $("control-field").hidden) return null;
  return { image: controlState.image, module: "canny", model: $("control-model").value,
           weight: Number($("control-weight").value), resize_mode: "Crop and Resize" };
}

$("control-photo").addEventListener("change", () => {
  const file = $("control-photo").files[0];
  controlState.image = null;
  $("control-note").textContent = "";
  if (!file) return;
  const reader = new FileReader();
  reader.onload = () => {
    controlState.image = String(reader.result).replace(/^data:[^,]*,/, "");
    controlState.name = file.name;
    $("control-note").textContent = `The next pictures keep the shape of ${file.name}.`;
  };
  reader.readAsDataURL(file);
});
$("control-weight").addEventListener("input", () => { $("control-weight-shown").textContent = $("control-weight").value; });
loadControlNets();
