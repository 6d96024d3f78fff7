// covidcxr web page: send one X-ray to v1/predict and show the answer.
// Everything from the server or the file name goes in with textContent, never as HTML.
"use strict";

const $ = (id) => document.getElementById(id);
const percent = (p) => `${(100 * p).toFixed(1)}%`;

function show(id, visible) {
  $(id).hidden = !visible;
}

function setError(message) {
  $("error").textContent = message;
  show("error", Boolean(message));
}

function setImage(id, png) {
  const img = $(id);
  img.closest("figure").hidden = !png;
  img.src = png ? `data:image/png;base64,${png.png_base64}` : "";
}

function setLayer(id, png) {
  const img = $(id);
  img.src = png ? `data:image/png;base64,${png.png_base64}` : "";
  const toggle = document.querySelector(`input[data-layer="${id}"]`);
  toggle.disabled = !png;
  toggle.closest("label").classList.toggle("unavailable", !png);
  img.hidden = !png || !toggle.checked;
}

// A heat map with nothing in it (no lesion found; no evidence for the class): said in words, not shown as a black square.
function noEvidence(row) {
  return Boolean(row.heatmap) && typeof row.saliency_in_lungs !== "number";
}

function emptyMapWords(row) {
  return row.saliency_method === "lesion evidence"
    ? "No lesion evidence found: the lesion model marked nothing inside the lungs."
    : "No evidence for the predicted class found: the heat map is empty.";
}

function showHeatmapTile(row) {
  const empty = noEvidence(row);
  setImage("heatmap", row.heatmap);
  $("heatmap").hidden = empty;
  $("heatmap-empty").textContent = empty ? emptyMapWords(row) : "";
  show("heatmap-empty", empty);
}

function showOverlays(row) {
  const overlays = row.overlays || {};
  $("xray").src = `data:image/png;base64,${row.image.png_base64}`;
  setLayer("layer-lungs", overlays.lungs);
  setLayer("layer-lesions", overlays.lesions);
  setLayer("layer-zones", overlays.zones);
  setLayer("layer-heatmap", overlays.heatmap);
  show("legend-heatmap", Boolean(overlays.heatmap));
  const method = row.saliency_method || "heat map";
  const inside = typeof row.saliency_in_lungs === "number" ? `; ${percent(row.saliency_in_lungs)} of it inside the lungs` : "";
  $("heatmap-method").textContent = noEvidence(row)
    ? `(${method}: ${emptyMapWords(row).split(":")[0].toLowerCase()})`
    : `(${method}: where the reading looked${inside}; below 15% not drawn)`;
  $("heatmap-caption").textContent = `Heat map (${method}): bright where the reading looked`;
}

function fillList(id, items) {
  const list = $(id);
  list.replaceChildren();
  for (const text of items) {
    const li = document.createElement("li");
    li.textContent = text;
    list.appendChild(li);
  }
  show(id, items.length > 0);
}

function showUncertain(row) {
  const reasons = (row.uncertain_reasons || []).map((r) => r.text);
  if (row.uncertain === true && reasons.length === 0 && row.uncertain_reason) reasons.push(row.uncertain_reason);
  show("uncertain", row.uncertain === true);
  $("uncertain-reason").textContent = row.uncertain ? `${reasons.length} reason${reasons.length === 1 ? "" : "s"}, listed under the reading` : "";
  fillList("uncertain-reasons", row.uncertain ? reasons : []);
}

// The headline: the RSNA category and the opacity finding with its extent, then the reading and its probabilities.
function showHeadline(row) {
  const top = row.probabilities[row.prediction];
  const category = row.category;
  const findings = row.findings;
  $("title").textContent = category ? `${category.label}: ${row.path}` : `${row.path}: ${row.prediction} (${percent(top)})`;
  let finding = "";
  let reading = `Reading: ${row.prediction} (${percent(top)}).`;
  if (findings) {
    const opacity = findings.airspace_opacity;
    const extent = `geographic extent ${findings.geographic_extent.toFixed(1)} of 8`;
    finding = opacity.present ? `Airspace opacity, ${extent}.` : `No airspace opacity called (${extent}).`;
    const threshold = typeof opacity.threshold === "number" ? opacity.threshold : 0.5;
    reading =
      `Reading: ${row.prediction}. P(disease) ${percent(opacity.probability)}, called at ${percent(threshold)}; ` +
      `P(COVID-19 | disease) ${percent(findings.covid_pattern.score)}, near chance.`;
  }
  $("finding").textContent = finding;
  show("finding", Boolean(finding));
  fillList("category-reasons", category ? category.reasons : []);
  $("reading").textContent = reading;
  $("cannot-see").textContent = category ? `Not measured: ${category.cannot_see}.` : "";
  show("cannot-see", Boolean(category));
}

function cell(row, text, className) {
  const td = row.insertCell();
  td.textContent = text;
  if (className) td.className = className;
  return td;
}

// With findings, the reading follows P(disease) against its threshold, not the largest probability: say so.
function showProbabilityRule(findings) {
  const opacity = findings ? findings.airspace_opacity : null;
  const known = Boolean(opacity) && typeof opacity.threshold === "number";
  $("prob-rule").textContent = known
    ? `The reading is disease when P(disease) = 1 − P(No finding) is at least ${percent(opacity.threshold)} ` +
      `(here ${percent(opacity.probability)}), not the largest probability.`
    : "";
  show("prob-rule", known);
}

function showProbabilities(probabilities, prediction) {
  const body = $("probabilities").tBodies[0];
  body.replaceChildren();
  for (const [name, p] of Object.entries(probabilities)) {
    const row = body.insertRow();
    row.className = "prob" + (name === prediction ? " predicted" : "");
    const th = document.createElement("th");
    th.scope = "row";
    th.textContent = name;
    row.appendChild(th);
    cell(row, percent(p), "number");
    const meter = document.createElement("meter");
    meter.min = 0;
    meter.max = 1;
    meter.value = p;
    meter.textContent = percent(p);
    row.insertCell().appendChild(meter);
  }
}

function showSeverity(severity) {
  show("severity", Boolean(severity));
  if (!severity) return;
  $("sev-extent").textContent = `${severity.geographic_extent.toFixed(1)} / 8`;
  $("sev-opacity").textContent = `${severity.opacity.toFixed(1)} / 6`;
  $("sev-brixia").textContent = `${severity.brixia.global.toFixed(1)} / 18`;
  for (const zone of ["A", "B", "C", "D", "E", "F"]) {
    $(`zone-${zone}`).textContent = `${zone}: ${severity.brixia[zone].toFixed(1)}`;
  }
  const body = $("lesions").tBodies[0];
  body.replaceChildren();
  for (const [lesion, share] of Object.entries(severity.lesions)) {
    const row = body.insertRow();
    cell(row, lesion);
    cell(row, percent(share.right_lung), "number");
    cell(row, percent(share.left_lung), "number");
  }
}

function showFindings(findings) {
  show("findings", Boolean(findings));
  if (!findings) return;
  const opacity = findings.airspace_opacity;
  $("find-opacity").textContent = `${percent(opacity.probability)} (${opacity.present ? "present" : "not found"})`;
  $("find-pattern").textContent = `${percent(findings.covid_pattern.score)} of the pneumonia probability`;
  const p = findings.covid_pattern;
  $("find-distribution").textContent = `${percent(p.bilateral)} / ${percent(p.peripheral)} / ${percent(p.lower_zone)}`;
}

function showResult(row) {
  showHeadline(row);
  const warnings = $("warnings");
  warnings.replaceChildren();
  for (const warning of row.warnings) {
    const li = document.createElement("li");
    li.textContent = warning;
    warnings.appendChild(li);
  }
  showUncertain(row);
  showOverlays(row);
  showProbabilities(row.probabilities, row.prediction);
  showProbabilityRule(row.findings);
  showSeverity(row.severity);
  showFindings(row.findings);
  setImage("report", row.report);
  showHeatmapTile(row);
  setImage("lung-mask", row.lung_mask);
  const brief = { ...row };
  for (const key of ["report", "heatmap", "lung_mask", "image"]) if (brief[key]) brief[key] = "(PNG shown above)";
  if (brief.overlays) {
    brief.overlays = Object.fromEntries(
      Object.entries(brief.overlays).map(([key, png]) => [key, png ? "(PNG shown above)" : null]),
    );
  }
  $("details").textContent = JSON.stringify(brief, null, 2);
  show("result", true);
}

async function errorMessage(response) {
  try {
    const body = await response.json();
    if (body && typeof body.error === "string") return body.error;
  } catch (_) {
    // not JSON: a proxy or the server itself failed
  }
  return `the server answered ${response.status} ${response.statusText}`;
}

async function upload(file) {
  if (!file) return;
  setError("");
  show("result", false);
  $("status").textContent = `Reading ${file.name}…`;
  const form = new FormData();
  form.append("file", file, file.name);
  try {
    const response = await fetch("v1/predict", { method: "POST", body: form });
    if (!response.ok) {
      const message = await errorMessage(response);
      setError(message.startsWith(file.name) ? message : `${file.name}: ${message}`);
      $("status").textContent = "";
      return;
    }
    showResult(await response.json());
    $("status").textContent = "Done.";
  } catch (err) {
    setError(`Could not reach the server (${err.message}); is covidcxr serve still running?`);
    $("status").textContent = "";
  }
}

$("file").addEventListener("change", (event) => upload(event.target.files[0]));

for (const toggle of document.querySelectorAll("input[data-layer]")) {
  toggle.addEventListener("change", () => {
    const img = $(toggle.dataset.layer);
    img.hidden = !toggle.checked || !img.getAttribute("src");
  });
}

const drop = $("drop");
for (const type of ["dragenter", "dragover"]) {
  drop.addEventListener(type, (event) => {
    event.preventDefault();
    drop.classList.add("over");
  });
}
for (const type of ["dragleave", "drop"]) {
  drop.addEventListener(type, () => drop.classList.remove("over"));
}
drop.addEventListener("drop", (event) => {
  event.preventDefault();
  upload(event.dataTransfer.files[0]);
});
