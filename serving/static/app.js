"use strict";
// The page: choose/drop/paste an image -> POST /predict (with the 32x32 image the service decoded it to)
// -> that image beside one labelled bar per class. The model is picked in a compact list, most accurate
// first, each with its accuracy and speed. Text from the server only ever goes in as textContent.
(function () {
  const $ = (id) => document.getElementById(id);
  const drop = $("drop"), fileInput = $("file"), preview = $("preview"), dropText = $("drop-text");
  const controls = $("controls"), modelSelect = $("model"), modelInfo = $("model-info"), topkSelect = $("topk");
  const answer = $("answer"), modelInput = $("model-input"), results = $("results");
  const errorBox = $("error"), status = $("status");
  const tokenRow = $("token-row"), tokenInput = $("token");
  const wholeNumber = new Intl.NumberFormat("en-US", { maximumFractionDigits: 0 });
  let lastFile = null, previewUrl = null, models = new Map();

  for (let k = 1; k <= 10; k++) topkSelect.add(new Option(String(k), String(k), k === 5, k === 5));

  const percent = (fraction) => (fraction * 100).toFixed(1) + "%";
  const accuracyText = (m) => (m.test_accuracy == null ? "accuracy \u2014" : percent(m.test_accuracy));
  const speedText = (m) => (m.cpu_images_per_s == null ? "speed \u2014" : wholeNumber.format(m.cpu_images_per_s) + " img/s");

  // NAME-fp32 (the fp32 original of a model served int8 as NAME) or NAME-int8 (an int8 copy that is not):
  // listed under NAME instead of as a model of its own.
  function twinOf(m, names) {
    const match = /^(.*)-(fp32|int8)$/.exec(m.name);
    return match && match[2] === m.precision && names.has(match[1]) ? match[1] : null;
  }

  // Most accurate first; a model whose accuracy is unknown last.
  function byAccuracy(a, b) {
    const x = a.test_accuracy == null ? -1 : a.test_accuracy, y = b.test_accuracy == null ? -1 : b.test_accuracy;
    return y - x || (a.name < b.name ? -1 : a.name > b.name ? 1 : 0);
  }

  function option(m, twin) {
    // a twin is indented under its name: "  -> NAME-fp32 . 87.7% . 681 img/s"
    const text = (twin ? "\u2003\u21b3 " : "") + `${m.name} \u00b7 ${accuracyText(m)} \u00b7 ${speedText(m)}`
      + (m.default ? " (default)" : "");
    const item = new Option(text, m.name, Boolean(m.default), Boolean(m.default));
    item.dataset.accuracy = m.test_accuracy == null ? "" : String(m.test_accuracy);
    if (twin) item.dataset.twinOf = twin;
    return item;
  }

  function fillModels(list) {
    models = new Map(list.map((m) => [m.name, m]));
    const names = new Set(models.keys()), twins = new Map();
    for (const m of list) {
      const base = twinOf(m, names);
      if (base) twins.set(base, [...(twins.get(base) || []), m]);
    }
    const options = [];
    for (const m of list.filter((m) => !twinOf(m, names)).sort(byAccuracy)) {
      options.push(option(m, null), ...(twins.get(m.name) || []).map((t) => option(t, m.name)));
    }
    modelSelect.replaceChildren(...options);
    describeModel();
  }

  // The chosen model in words: what each figure means, and what it is.
  function describeModel() {
    const m = models.get(modelSelect.value);
    if (!m) return;
    const parts = [m.test_accuracy == null ? "test accuracy not measured"
      : `${percent(m.test_accuracy)} on the 10,000 CIFAR-10 test images`];
    if (m.cpu_images_per_s != null) {
      let speed = `${wholeNumber.format(m.cpu_images_per_s)} images/s on CPU in batches of 64`;
      if (m.single_images_per_s != null) speed += `, ${wholeNumber.format(m.single_images_per_s)} one at a time`;
      parts.push(speed);
    } else {
      parts.push("speed not measured for this file");
    }
    if (m.precision === "int8") parts.push("int8 (statically quantized)");
    if (m.tta && m.tta !== "none") parts.push("test-time augmentation: " + m.tta);
    if (m.pretrained) parts.push(m.pretrained);
    modelInfo.textContent = `${m.name}: ` + parts.join(" \u00b7 ");
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

  function loadModels() {
    fetch("/models", { headers: authHeaders() }).then((r) => {
      if (r.status === 401) return null;
      if (!r.ok) throw new Error(`status ${r.status}`);
      return r.json();
    }).then((body) => {
      if (body === null) {
        modelInfo.textContent = "Enter the API token to list the models.";
        askForToken(tokenInput.value ? "the API token was not accepted" : "this service needs an API token");
        return;
      }
      fillModels(body.models || []);
    }).catch(() => {
      modelInfo.textContent = "Could not list the models; images go to the default model.";
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
    // the service's own decode of the upload, not a resize made here
    modelInput.src = "data:image/png;base64," + body.input_png;
    answer.hidden = false;
    status.textContent = `${body.model}: ${body.predictions[0].label}`;
  }

  async function classify(file) {
    if (!file) return;
    lastFile = file;
    errorBox.hidden = true;
    answer.hidden = true;
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
    const query = new URLSearchParams({ topk: topkSelect.value, include_input: "true" });
    if (modelSelect.value) query.set("model", modelSelect.value);
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
  modelSelect.addEventListener("change", describeModel);
  // another model or top-k: the last image again
  controls.addEventListener("change", () => { if (lastFile) classify(lastFile); });
  // Enter in a field must not reload the page (the page's CSP forbids inline handlers, so this lives here).
  controls.addEventListener("submit", (event) => event.preventDefault());
})();
