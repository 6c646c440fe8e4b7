"use strict";
// The page: choose/drop/paste an image -> preview -> POST /predict -> one labelled bar per class.
(function () {
  const $ = (id) => document.getElementById(id);
  const drop = $("drop"), fileInput = $("file"), preview = $("preview"), dropText = $("drop-text");
  const modelSelect = $("model"), topkSelect = $("topk");
  const results = $("results"), errorBox = $("error"), status = $("status");
  let lastFile = null, previewUrl = null;

  for (let k = 1; k <= 10; k++) topkSelect.add(new Option(String(k), String(k), k === 5, k === 5));

  fetch("/models").then((r) => r.json()).then((body) => {
    for (const m of body.models || []) {
      const acc = m.test_accuracy == null ? "" : ` (${(m.test_accuracy * 100).toFixed(1)}% test)`;
      modelSelect.add(new Option(m.name + acc, m.name, m.default, m.default));
    }
  }).catch(() => showError("could not list the models"));

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
    if (modelSelect.value) query.set("model", modelSelect.value);
    try {
      const response = await fetch("/predict?" + query, { method: "POST", body: form });
      const body = await response.json().catch(() => null);
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
  for (const select of [modelSelect, topkSelect]) {
    select.addEventListener("change", () => { if (lastFile) classify(lastFile); });
  }
})();
