// The demo page. Plain JavaScript, no build step, no third-party code: everything is computed by this
// service's /v1 routes (URLs relative to the page, so a proxy prefix works). An ES module: the photograph mode
// lives in photo.js beside it.
import { PHOTO_KIND, startPhotoMode } from "./photo.js";

(() => {
  const SIDE = 28;
  const PIXELS = SIDE * SIDE;
  const $ = (id) => document.getElementById(id);

  const state = {
    models: [], // GET v1/models -> models
    digits: {}, // label -> Float32Array(784) in [0, 1]
    clean: new Float32Array(PIXELS),
    source: "empty", // what the clean digit came from: "sample:3", "drawing", "upload:<file name>"
    seed: 1,
    generation: 0, // the newest denoise/reconstruct round; older answers are dropped
    timer: null,
  };

  // ---------------------------------------------------------------- HTTP

  function headers(extra) {
    const result = Object.assign({}, extra || {});
    const key = $("api-key").value.trim();
    if (key) result.Authorization = `Bearer ${key}`;
    return result;
  }

  async function api(path, options = {}) {
    const response = await fetch(path, Object.assign({}, options, { headers: headers(options.headers) }));
    if (!response.ok) {
      let message = `${response.status} ${response.statusText}`;
      try {
        const body = await response.json();
        if (body && body.error) {
          const detail = typeof body.error === "string" ? body.error : `${body.error.type}: ${body.error.message}`;
          message = `${response.status} ${detail}`;
        }
      } catch (_) {
        // not JSON: keep the status line
      }
      throw new Error(`${options.method || "GET"} ${path.split("?")[0]}: ${message}`);
    }
    return response;
  }

  async function postJSON(path, body) {
    const response = await api(path, {
      method: "POST",
      headers: { "Content-Type": "application/json", Accept: "application/json" },
      body: JSON.stringify(body),
    });
    return response.json();
  }

  function setStatus(text, kind) {
    const status = $("status");
    status.textContent = text;
    status.className = kind || "";
  }

  function fail(error) {
    setStatus(String(error.message || error), "error");
  }

  // ---------------------------------------------------------------- pixels

  // Gray level of every pixel of a canvas in [0, 1]: ITU-R BT.601 luma, alpha over black (as the service does).
  function canvasLuma(canvas) {
    const { width, height } = canvas;
    const rgba = canvas.getContext("2d").getImageData(0, 0, width, height).data;
    const data = new Float32Array(width * height);
    for (let i = 0; i < data.length; i++) {
      const luma = (299 * rgba[4 * i] + 587 * rgba[4 * i + 1] + 114 * rgba[4 * i + 2]) / 1000;
      data[i] = (luma / 255) * (rgba[4 * i + 3] / 255);
    }
    return { width, height, data };
  }

  function grayCanvas(values, width, height) {
    const canvas = document.createElement("canvas");
    canvas.width = width;
    canvas.height = height;
    paint(canvas, values);
    return canvas;
  }

  function paint(canvas, values) {
    const ctx = canvas.getContext("2d");
    const image = ctx.createImageData(canvas.width, canvas.height);
    for (let i = 0; i < values.length; i++) {
      const v = Math.round(Math.min(1, Math.max(0, values[i])) * 255);
      image.data.set([v, v, v, 255], 4 * i);
    }
    ctx.putImageData(image, 0, 0);
  }

  // MNIST's recipe, roughly: crop to the ink, fit it in 20x20, centre it by mass in 28x28.
  function fitDigit(image) {
    const { width, height, data } = image;
    let x0 = width;
    let y0 = height;
    let x1 = -1;
    let y1 = -1;
    for (let y = 0; y < height; y++) {
      for (let x = 0; x < width; x++) {
        if (data[y * width + x] > 0.1) {
          x0 = Math.min(x0, x);
          y0 = Math.min(y0, y);
          x1 = Math.max(x1, x);
          y1 = Math.max(y1, y);
        }
      }
    }
    const out = new Float32Array(PIXELS);
    if (x1 < 0) return out;
    const cropW = x1 - x0 + 1;
    const cropH = y1 - y0 + 1;
    const scale = 20 / Math.max(cropW, cropH);
    const w = Math.max(1, Math.round(cropW * scale));
    const h = Math.max(1, Math.round(cropH * scale));
    const small = document.createElement("canvas");
    small.width = w;
    small.height = h;
    const ctx = small.getContext("2d");
    ctx.imageSmoothingEnabled = true;
    ctx.imageSmoothingQuality = "high";
    ctx.drawImage(grayCanvas(data, width, height), x0, y0, cropW, cropH, 0, 0, w, h);
    const fitted = canvasLuma(small).data;
    let mass = 0;
    let mx = 0;
    let my = 0;
    for (let y = 0; y < h; y++) {
      for (let x = 0; x < w; x++) {
        const v = fitted[y * w + x];
        mass += v;
        mx += v * x;
        my += v * y;
      }
    }
    const cx = mass > 0 ? mx / mass : (w - 1) / 2;
    const cy = mass > 0 ? my / mass : (h - 1) / 2;
    const ox = Math.min(SIDE - w, Math.max(0, Math.round(SIDE / 2 - 0.5 - cx)));
    const oy = Math.min(SIDE - h, Math.max(0, Math.round(SIDE / 2 - 0.5 - cy)));
    for (let y = 0; y < h; y++) {
      for (let x = 0; x < w; x++) out[(y + oy) * SIDE + x + ox] = fitted[y * w + x];
    }
    return out;
  }

  // A seeded generator (mulberry32) and Box-Muller: the same seed gives the same noise.
  function gaussian(seed) {
    let a = seed >>> 0;
    const uniform = () => {
      a = (a + 0x6d2b79f5) >>> 0;
      let t = a;
      t = Math.imul(t ^ (t >>> 15), t | 1);
      t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
      return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
    };
    return () => Math.sqrt(-2 * Math.log(1 - uniform())) * Math.cos(2 * Math.PI * uniform());
  }

  // Clipped Gaussian noise, as the denoiser was trained on.
  function addNoise(clean, sigma, seed) {
    const normal = gaussian(seed);
    const noisy = new Float32Array(clean.length);
    for (let i = 0; i < clean.length; i++) noisy[i] = Math.min(1, Math.max(0, clean[i] + sigma * normal()));
    return noisy;
  }

  function psnr(x, reference) {
    let sum = 0;
    for (let i = 0; i < x.length; i++) sum += (x[i] - reference[i]) ** 2;
    const mse = sum / x.length;
    return mse === 0 ? Infinity : 10 * Math.log10(1 / mse);
  }

  function psnrText(x, reference) {
    const value = psnr(x, reference);
    return Number.isFinite(value) ? `PSNR ${value.toFixed(1)} dB` : "PSNR ∞ (identical)";
  }

  function toPng(values) {
    return new Promise((resolve, reject) => {
      grayCanvas(values, SIDE, SIDE).toBlob((blob) => (blob ? resolve(blob) : reject(new Error("PNG encoding failed"))), "image/png");
    });
  }

  function imagePixels(img) {
    const canvas = document.createElement("canvas");
    canvas.width = img.naturalWidth;
    canvas.height = img.naturalHeight;
    canvas.getContext("2d").drawImage(img, 0, 0);
    return canvasLuma(canvas).data;
  }

  function showBlob(img, blob) {
    const old = img.dataset.url;
    const url = URL.createObjectURL(blob);
    img.dataset.url = url;
    img.src = url;
    if (old) URL.revokeObjectURL(old);
    return img.decode();
  }

  // ---------------------------------------------------------------- the source digit

  function showOnDrawingArea(values) {
    const canvas = $("draw");
    const ctx = canvas.getContext("2d");
    ctx.imageSmoothingEnabled = false;
    ctx.drawImage(grayCanvas(values, SIDE, SIDE), 0, 0, canvas.width, canvas.height);
  }

  function setClean(values, source) {
    state.clean = values;
    state.source = source;
    schedule();
  }

  function bindDrawing() {
    const canvas = $("draw");
    const ctx = canvas.getContext("2d");
    ctx.fillStyle = "#000";
    ctx.fillRect(0, 0, canvas.width, canvas.height);
    let last = null;
    const at = (event) => {
      const box = canvas.getBoundingClientRect();
      return [
        ((event.clientX - box.left) * canvas.width) / box.width,
        ((event.clientY - box.top) * canvas.height) / box.height,
      ];
    };
    const line = (from, to) => {
      ctx.strokeStyle = "#fff";
      ctx.lineWidth = 22;
      ctx.lineCap = "round";
      ctx.lineJoin = "round";
      ctx.beginPath();
      ctx.moveTo(from[0], from[1]);
      ctx.lineTo(to[0], to[1]);
      ctx.stroke();
    };
    canvas.addEventListener("pointerdown", (event) => {
      canvas.setPointerCapture(event.pointerId);
      last = at(event);
      line(last, last);
    });
    canvas.addEventListener("pointermove", (event) => {
      if (!last) return;
      const point = at(event);
      line(last, point);
      last = point;
    });
    const end = () => {
      if (!last) return;
      last = null;
      $("sample").value = "";
      setClean(fitDigit(canvasLuma(canvas)), "drawing");
    };
    canvas.addEventListener("pointerup", end);
    canvas.addEventListener("pointercancel", end);
    $("clear").addEventListener("click", () => {
      ctx.fillStyle = "#000";
      ctx.fillRect(0, 0, canvas.width, canvas.height);
      $("sample").value = "";
      setClean(new Float32Array(PIXELS), "empty");
    });
  }

  async function loadUpload(file) {
    const bitmap = await createImageBitmap(file);
    let clean;
    if (bitmap.width === SIDE && bitmap.height === SIDE) {
      const canvas = document.createElement("canvas");
      canvas.width = SIDE;
      canvas.height = SIDE;
      canvas.getContext("2d").drawImage(bitmap, 0, 0);
      clean = canvasLuma(canvas).data;
    } else {
      const scale = Math.min(1, 560 / Math.max(bitmap.width, bitmap.height));
      const canvas = document.createElement("canvas");
      canvas.width = Math.max(1, Math.round(bitmap.width * scale));
      canvas.height = Math.max(1, Math.round(bitmap.height * scale));
      const ctx = canvas.getContext("2d");
      ctx.fillStyle = "#000";
      ctx.fillRect(0, 0, canvas.width, canvas.height);
      ctx.drawImage(bitmap, 0, 0, canvas.width, canvas.height);
      const image = canvasLuma(canvas);
      if (borderMean(image) > 0.5) image.data.forEach((v, i) => (image.data[i] = 1 - v));
      clean = fitDigit(image);
    }
    bitmap.close();
    showOnDrawingArea(clean);
    $("sample").value = "";
    setClean(clean, `upload:${file.name}`);
  }

  function borderMean(image) {
    const { width, height, data } = image;
    let sum = 0;
    let count = 0;
    for (let x = 0; x < width; x++) {
      sum += data[x] + data[(height - 1) * width + x];
      count += 2;
    }
    for (let y = 0; y < height; y++) {
      sum += data[y * width] + data[y * width + width - 1];
      count += 2;
    }
    return sum / count;
  }

  // ---------------------------------------------------------------- 1. denoise and reconstruct

  function schedule() {
    clearTimeout(state.timer);
    state.timer = setTimeout(() => denoiseAndReconstruct().catch(fail), 120);
  }

  async function imageTask(path, png, img, gen) {
    img.dataset.state = "loading";
    const form = new FormData();
    form.append("file", png, "noisy.png");
    const response = await api(`${path}?preprocess=none`, { method: "POST", headers: { Accept: "image/png" }, body: form });
    const blob = await response.blob();
    if (gen !== state.generation) return null;
    await showBlob(img, blob);
    return { pixels: imagePixels(img), score: response.headers.get("X-Score") };
  }

  async function denoiseAndReconstruct() {
    const gen = ++state.generation;
    const source = state.source;
    const sigma = Number($("sigma").value);
    const clean = state.clean;
    const noisy = addNoise(clean, sigma, state.seed);
    paint($("clean"), clean);
    paint($("noisy"), noisy);
    $("noisy-psnr").textContent = psnrText(noisy, clean);
    const png = await toPng(noisy);
    const jobs = [];
    const denoiser = $("denoise-model").value;
    if (denoiser) {
      const img = $("denoised");
      jobs.push(
        imageTask(`v1/models/${encodeURIComponent(denoiser)}/denoise`, png, img, gen).then((out) => {
          if (!out) return;
          $("denoised-psnr").textContent = psnrText(out.pixels, clean);
          Object.assign(img.dataset, { state: "done", input: source, sigma: String(sigma), model: denoiser });
        })
      );
    }
    const autoencoder = $("reconstruct-model").value;
    if (autoencoder) {
      const img = $("reconstruction");
      jobs.push(
        imageTask(`v1/models/${encodeURIComponent(autoencoder)}/reconstruct`, png, img, gen).then((out) => {
          if (!out) return;
          $("reconstruction-psnr").textContent = psnrText(out.pixels, clean);
          const score = Number(out.score);
          $("reconstruction-score").textContent = Number.isFinite(score) ? `score ${score.toFixed(4)}` : "";
          Object.assign(img.dataset, { state: "done", input: source, sigma: String(sigma), model: autoencoder });
        })
      );
    }
    try {
      await Promise.all(jobs);
    } catch (error) {
      for (const id of ["denoised", "reconstruction"]) if ($(id).dataset.state === "loading") $(id).dataset.state = "error";
      throw error;
    }
  }

  // ---------------------------------------------------------------- 2. latent walk

  function flatten(nested) {
    return Array.isArray(nested) ? nested.flatMap(flatten) : [nested];
  }

  function nest(flat, shape) {
    if (shape.length === 0) return flat[0];
    if (shape.length === 1) return Array.from(flat);
    const step = flat.length / shape[0];
    return Array.from({ length: shape[0] }, (_, i) => nest(flat.slice(i * step, (i + 1) * step), shape.slice(1)));
  }

  function walkInput(label) {
    return label === "drawing" ? state.clean : state.digits[label];
  }

  async function walk() {
    const name = $("walk-model").value;
    if (!name) return;
    const model = state.models.find((m) => m.name === name);
    const steps = Math.min(16, Math.max(2, Math.round(Number($("walk-steps").value) || 8)));
    // Vector models take flat 784-pixel rows; image models take [28][28] images.
    const asSample = (x) => (model.input_layout === "vector" ? Array.from(x) : nest(Array.from(x), [SIDE, SIDE]));
    const a = walkInput($("walk-a").value);
    const b = walkInput($("walk-b").value);
    const strip = $("walk-strip");
    strip.dataset.state = "loading";
    const encoded = await postJSON(`v1/models/${encodeURIComponent(name)}/encode`, { inputs: [asSample(a), asSample(b)] });
    const codeShape = encoded.shape.slice(1);
    const za = flatten(encoded.latent[0]);
    const zb = flatten(encoded.latent[1]);
    const codes = [];
    for (let i = 0; i < steps; i++) {
      const t = i / (steps - 1);
      codes.push(nest(za.map((v, k) => (1 - t) * v + t * zb[k]), codeShape));
    }
    const decoded = await postJSON(`v1/models/${encodeURIComponent(name)}/decode`, { inputs: codes });
    strip.replaceChildren(
      ...decoded.reconstruction.map((sample, i) => {
        const canvas = document.createElement("canvas");
        canvas.width = SIDE;
        canvas.height = SIDE;
        canvas.title = `t = ${(i / (steps - 1)).toFixed(2)}`;
        paint(canvas, flatten(sample));
        return canvas;
      })
    );
    strip.dataset.state = "done";
    $("walk-latent").textContent = `${name}: each digit is a code of shape [${codeShape.join(", ")}] (${za.length} numbers).`;
  }

  // ---------------------------------------------------------------- 3. model card

  function cell(row, text, className) {
    const td = document.createElement("td");
    td.textContent = text;
    if (className) td.className = className;
    row.appendChild(td);
  }

  function formatValue(value) {
    if (typeof value === "number") return Number.isInteger(value) ? String(value) : value.toPrecision(4);
    if (value === null || value === undefined) return "—";
    return typeof value === "object" ? JSON.stringify(value) : String(value);
  }

  function metricRows(metrics, prefix, rows) {
    for (const [key, value] of Object.entries(metrics || {})) {
      const name = prefix ? `${prefix}.${key}` : key;
      if (key === "gates" && Array.isArray(value)) continue;
      if (value && typeof value === "object" && !Array.isArray(value)) metricRows(value, name, rows);
      else rows.push([name, formatValue(value)]);
    }
    return rows;
  }

  function table(rows, headings) {
    const tableEl = document.createElement("table");
    const head = tableEl.createTHead().insertRow();
    for (const h of headings) {
      const th = document.createElement("th");
      th.textContent = h;
      head.appendChild(th);
    }
    const body = tableEl.createTBody();
    for (const values of rows) {
      const row = body.insertRow();
      values.forEach((v, i) => cell(row, v.text ?? v, v.className ?? (i > 0 ? "num" : "")));
    }
    return tableEl;
  }

  async function showCard() {
    const name = $("card-model").value;
    if (!name) return;
    const card = await (await api(`v1/models/${encodeURIComponent(name)}`)).json();
    const box = $("card");
    const title = document.createElement("h3");
    title.textContent = `${card.name} (version ${card.version ?? "?"}, ${card.status})`;
    const description = document.createElement("p");
    description.textContent = card.description || "";
    const facts = table(
      [
        ["kind", card.kind ?? "—"],
        ["tasks", (card.tasks || []).join(", ")],
        ["input", formatValue(card.input && card.input.shape ? card.input.shape : card.input_layout)],
        ["latent", formatValue(card.latent)],
        ["runs on", formatValue(card.providers ? card.providers.used : null)],
      ].map(([k, v]) => [k, { text: v, className: "" }]),
      ["", ""]
    );
    const metrics = table(metricRows(card.metrics, "", []), ["metric (held-out test set)", "value"]);
    const children = [title, description, facts, metrics];
    const gates = (card.metrics && card.metrics.gates) || [];
    if (gates.length) {
      children.push(
        table(
          gates.map((g) => [
            g.name,
            formatValue(g.value),
            `${g.rule} ${formatValue(g.target)}`,
            { text: g.passed ? "passed" : "failed", className: g.passed ? "pass" : "fail" },
          ]),
          ["quality gate", "value", "target", ""]
        )
      );
    }
    box.replaceChildren(...children);
    box.dataset.model = name;
  }

  // ---------------------------------------------------------------- start

  function options(select, items, selected) {
    select.replaceChildren(
      ...items.map(([value, label]) => {
        const option = document.createElement("option");
        option.value = value;
        option.textContent = label;
        return option;
      })
    );
    if (selected !== undefined && items.some(([value]) => value === selected)) select.value = selected;
  }

  function modelsWith(predicate) {
    return state.models.filter((m) => m.status === "ready" && predicate(m)).map((m) => [m.name, m.name]);
  }

  // The API key (only when the service requires one) lives in this tab's session storage; changing it reloads.
  function bindApiKey() {
    const input = $("api-key");
    input.value = sessionStorage.getItem("ae-api-key") || "";
    if (input.value) input.closest("details").open = true;
    input.addEventListener("change", () => {
      sessionStorage.setItem("ae-api-key", input.value.trim());
      location.reload();
    });
  }

  async function start() {
    bindApiKey();
    bindDrawing();
    const [list, digits] = await Promise.all([
      api("v1/models").then((r) => r.json()),
      fetch("demo-assets/digits.json").then((r) => r.json()),
    ]);
    state.models = list.models;
    for (const [label, pixels] of Object.entries(digits.digits)) state.digits[label] = Float32Array.from(pixels, (v) => v / 255);
    const labels = Object.keys(state.digits).map((l) => [l, `digit ${l}`]);
    const isImage = (m) => m.input_layout !== "sequence";
    options($("sample"), [["", "—"], ...labels], "3");
    options($("walk-a"), [...labels, ["drawing", "my digit"]], "1");
    options($("walk-b"), [...labels, ["drawing", "my digit"]], "7");
    // Photograph denoisers have a mode of their own (colour, sizes of their own, no MNIST preprocessing).
    const isDigitDenoiser = (m) => m.tasks.includes("denoise") && m.kind !== PHOTO_KIND;
    options($("denoise-model"), modelsWith(isDigitDenoiser), "denoise");
    options($("reconstruct-model"), modelsWith((m) => isImage(m) && m.tasks.includes("reconstruct")), "conv");
    options($("walk-model"), modelsWith((m) => isImage(m) && m.tasks.includes("encode") && m.tasks.includes("decode")), "dense");
    options($("card-model"), state.models.map((m) => [m.name, `${m.name} (${m.status})`]), "dense");

    $("sample").addEventListener("change", () => {
      const label = $("sample").value;
      if (!label) return;
      showOnDrawingArea(state.digits[label]);
      setClean(state.digits[label], `sample:${label}`);
    });
    $("upload").addEventListener("change", () => {
      const file = $("upload").files[0];
      if (file) loadUpload(file).catch(fail);
      $("upload").value = "";
    });
    $("sigma").addEventListener("input", () => {
      $("sigma-value").textContent = Number($("sigma").value).toFixed(2);
      schedule();
    });
    $("reseed").addEventListener("click", () => {
      state.seed += 1;
      schedule();
    });
    $("denoise-model").addEventListener("change", schedule);
    $("reconstruct-model").addEventListener("change", schedule);
    $("walk").addEventListener("click", () => walk().catch(fail));
    $("card-model").addEventListener("change", () => showCard().catch(fail));

    const ready = state.models.filter((m) => m.status === "ready").length;
    const total = state.models.length;
    setStatus(`${ready} of ${total} models ready`, ready === total ? "ok" : "error");
    showOnDrawingArea(state.digits["3"]);
    state.clean = state.digits["3"];
    state.source = "sample:3";
    await Promise.all([
      denoiseAndReconstruct(),
      walk(),
      showCard(),
      startPhotoMode({ api, normal: gaussian, models: state.models }),
    ]);
    document.body.dataset.ready = "true";
  }

  document.addEventListener("DOMContentLoaded", () => start().catch(fail));
})();
