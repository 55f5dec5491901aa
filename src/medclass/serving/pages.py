"""The service's web page: upload an image, see the class probabilities and the Grad-CAM overlay,
and a warning ("this image is unlike the training images") when the model's out-of-distribution
detector flags it (the ``ood`` object of ``POST /predict``).

Plain HTML, CSS and JavaScript (no framework, nothing fetched from elsewhere), served from the app
itself so the page works offline and under a strict Content-Security-Policy (``script-src
'self'``). Server data is put in the page with ``textContent`` only, never as HTML.
"""

from __future__ import annotations

__all__ = ["INDEX_HTML", "SCRIPT_JS", "STYLE_CSS"]

STYLE_CSS = """
body { font-family: system-ui, sans-serif; margin: 1.5em auto; max-width: 960px; color: #222; padding: 0 1em; }
nav { margin-bottom: 1em; } nav a { margin-right: .6em; }
h1 { font-size: 1.5em; } h2 { border-bottom: 1px solid #ccc; padding-bottom: .2em; margin-top: 1.4em; }
table { border-collapse: collapse; margin: .6em 0; } td, th { border: 1px solid #ccc; padding: .25em .6em; text-align: left; }
th { background: #f3f3f3; }
tr.small-n td { color: #8a6d3b; background: #fffaf0; }
form { border: 1px dashed #999; padding: 1em; border-radius: 6px; }
button { font-size: 1em; padding: .3em 1.2em; margin-left: .5em; }
#result { display: flex; gap: 2em; flex-wrap: wrap; margin-top: 1em; }
#result[hidden], #error[hidden] { display: none; }
.bar { background: #e9eef6; width: 240px; height: 1em; display: inline-block; vertical-align: middle; }
.bar > span { background: #3b6fc2; height: 100%; display: block; }
.top td { font-weight: bold; }
#predicted { font-size: 1.3em; font-weight: bold; }
#error { background: #fde2e1; border: 1px solid #d9534f; padding: .6em 1em; margin-top: 1em; }
#ood-warning { background: #fde2e1; border: 2px solid #d9534f; padding: .6em 1em; margin-top: 1em; font-weight: bold; }
#ood-warning[hidden] { display: none; }
.warn { background: #fff3cd; border: 1px solid #e0c36c; padding: .5em 1em; font-size: .9em; }
figure { margin: 0; } figure img { width: 320px; image-rendering: auto; border: 1px solid #ddd; }
figcaption, .small { font-size: .85em; color: #555; }
"""

INDEX_HTML = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>medclass: {{MODEL}}</title><link rel="stylesheet" href="/static/style.css"></head>
<body>
<nav><a href="/">Predict</a> · <a href="/model-card">Model card</a> · <a href="/docs">API</a></nav>
<h1>Classify an image with <span id="model">{{MODEL}}</span></h1>
<p class="warn">Research use only; not a medical device. Read the <a href="/model-card">model card</a> for the data,
metrics and limits of this model. Classes: {{CLASSES}}.</p>
<form id="upload-form">
  <label for="file">Image (PNG, JPEG or DICOM):</label>
  <input type="file" id="file" name="file" accept=".png,.jpg,.jpeg,.dcm,.dicom,image/png,image/jpeg,application/dicom" required>
  <label><input type="checkbox" id="explain" checked> Grad-CAM</label>
  <button type="submit" id="submit">Predict</button>
  <span id="status" class="small"></span>
</form>
<div id="error" role="alert" hidden></div>
<div id="ood-warning" role="alert" hidden></div>
<div id="result" hidden>
  <div>
    <p>Prediction for <code id="filename"></code>: <span id="predicted"></span></p>
    <table id="probabilities"><thead><tr><th>class</th><th>probability</th><th></th></tr></thead><tbody></tbody></table>
    <p class="small" id="details"></p>
  </div>
  <figure id="gradcam" hidden><img id="overlay" alt="Grad-CAM overlay">
    <figcaption>Grad-CAM (Selvaraju et al. 2017) of the predicted class: red areas raised its score most.</figcaption></figure>
</div>
<script src="/static/app.js"></script>
</body></html>
"""

SCRIPT_JS = """
"use strict";
const form = document.getElementById("upload-form");
const statusEl = document.getElementById("status");
const errorEl = document.getElementById("error");
const resultEl = document.getElementById("result");
const oodEl = document.getElementById("ood-warning");

function showError(text) {
  errorEl.textContent = text;
  errorEl.hidden = false;
  resultEl.hidden = true;
  oodEl.hidden = true;
}

function showOod(ood) {
  // ood: {score, threshold, flag, method}, or null when the model has no detector
  if (ood && ood.flag) {
    oodEl.textContent = "Warning: this image is unlike the training images (" + ood.method + " score " +
      ood.score.toPrecision(4) + " above the threshold " + ood.threshold.toPrecision(4) +
      "); the prediction below is not to be trusted.";
    oodEl.hidden = false;
  } else {
    oodEl.hidden = true;
  }
}

function showResult(r) {
  document.getElementById("filename").textContent = r.filename;
  document.getElementById("predicted").textContent = r.predicted;
  const body = document.querySelector("#probabilities tbody");
  body.replaceChildren();
  const rows = Object.entries(r.probabilities).sort((a, b) => b[1] - a[1]);
  for (const [name, p] of rows) {
    const tr = document.createElement("tr");
    tr.dataset.class = name;
    if (name === r.predicted) tr.className = "top";
    const tdName = document.createElement("td");
    tdName.textContent = name;
    const tdP = document.createElement("td");
    tdP.className = "probability";
    tdP.textContent = p.toFixed(4);
    const tdBar = document.createElement("td");
    const bar = document.createElement("span");
    bar.className = "bar";
    const fill = document.createElement("span");
    fill.style.width = (100 * p).toFixed(1) + "%";
    bar.appendChild(fill);
    tdBar.appendChild(bar);
    tr.append(tdName, tdP, tdBar);
    body.appendChild(tr);
  }
  let details = "model " + r.model + ", " + (1000 * r.seconds).toFixed(0) + " ms on the server";
  if (r.threshold !== null && r.threshold !== undefined) details += ", decision threshold " + r.threshold.toFixed(3);
  if (r.ood) details += ", OOD " + r.ood.method + " score " + r.ood.score.toPrecision(4) + (r.ood.flag ? " (flagged)" : " (in range)");
  showOod(r.ood);
  document.getElementById("details").textContent = details;
  const fig = document.getElementById("gradcam");
  if (r.gradcam_png) {
    document.getElementById("overlay").src = r.gradcam_png;
    fig.hidden = false;
  } else {
    fig.hidden = true;
  }
  errorEl.hidden = true;
  resultEl.hidden = false;
}

form.addEventListener("submit", async (event) => {
  event.preventDefault();
  const input = document.getElementById("file");
  if (!input.files.length) { showError("Choose an image first."); return; }
  const data = new FormData();
  data.append("file", input.files[0]);
  const explain = document.getElementById("explain").checked;
  statusEl.textContent = "classifying...";
  try {
    const response = await fetch("/predict?explain=" + explain, { method: "POST", body: data });
    const body = await response.json().catch(() => null);
    if (!response.ok) {
      let detail = body && body.detail;
      if (Array.isArray(detail)) detail = detail.map((d) => d.msg).join("; ");
      showError("Error " + response.status + ": " + (detail || response.statusText));
    } else {
      showResult(body);
    }
  } catch (err) {
    showError("The request failed: " + err);
  } finally {
    statusEl.textContent = "";
    document.body.dataset.state = "done";
  }
});
"""
