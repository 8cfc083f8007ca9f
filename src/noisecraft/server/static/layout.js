"use strict";
// "Put in a layout": a gallery picture composed into a menu card, social post, story, flyer, sign, before/after
// or guide by POST /layouts/render, with the brand kit chosen in the form (app.js: $, api, errorText, element).

const layouts = { list: [], item: null, url: null };

async function loadLayouts() {
  if (layouts.list.length) return layouts.list;
  const response = await api("/layouts");
  layouts.list = response.ok ? await response.json() : [];
  fillSelect($("layout-template"), layouts.list.map((t) => t.name), "social-post", layouts.list.map((t) => t.name));
  return layouts.list;
}

function chosenLayout() {
  return layouts.list.find((t) => t.name === $("layout-template").value) || layouts.list[0];
}

// One input per text field of the chosen layout (a guide's step1..6 / caption1..6: the first two steps).
function renderLayoutFields() {
  const layout = chosenLayout();
  if (!layout) return;
  fillSelect($("layout-size"), layout.sizes, layout.sizes[0]);
  const names = layout.texts.flatMap((name) => {
    const match = name.match(/^(\w+?)1\.\.\1(\d)$/);
    return match ? [match[1] + "1", match[1] + "2"] : [name];
  });
  const box = $("layout-fields");
  box.replaceChildren(...names.map((name) => {
    const field = element("div", "field");
    const label = element("label", "", name.replace(/_/g, " "));
    label.htmlFor = "layout-text-" + name;
    const input = element("input");
    input.id = "layout-text-" + name;
    input.dataset.name = name;
    input.type = "text";
    input.maxLength = 400;
    field.append(label, input);
    return field;
  }));
}

async function openLayout(item) {
  layouts.item = item;
  await loadLayouts();
  renderLayoutFields();
  $("layout-result").hidden = true;
  $("layout-download").hidden = true;
  $("layout-status").textContent = `Picture #${item.id} goes in the first picture slot.`;
  $("layout-status").classList.remove("error");
  $("layout-dialog").showModal();
}

async function composeLayout() {
  const layout = chosenLayout();
  const texts = {};
  for (const input of $("layout-fields").querySelectorAll("input")) {
    if (input.value.trim()) texts[input.dataset.name] = input.value.trim();
  }
  const slot = layout.images[0].replace(/1\.\.\w+$/, "1");
  const body = { template: layout.name, size: $("layout-size").value, brand: $("brand").value || null, texts,
                 items: { [slot]: layouts.item.id }, sign: $("layout-sign").checked };
  $("layout-submit").disabled = true;
  $("layout-status").textContent = "Composing…";
  try {
    const response = await api("/layouts/render", { method: "POST", body });
    if (!response.ok) {
      const { message } = await errorText(response);
      $("layout-status").textContent = message;
      $("layout-status").classList.add("error");
      return;
    }
    if (layouts.url) URL.revokeObjectURL(layouts.url);
    layouts.url = URL.createObjectURL(await response.blob());
    $("layout-result").src = layouts.url;
    $("layout-result").hidden = false;
    const download = $("layout-download");
    download.href = layouts.url;
    download.download = `${layout.name}-${layouts.item.id}.png`;
    download.hidden = false;
    $("layout-status").classList.remove("error");
    $("layout-status").textContent = `Done: ${layout.name}, ${body.size}${body.sign ? ", signed" : ""}.`;
  } finally {
    $("layout-submit").disabled = false;
  }
}

$("layout-template").addEventListener("change", renderLayoutFields);
$("layout-cancel").addEventListener("click", () => $("layout-dialog").close());
$("layout-form").addEventListener("submit", (event) => { event.preventDefault(); composeLayout(); });
