"use strict";
// The page: pick a model (by its accuracy and speed) -> choose/drop/paste an image -> preview ->
// POST /predict -> one labelled bar per class. Text from the server only ever goes in as textContent.
(function () {
  const $ = (id) => document.getElementById(id);
  const drop = $("drop"), fileInput = $("file"), preview = $("preview"), dropText = $("drop-text");
  const controls = $("controls"), modelRows = $("model-rows"), modelsNote = $("models-note"), topkSelect = $("topk");
  const results = $("results"), errorBox = $("error"), status = $("status");
  const tokenRow = $("token-row"), tokenInput = $("token");
  const wholeNumber = new Intl.NumberFormat("en-US", { maximumFractionDigits: 0 });
  let lastFile = null, previewUrl = null;

  for (let k = 1; k <= 10; k++) topkSelect.add(new Option(String(k), String(k), k === 5, k === 5));

  function element(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text != null) node.textContent = text;
    return node;
  }

  // A figure, or a dash when the service does not know it (no manifest entry for this very file).
  function figureCell(id, text, unknown) {
    const cell = element("td", "num", text == null ? "\u2014" : text);
    cell.id = id;
    if (text == null) cell.title = unknown;
    return cell;
  }

  function modelRow(m, i) {
    const row = element("tr");
    row.dataset.model = m.name;
    const radio = element("input");
    radio.type = "radio";
    radio.name = "model";
    radio.value = m.name;
    radio.checked = Boolean(m.default);
    radio.setAttribute("aria-describedby", `model-${i}-accuracy model-${i}-speed`);
    const label = element("label");
    label.append(radio, element("span", "name", m.name));
    if (m.default) label.append(element("span", "badge default", "default"));
    if (m.precision === "int8") {
      const int8 = element("span", "badge int8", "int8");
      int8.title = "statically quantized copy: as accurate (see its test accuracy), faster on CPU";
      label.append(int8);
    }
    if (m.tta && m.tta !== "none") {
      const tta = element("span", "badge tta", "TTA: " + m.tta);
      const variants = { flip: "mirrored", flip_translate: "mirrored and shifted" }[m.tta] || "in other variants";
      tta.title = `test-time augmentation: each image is also classified ${variants} and the answers averaged`;
      label.append(tta);
    }
    const name = element("td");
    name.append(label);
    row.append(
      name,
      figureCell(`model-${i}-accuracy`, m.test_accuracy == null ? null : (m.test_accuracy * 100).toFixed(1) + "%",
        "not measured"),
      figureCell(`model-${i}-speed`, m.cpu_images_per_s == null ? null : wholeNumber.format(m.cpu_images_per_s),
        "not measured for this file"),
    );
    // the whole row picks the model, not only its name
    row.addEventListener("click", (e) => { if (!label.contains(e.target)) radio.click(); });
    return row;
  }

  // With API_TOKEN set, /models and /predict answer 401 until the request carries the token. The field
  // appears only then; the token lives in sessionStorage (this tab), never in a URL.
  tokenInput.value = sessionStorage.getItem("apiToken") || "";
  if (tokenInput.value) tokenRow.hidden = false;

  function authHeaders() {
    const token = tokenInput.value.trim();
    return token ? { Authorization: "Bearer " + token } : {};
  }

  function askForToken(message) {
    tokenRow.hidden = false;
    showError(message);
    tokenInput.focus();
  }

  tokenInput.addEventListener("change", () => {
    sessionStorage.setItem("apiToken", tokenInput.value.trim());
    errorBox.hidden = true;
    loadModels();
    if (lastFile) classify(lastFile);
  });

  function chosenModel() {
    const radio = modelRows.querySelector("input[name=model]:checked");
    return radio ? radio.value : "";
  }

  function loadModels() {
    fetch("/models", { headers: authHeaders() }).then((r) => {
      if (r.status === 401) return null;
      if (!r.ok) throw new Error(`status ${r.status}`);
      return r.json();
    }).then((body) => {
      if (body === null) {
        modelsNote.textContent = "Enter the API token to list the models.";
        modelsNote.hidden = false;
        askForToken(tokenInput.value ? "the API token was not accepted" : "this service needs an API token");
        return;
      }
      modelRows.replaceChildren(...(body.models || []).map(modelRow));
      modelsNote.hidden = true;
    }).catch(() => {
      modelsNote.textContent = "Could not list the models; images go to the default model.";
      modelsNote.hidden = false;
      showError("could not list the models");
    });
  }
  loadModels();

  function showError(message) {
    errorBox.textContent = message;
    errorBox.hidden = false;
  }

  function render(body) {
    results.replaceChildren();
    for (const p of body.predictions) {
      const li = document.createElement("li");
      li.dataset.label = p.label;
      li.dataset.probability = String(p.probability);
      const label = document.createElement("span");
      label.className = "label";
      label.textContent = p.label;
      const bar = document.createElement("span");
      bar.className = "bar";
      const fill = document.createElement("span");
      fill.className = "fill";
      fill.style.display = "block";
      fill.style.width = (p.probability * 100).toFixed(1) + "%";
      bar.appendChild(fill);
      const value = document.createElement("span");
      value.className = "value";
      value.textContent = (p.probability * 100).toFixed(1) + "%";
      li.append(label, bar, value);
      results.appendChild(li);
    }
    status.textContent = `${body.model}: ${body.predictions[0].label}`;
  }

  async function classify(file) {
    if (!file) return;
    lastFile = file;
    errorBox.hidden = true;
    results.replaceChildren();
    if (previewUrl) URL.revokeObjectURL(previewUrl);
    previewUrl = URL.createObjectURL(file);
    preview.src = previewUrl;
    preview.alt = file.name || "uploaded image";
    preview.hidden = false;
    dropText.textContent = file.name || "pasted image";
    status.textContent = "Classifying\u2026";
    const form = new FormData();
    form.append("img", file, file.name || "pasted.png");
    const query = new URLSearchParams({ topk: topkSelect.value });
    if (chosenModel()) query.set("model", chosenModel());
    try {
      const response = await fetch("/predict?" + query, { method: "POST", body: form, headers: authHeaders() });
      const body = await response.json().catch(() => null);
      if (response.status === 401) {
        status.textContent = "";
        askForToken(body && body.error ? body.error.message : "this service needs an API token");
        return;
      }
      if (!response.ok) {
        status.textContent = "";
        showError(body && body.error ? body.error.message : `request failed (${response.status})`);
        return;
      }
      render(body);
    } catch (err) {
      status.textContent = "";
      showError("the service did not answer: " + err.message);
    }
  }

  preview.addEventListener("error", () => { preview.hidden = true; });
  // CIFAR-sized images are shown enlarged with visible pixels rather than blurred
  preview.addEventListener("load", () => preview.classList.toggle("tiny", preview.naturalWidth < 128));
  fileInput.addEventListener("change", () => classify(fileInput.files[0]));
  drop.addEventListener("keydown", (e) => { if (e.key === "Enter" || e.key === " ") fileInput.click(); });
  for (const type of ["dragenter", "dragover"]) {
    drop.addEventListener(type, (e) => { e.preventDefault(); drop.classList.add("over"); });
  }
  for (const type of ["dragleave", "drop"]) {
    drop.addEventListener(type, (e) => { e.preventDefault(); drop.classList.remove("over"); });
  }
  drop.addEventListener("drop", (e) => classify(e.dataTransfer.files[0]));
  document.addEventListener("paste", (e) => {
    const item = [...(e.clipboardData || {}).items || []].find((i) => i.type.startsWith("image/"));
    if (item) classify(item.getAsFile());
  });
  // another model or top-k: the last image again
  controls.addEventListener("change", () => { if (lastFile) classify(lastFile); });
  // Enter in a field must not reload the page (the page's CSP forbids inline handlers, so this lives here).
  controls.addEventListener("submit", (event) => event.preventDefault());
})();
