// captioner web page: upload or drop a photo, POST it to /api/caption, show caption, beams and heatmaps.
"use strict";

const $ = (id) => document.getElementById(id);

async function showModel() {
  try {
    const health = await (await fetch("/health")).json();
    const decoder = health.members > 1 ? `an ensemble of ${health.members} ${health.decoder} decoders`
      : `${health.decoder} decoder`;
    $("model").textContent = `model ${health.model} · ${health.encoder} encoder, ${decoder}, ${health.vocab_size} words`;
  } catch (err) {
    $("model").textContent = "model information unavailable";
  }
}

function setStatus(text, isError) {
  $("status").textContent = text;
  $("status").className = isError ? "error" : "";
}

// Colour map from dark (not looked at) to bright yellow (looked at most), drawn half-transparent over the photo.
function heat(value) {
  const v = Math.max(0, Math.min(1, value));
  return [Math.round(255 * Math.min(1, 2 * v)), Math.round(255 * Math.max(0, 2 * v - 1) * 0.9 + 40 * v), 40];
}

function drawHeatmap(canvas, bitmap, grid) {
  const width = 320;
  const height = Math.round((bitmap.height / bitmap.width) * width);
  canvas.width = width;
  canvas.height = height;
  const ctx = canvas.getContext("2d");
  ctx.drawImage(bitmap, 0, 0, width, height);
  const rows = grid.length;
  const cols = grid[0].length;
  // Scaled from the least to the most attended cell; a uniform map leaves the photo uncovered.
  const flat = grid.flat();
  const low = Math.min(...flat);
  const span = Math.max(...flat) - low;
  const scaled = flat.map((weight) => (span > 1e-6 ? (weight - low) / span : 0));
  const cells = document.createElement("canvas");
  cells.width = cols;
  cells.height = rows;
  const cctx = cells.getContext("2d");
  const pixels = cctx.createImageData(cols, rows);
  scaled.forEach((value, i) => {
    const [r, g, b] = heat(value);
    pixels.data.set([r, g, b, Math.round(190 * value)], 4 * i);
  });
  cctx.putImageData(pixels, 0, 0);
  ctx.imageSmoothingEnabled = true;
  ctx.imageSmoothingQuality = "high";
  ctx.drawImage(cells, 0, 0, width, height);
}

async function render(file, result) {
  $("photo").src = URL.createObjectURL(file);
  $("caption").textContent = result.caption || "(empty caption)";
  $("score").textContent = result.score.toFixed(3);
  $("logprob").textContent = result.log_prob.toFixed(3);
  $("timing").textContent = `beam ${result.beam_size}, ${(1000 * result.seconds).toFixed(0)} ms`;
  const beams = $("beams");
  beams.replaceChildren();
  for (const alt of result.alternatives) {
    const li = document.createElement("li");
    li.textContent = `${alt.caption || "(empty)"} (score ${alt.score.toFixed(3)}, log-probability ${alt.log_prob.toFixed(3)})`;
    beams.append(li);
  }
  if (!result.alternatives.length) beams.append(Object.assign(document.createElement("li"), {textContent: "none (beam size 1)"}));
  const maps = $("heatmaps");
  maps.replaceChildren();
  $("no-attention").hidden = result.attention !== null;
  if (result.attention) {
    const bitmap = await createImageBitmap(file, {imageOrientation: "from-image"});
    result.words.forEach((word, i) => {
      const figure = document.createElement("figure");
      figure.className = "word";
      const canvas = document.createElement("canvas");
      canvas.dataset.word = word;
      drawHeatmap(canvas, bitmap, result.attention[i]);
      const label = document.createElement("figcaption");
      label.textContent = word;
      figure.append(canvas, label);
      maps.append(figure);
    });
  }
  $("result").hidden = false;
}

async function caption(file) {
  if (!file) return;
  setStatus(`captioning ${file.name}…`, false);
  const body = new FormData();
  body.append("image", file);
  body.append("beam_size", $("beam").value);
  try {
    const response = await fetch("/api/caption", {method: "POST", body});
    const result = await response.json();
    if (!response.ok) {
      setStatus(`error: ${result.error}`, true);
      return;
    }
    await render(file, result);
    setStatus(`captioned ${file.name}`, false);
  } catch (err) {
    setStatus(`error: ${err}`, true);
  }
}

const drop = $("drop");
["dragenter", "dragover"].forEach((name) => drop.addEventListener(name, (e) => {
  e.preventDefault();
  drop.classList.add("over");
}));
["dragleave", "drop"].forEach((name) => drop.addEventListener(name, (e) => {
  e.preventDefault();
  drop.classList.remove("over");
}));
drop.addEventListener("drop", (e) => caption(e.dataTransfer.files[0]));
$("file").addEventListener("change", (e) => caption(e.target.files[0]));
$("beam").addEventListener("change", () => caption($("file").files[0]));
showModel();
