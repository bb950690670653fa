"use strict";
// The page for people: pick or drop images, send them to POST /predict, show each answer.

const DICOM_NAME = /\.(dcm|dicom)$/i;
const READY_RETRY_MS = 2000;

const fileInput = document.getElementById("files");
const dropZone = document.getElementById("drop-zone");
const gradcamToggle = document.getElementById("gradcam");
const statusLine = document.getElementById("status");
const requestError = document.getElementById("request-error");
const resultList = document.getElementById("results");
const modelFooter = document.getElementById("model");
const heading = document.getElementById("heading");

let chosenFiles = [];
let thumbnailUrls = [];
let latestRequest = 0;
let classNames = [];
let oodDomain = "an image of the kind it was trained on";  // the model's, once known

function element(tag, { className, testid, text } = {}) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (testid) node.dataset.testid = testid;
  if (text !== undefined) node.textContent = text;
  return node;
}

function percent(probability) {
  return `${(probability * 100).toFixed(1)}%`;
}

// A class as people read it: "breast_histo" -> "breast histo".
function readable(name) {
  return name.replaceAll("_", " ");
}

// The question the model answers, from its own classes: "mri or breast histo?".
function showQuestion(classes) {
  classNames = classes.map(readable);
  const question = `${classNames.slice(0, -1).join(", ")} or ${classNames.at(-1)}?`;
  heading.textContent = question;
  document.title = question;
}

// The detector's verdict in words (familiar, unfamiliar or outside the training domain),
// and how unusual the image is against the validation images (the share of them that
// look less like the training images).
function oodVerdict(entry) {
  const trained = `the ${classNames.join(" and ")} images this model was trained on`;
  if (entry.ood_verdict === "familiar") return `Looks like ${trained}.`;
  const share = entry.validation_scoring_higher;
  const rank = share === null ? "" : share === 0
    ? " (none of its validation images looks less like them)"
    : ` (only ${percent(share)} of its validation images look less like them)`;
  if (entry.ood_verdict === "unfamiliar") {
    return `Unlike ${trained}${rank}: check the image before trusting the prediction.`;
  }
  return `Not ${oodDomain} at all${rank}: its prediction means nothing.`;
}

function showModel(model) {
  showQuestion(model.classes);
  if (model.ood_domain) oodDomain = model.ood_domain;
  const sha = model.sha256 || "";
  modelFooter.replaceChildren(
    "Model ",
    Object.assign(element("code", { testid: "model-sha", text: sha.slice(0, 12) }), { title: sha }),
    ` · classes: ${model.classes.join(", ")}`,
    ` · input ${model.image_size}×${model.image_size} px`,
    model.backend ? ` · ${model.backend}` : "",
  );
}

async function loadModelIdentity() {
  try {
    const response = await fetch("/readyz");
    if (response.ok) {
      showModel((await response.json()).model);
      return;
    }
    modelFooter.textContent = "Model: still loading…";
  } catch (error) {
    modelFooter.textContent = `Model: server unreachable (${error.message})`;
  }
  setTimeout(loadModelIdentity, READY_RETRY_MS);
}

// A multi-frame DICOM answers with one entry per frame: those entries share one uploaded file.
function sourceFiles(results, files) {
  let index = -1;
  return results.map((entry, position) => {
    const previous = results[position - 1];
    const nextFrameOfSameFile = previous && entry.file === previous.file
      && entry.frame !== null && previous.frame !== null && entry.frame > previous.frame;
    if (!nextFrameOfSameFile) index += 1;
    return files[index];
  });
}

function placeholder(label) {
  const box = element("div", { className: "thumb placeholder", testid: "thumb", text: label });
  box.setAttribute("role", "img");
  box.setAttribute("aria-label", `No preview (${label})`);
  return box;
}

function thumbnail(file, name) {
  if (file && (DICOM_NAME.test(file.name) || file.type === "application/dicom")) {
    return placeholder("DICOM");
  }
  if (!file || !file.type.startsWith("image/")) return placeholder("no preview");
  const url = URL.createObjectURL(file);
  thumbnailUrls.push(url);
  const image = element("img", { className: "thumb", testid: "thumb" });
  image.alt = `Preview of ${name}`;
  image.addEventListener("error", () => image.replaceWith(placeholder("no preview")));
  image.src = url;
  return image;
}

function probabilityBar(className, probability, predicted) {
  const row = element("div", { className: "bar", testid: "probability" });
  row.dataset.class = className;
  row.dataset.probability = String(probability);
  if (className === predicted) row.classList.add("predicted");
  const track = element("div", { className: "track" });
  track.setAttribute("role", "meter");
  track.setAttribute("aria-label", `Probability of ${className}`);
  track.setAttribute("aria-valuemin", "0");
  track.setAttribute("aria-valuemax", "1");
  track.setAttribute("aria-valuenow", String(probability));
  const fill = element("div", { className: "fill", testid: "probability-fill" });
  fill.style.width = `${probability * 100}%`;
  track.append(fill);
  row.append(
    element("span", { className: "bar-label", text: className }),
    track,
    element("span",
            { className: "bar-value", testid: "probability-value", text: percent(probability) }),
  );
  return row;
}

function gradcamImage(entry, name) {
  const image = element("img", { className: "gradcam", testid: "gradcam" });
  image.src = `data:image/png;base64,${entry.gradcam}`;
  image.alt = `Grad-CAM overlay for ${name}: where the model looked to answer ${entry.predicted}`;
  return image;
}

function captioned(picture, caption) {
  const figure = element("figure");
  figure.append(picture, element("figcaption", { text: caption }));
  return figure;
}

function details(entry, name) {
  const body = element("div", { className: "details" });
  body.append(element("h2", { className: "file-name", testid: "file-name", text: name }));
  if (entry.error) {
    body.append(element("p", { className: "file-error", testid: "file-error", text: entry.error }));
    return body;
  }
  const verdict = element("p", { className: "predicted", text: "Predicted: " });
  verdict.append(element("strong", { testid: "predicted", text: entry.predicted }));
  body.append(verdict);
  for (const [className, probability] of Object.entries(entry.probabilities)) {
    body.append(probabilityBar(className, probability, entry.predicted));
  }
  if (entry.ood_verdict) {
    const note = element("p", { className: `ood-verdict ${entry.ood_verdict}`,
                                testid: "ood-verdict", text: oodVerdict(entry) });
    note.dataset.verdict = entry.ood_verdict;
    body.append(note);
  }
  return body;
}

function resultCard(entry, file) {
  const name = entry.frame === null ? entry.file : `${entry.file} (frame ${entry.frame})`;
  const card = element("li", { className: "result", testid: "result" });
  card.classList.toggle("failed", Boolean(entry.error));
  card.classList.toggle("unfamiliar", entry.ood_verdict === "unfamiliar");
  // Flagged: the probabilities are shown greyed out, as the answer to a wrong question.
  card.classList.toggle("outside", entry.ood_verdict === "outside");
  const pictures = element("div", { className: "pictures" });
  pictures.append(captioned(thumbnail(file, name), "Image"));
  if (entry.gradcam) pictures.append(captioned(gradcamImage(entry, name), "Grad-CAM"));
  card.append(pictures, details(entry, name));
  return card;
}

function showResults(answer, files) {
  thumbnailUrls.forEach((url) => URL.revokeObjectURL(url));
  thumbnailUrls = [];
  const sources = sourceFiles(answer.results, files);
  resultList.replaceChildren(...answer.results.map((entry, i) => resultCard(entry, sources[i])));
  // Keeps the text column aligned when only some entries have an overlay.
  resultList.classList.toggle("with-gradcam", answer.results.some((entry) => entry.gradcam));
  const failed = answer.results.filter((entry) => entry.error).length;
  const classified = answer.results.length - failed;
  statusLine.textContent = `${classified} classified, ${failed} could not be read.`;
  if (answer.model) showModel(answer.model);
}

async function requestFailure(response) {
  try {
    const { detail } = await response.json();
    return typeof detail === "string" ? detail : JSON.stringify(detail);
  } catch {
    return `${response.status} ${response.statusText}`;
  }
}

function showRequestError(message) {
  requestError.textContent = message;
  requestError.hidden = false;
  statusLine.textContent = "";
}

async function classify(files) {
  if (files.length === 0) return;
  const request = ++latestRequest;
  const body = new FormData();
  files.forEach((file) => body.append("file", file, file.name));
  requestError.hidden = true;
  statusLine.textContent = `Classifying ${files.length} file${files.length === 1 ? "" : "s"}…`;
  try {
    const response = await fetch(gradcamToggle.checked ? "/predict?gradcam=true" : "/predict",
                                 { method: "POST", body });
    // A newer request (more files, or Grad-CAM toggled) supersedes this one.
    if (request !== latestRequest) return;
    if (!response.ok) {
      resultList.replaceChildren();
      showRequestError(await requestFailure(response));
      return;
    }
    showResults(await response.json(), files);
  } catch (error) {
    if (request === latestRequest) showRequestError(`Could not reach the server: ${error.message}`);
  }
}

function choose(files) {
  chosenFiles = Array.from(files);
  classify(chosenFiles);
}

fileInput.addEventListener("change", () => choose(fileInput.files));
gradcamToggle.addEventListener("change", () => classify(chosenFiles));
dropZone.addEventListener("dragover", (event) => {
  event.preventDefault();
  dropZone.classList.add("dragging");
});
dropZone.addEventListener("dragleave", () => dropZone.classList.remove("dragging"));
dropZone.addEventListener("drop", (event) => {
  event.preventDefault();
  dropZone.classList.remove("dragging");
  choose(event.dataTransfer.files);
});
loadModelIdentity();
