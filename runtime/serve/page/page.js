// The page: edgesd's own endpoint (/edgesd/v1) from a form. No framework, no network but this server.
"use strict";

const $ = (id) => document.getElementById(id);
const state = { input: null, models: [], controller: null, painted: false };

function say(text, isError = false) {
  $("status").textContent = text;
  $("status").classList.toggle("error", isError);
}

async function answer(response) {
  const body = await response.json().catch(() => ({}));
  if (!response.ok) throw new Error(body.detail || `the server answered ${response.status}`);
  return body;
}

function applyDefaults(model) {
  const d = model.defaults;
  if (d.num_inference_steps) $("steps").value = d.num_inference_steps;
  if (d.guidance_scale !== undefined && d.guidance_scale !== null) $("guidance").value = d.guidance_scale;
  if (d.strength) $("strength").value = d.strength;
  $("strength-value").textContent = $("strength").value;
}

async function start() {
  $("strength-value").textContent = $("strength").value;
  try {
    state.models = await answer(await fetch("/edgesd/v1/models"));
    for (const model of state.models) $("model").add(new Option(model.name, model.name, false, model.current));
    $("model-picker").hidden = state.models.length < 2;
    applyDefaults(state.models.find((m) => m.current) || state.models[0]);
    const samplers = await answer(await fetch("/sdapi/v1/samplers"));
    for (const sampler of samplers) $("sampler").add(new Option(sampler.name, sampler.name));
  } catch (e) {
    say(`Could not reach the server: ${e.message}`, true);
  }
}

function useInput(dataUrl) {
  state.input = dataUrl;
  const img = $("source");
  img.onload = () => {
    const canvas = $("mask");
    canvas.width = img.naturalWidth;
    canvas.height = img.naturalHeight;
    clearMask();
    $("stage").hidden = false;
    $("mask-tools").disabled = false;
    say(`Input: ${img.naturalWidth}×${img.naturalHeight}`);
  };
  img.onerror = () => say("That file is not an image this browser can show (PNG, JPEG or WebP).", true);
  img.src = dataUrl;
}

function readFile(file) {
  if (!file) return;
  if (!/^image\/(png|jpeg|webp)$/.test(file.type)) {
    say(`${file.name || "That file"} is not a PNG, JPEG or WebP image.`, true);
    return;
  }
  const reader = new FileReader();
  reader.onload = () => useInput(reader.result);
  reader.readAsDataURL(file);
}

function clearMask() {
  const canvas = $("mask");
  canvas.getContext("2d").clearRect(0, 0, canvas.width, canvas.height);
  state.painted = false;
}

function paintAt(event) {
  const canvas = $("mask");
  const box = canvas.getBoundingClientRect();
  const scale = canvas.width / box.width;
  const ctx = canvas.getContext("2d");
  ctx.fillStyle = "#fff";
  ctx.beginPath();
  ctx.arc((event.clientX - box.left) * scale, (event.clientY - box.top) * scale, ($("brush").value / 2) * scale, 0, 2 * Math.PI);
  ctx.fill();
  state.painted = true;
}

function maskDataUrl() {
  // The painted strokes, white on black, at the input's own size.
  const canvas = $("mask");
  const out = document.createElement("canvas");
  out.width = canvas.width;
  out.height = canvas.height;
  const ctx = out.getContext("2d");
  ctx.fillStyle = "#000";
  ctx.fillRect(0, 0, out.width, out.height);
  ctx.drawImage(canvas, 0, 0);
  return out.toDataURL("image/png");
}

function number(id) {
  const value = $(id).value.trim();
  return value === "" ? null : Number(value);
}

function request(taskId) {
  const body = {
    image: state.input, prompt: $("prompt").value, negative_prompt: $("negative").value || null,
    strength: number("strength"), num_inference_steps: number("steps"), guidance_scale: number("guidance"),
    seed: number("seed"), num_images: number("variations") || 1, scheduler: $("sampler").value || null,
    model: $("model").value || null, task_id: taskId,
  };
  const sides = Object.fromEntries(["left", "right", "top", "bottom"].map((side) => [side, number(side) || 0]));
  if (Object.values(sides).some((v) => v > 0)) {
    if (state.painted) throw new Error("Outpaint or paint a mask, not both: clear the mask or set the margins to 0.");
    body.outpaint = sides;
  } else if (state.painted) {
    body.mask = maskDataUrl();
  }
  return body;
}

async function follow(taskId) {
  while (state.controller) {
    try {
      const p = await answer(await fetch(`/edgesd/v1/progress/${taskId}?preview_image=true`));
      if (!state.controller) return;
      if (p.state === "queued") say(`Queued: ${p.ahead} job(s) ahead`);
      if (p.state === "running") {
        $("progress").value = p.progress;
        say(`Image ${p.image + 1} of ${p.images}, step ${p.step} of ${p.steps || "?"}`);
        if (p.preview) {
          $("preview").src = `data:image/png;base64,${p.preview}`;
          $("preview").hidden = false;
        }
      }
    } catch (e) { /* the next poll tries again */ }
    await new Promise((resolve) => setTimeout(resolve, 400));
  }
}

function show(result) {
  const results = $("results");
  results.replaceChildren();
  for (const made of result.images) {
    const url = `data:image/png;base64,${made.image}`;
    const figure = document.createElement("figure");
    const img = new Image();
    img.src = url;
    img.alt = `Result, seed ${made.seed}`;
    const caption = document.createElement("figcaption");
    const seed = document.createElement("span");
    seed.textContent = `seed ${made.seed}, ${made.width}×${made.height}`;
    const download = document.createElement("a");
    download.href = url;
    download.download = `edgesd-${made.seed}.png`;
    download.textContent = "Download";
    const reuse = document.createElement("button");
    reuse.type = "button";
    reuse.textContent = "Use as input";
    reuse.setAttribute("aria-label", `Use seed ${made.seed} as input`);
    reuse.onclick = () => useInput(url);
    caption.append(seed, download, reuse);
    figure.append(img, caption);
    results.append(figure);
  }
}

async function generate(event) {
  event.preventDefault();
  if (!state.input) return say("Pick an image first.", true);
  const taskId = `page-${Date.now().toString(36)}-${Math.random().toString(36).slice(2, 10)}`;
  let body;
  try {
    body = request(taskId);
  } catch (e) {
    return say(e.message, true);
  }
  state.controller = new AbortController();
  $("generate").disabled = true;
  $("cancel").disabled = false;
  $("progress").value = 0;
  say("Starting…");
  follow(taskId);
  try {
    const response = await fetch("/edgesd/v1/generate", {
      method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body),
      signal: state.controller.signal,
    });
    const result = await answer(response);
    show(result);
    $("progress").value = 1;
    say(`${result.images.length} image(s) from ${result.model}${result.interrupted ? " (interrupted)" : ""}`);
  } catch (e) {
    say(e.name === "AbortError" ? "Cancelled." : e.message, e.name !== "AbortError");
  } finally {
    state.controller = null;
    $("preview").hidden = true;
    $("generate").disabled = false;
    $("cancel").disabled = true;
  }
}

document.addEventListener("DOMContentLoaded", () => {
  start();
  $("form").addEventListener("submit", generate);
  $("cancel").addEventListener("click", () => state.controller && state.controller.abort());
  $("image").addEventListener("change", (e) => readFile(e.target.files[0]));
  $("strength").addEventListener("input", () => { $("strength-value").textContent = $("strength").value; });
  $("model").addEventListener("change", () => applyDefaults(state.models.find((m) => m.name === $("model").value)));
  $("clear-mask").addEventListener("click", clearMask);
  $("paint").addEventListener("change", () => $("stage").classList.toggle("painting", $("paint").checked));
  const drop = $("drop");
  drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => { e.preventDefault(); drop.classList.remove("over"); readFile(e.dataTransfer.files[0]); });
  document.addEventListener("paste", (e) => {
    const item = [...e.clipboardData.items].find((i) => i.kind === "file");
    if (item) readFile(item.getAsFile());
  });
  const canvas = $("mask");
  canvas.addEventListener("pointerdown", (e) => {
    if (!$("paint").checked) return;
    canvas.setPointerCapture(e.pointerId);
    paintAt(e);
  });
  canvas.addEventListener("pointermove", (e) => { if ($("paint").checked && e.buttons) paintAt(e); });
});
