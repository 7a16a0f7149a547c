// The demo's photograph mode: a photograph (a bundled sample or the user's own), Gaussian noise added here in the
// browser, the noisy image sent as a PNG to a "photo-denoise" model's /denoise route, and the noisy, denoised and
// clean images side by side with their PSNR and a zoom that shows the same region of all three.
//
// Images are kept as { width, height, gray, rgb } with `rgb` 8-bit RGB (3 values a pixel, gray replicated), so
// PSNR is over all channels of 8-bit values as the task asks, and a gray photograph is sent as a gray PNG (the
// service answers a gray upload in gray).

export const PHOTO_KIND = "photo-denoise";

const MAX_SIDE = 512; // uploads are downscaled to this longer side: a quick answer, far inside the service's limits
const SAMPLES = { coffee: "demo-assets/examples/coffee.png", camera: "demo-assets/examples/camera.png" };
const DECODE = { colorSpaceConversion: "none", premultiplyAlpha: "none", imageOrientation: "from-image" };
const MAX_ZOOM = 8;

// ---------------------------------------------------------------- images

function context2d(canvas) {
  return canvas.getContext("2d", { willReadFrequently: true });
}

// Pixels of a decoded image (alpha composited over black), downscaled when its longer side exceeds `maxSide`.
function readBitmap(bitmap, maxSide) {
  const scale = Math.min(1, maxSide / Math.max(bitmap.width, bitmap.height));
  const width = Math.max(1, Math.round(bitmap.width * scale));
  const height = Math.max(1, Math.round(bitmap.height * scale));
  const canvas = document.createElement("canvas");
  canvas.width = width;
  canvas.height = height;
  const ctx = context2d(canvas);
  ctx.fillStyle = "#000";
  ctx.fillRect(0, 0, width, height);
  ctx.imageSmoothingEnabled = true;
  ctx.imageSmoothingQuality = "high";
  ctx.drawImage(bitmap, 0, 0, width, height);
  const rgba = ctx.getImageData(0, 0, width, height).data;
  const rgb = new Uint8ClampedArray(width * height * 3);
  let gray = true;
  for (let i = 0, j = 0; i < rgba.length; i += 4, j += 3) {
    rgb[j] = rgba[i];
    rgb[j + 1] = rgba[i + 1];
    rgb[j + 2] = rgba[i + 2];
    if (rgba[i] !== rgba[i + 1] || rgba[i] !== rgba[i + 2]) gray = false;
  }
  return { width, height, gray, rgb, originalWidth: bitmap.width, originalHeight: bitmap.height };
}

// A response's body as a Blob, read as bytes: Chromium's developer tools (and so the browser tests) cannot show a
// body the page read with response.blob().
async function bodyBlob(response) {
  return new Blob([await response.arrayBuffer()], { type: response.headers.get("Content-Type") || "" });
}

async function decodeImage(blob, maxSide) {
  const bitmap = await createImageBitmap(blob, DECODE);
  try {
    return readBitmap(bitmap, maxSide);
  } finally {
    bitmap.close();
  }
}

// Gaussian noise of standard deviation `sigma` (0-255 scale), rounded to 8 bits and clipped: independent per
// channel for a colour image, one value per pixel (the same in every channel) for a gray one.
function addNoise(image, sigma, normal) {
  const rgb = new Uint8ClampedArray(image.rgb.length); // Uint8ClampedArray rounds and clips on assignment
  if (image.gray) {
    for (let j = 0; j < rgb.length; j += 3) {
      const v = image.rgb[j] + sigma * normal();
      rgb[j] = v;
      rgb[j + 1] = v;
      rgb[j + 2] = v;
    }
  } else {
    for (let j = 0; j < rgb.length; j++) rgb[j] = image.rgb[j] + sigma * normal();
  }
  return { ...image, rgb };
}

function psnr(x, reference) {
  let sum = 0;
  for (let i = 0; i < x.length; i++) sum += (x[i] - reference[i]) ** 2;
  const mse = sum / x.length;
  return mse === 0 ? Infinity : 10 * Math.log10((255 * 255) / mse);
}

function psnrText(x, reference) {
  const value = psnr(x.rgb, reference.rgb);
  return Number.isFinite(value) ? `PSNR ${value.toFixed(2)} dB` : "PSNR ∞ (identical)";
}

// ---------------------------------------------------------------- PNG (8-bit gray or RGB, no alpha)

let crcTable = null;

function crc32(bytes) {
  if (!crcTable) {
    crcTable = new Uint32Array(256);
    for (let n = 0; n < 256; n++) {
      let c = n;
      for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
      crcTable[n] = c >>> 0;
    }
  }
  let c = 0xffffffff;
  for (let i = 0; i < bytes.length; i++) c = crcTable[(c ^ bytes[i]) & 0xff] ^ (c >>> 8);
  return (c ^ 0xffffffff) >>> 0;
}

function pngChunk(type, data) {
  const chunk = new Uint8Array(12 + data.length);
  const view = new DataView(chunk.buffer);
  view.setUint32(0, data.length);
  for (let i = 0; i < 4; i++) chunk[4 + i] = type.charCodeAt(i);
  chunk.set(data, 8);
  view.setUint32(8 + data.length, crc32(chunk.subarray(4, 8 + data.length)));
  return chunk;
}

// The canvas's own encoder always writes RGBA, which the service would answer in colour; this writes the exact
// 8-bit values as gray (colour type 0) or RGB (2), deflated by the browser's CompressionStream (zlib format).
// The file's bytes, not a Blob: a request body of bytes is what the browser's developer tools can show.
async function encodePng(image) {
  const { width, height, gray } = image;
  const channels = gray ? 1 : 3;
  const stride = 1 + width * channels;
  const raw = new Uint8Array(height * stride); // each row: filter type 0, then the samples
  for (let y = 0; y < height; y++) {
    const row = y * stride + 1;
    for (let x = 0; x < width; x++) {
      const j = 3 * (y * width + x);
      if (gray) raw[row + x] = image.rgb[j];
      else raw.set(image.rgb.subarray(j, j + 3), row + 3 * x);
    }
  }
  const stream = new Blob([raw]).stream().pipeThrough(new CompressionStream("deflate"));
  const idat = new Uint8Array(await new Response(stream).arrayBuffer());
  const header = new Uint8Array(13);
  const view = new DataView(header.buffer);
  view.setUint32(0, width);
  view.setUint32(4, height);
  header[8] = 8; // bit depth
  header[9] = gray ? 0 : 2; // colour type
  const signature = new Uint8Array([137, 80, 78, 71, 13, 10, 26, 10]);
  const parts = [signature, pngChunk("IHDR", header), pngChunk("IDAT", idat), pngChunk("IEND", new Uint8Array(0))];
  const file = new Uint8Array(parts.reduce((n, part) => n + part.length, 0));
  parts.reduce((offset, part) => (file.set(part, offset), offset + part.length), 0);
  return file;
}

// Whether a PNG answer is gray (colour types 0 and 4), read from its header.
async function pngIsGray(blob) {
  const head = new Uint8Array(await blob.slice(0, 26).arrayBuffer());
  const png = head.length === 26 && head[1] === 80 && head[2] === 78 && head[3] === 71;
  return png && (head[25] === 0 || head[25] === 4);
}

// ---------------------------------------------------------------- the zoomed views

// Draws the same region of every image: `zoom` source pixels to the view's width, centred on (cx, cy), nearest
// neighbour when magnified so single pixels stay visible. The canvases match their displayed size in device
// pixels, so the browser does not resample them again.
class Views {
  constructor(canvases) {
    this.canvases = canvases;
    this.sources = new Map(); // canvas -> full-resolution canvas, or null when empty
    this.zoom = 1;
    this.width = 0;
    this.height = 0;
    this.cx = 0;
    this.cy = 0;
    this.onZoom = () => {};
  }

  setImageSize(width, height) {
    this.width = width;
    this.height = height;
    this.cx = width / 2;
    this.cy = height / 2;
  }

  show(canvas, image) {
    let source = null;
    if (image) {
      source = document.createElement("canvas");
      source.width = image.width;
      source.height = image.height;
      const pixels = new ImageData(image.width, image.height);
      for (let i = 0, j = 0; j < image.rgb.length; i += 4, j += 3) {
        pixels.data[i] = image.rgb[j];
        pixels.data[i + 1] = image.rgb[j + 1];
        pixels.data[i + 2] = image.rgb[j + 2];
        pixels.data[i + 3] = 255;
      }
      context2d(source).putImageData(pixels, 0, 0);
    }
    this.sources.set(canvas, source);
    this.draw(canvas);
  }

  region() {
    const w = this.width / this.zoom;
    const h = this.height / this.zoom;
    // whole source pixels at the region's corner, so magnified pixels line up across the three views
    const x = Math.min(Math.floor(this.width - w), Math.max(0, Math.round(this.cx - w / 2)));
    const y = Math.min(Math.floor(this.height - h), Math.max(0, Math.round(this.cy - h / 2)));
    return { x, y, w, h };
  }

  draw(canvas) {
    const source = this.sources.get(canvas);
    const displayed = canvas.parentElement.clientWidth || 300;
    const width = Math.max(1, Math.round(displayed * (window.devicePixelRatio || 1)));
    const height = this.width ? Math.max(1, Math.round((width * this.height) / this.width)) : Math.round(width * 0.66);
    if (canvas.width !== width || canvas.height !== height) {
      canvas.width = width;
      canvas.height = height;
    }
    const ctx = canvas.getContext("2d");
    ctx.clearRect(0, 0, width, height);
    canvas.classList.toggle("zoomed", this.zoom > 1);
    if (!source) return;
    const { x, y, w, h } = this.region();
    ctx.imageSmoothingEnabled = this.zoom === 1;
    ctx.imageSmoothingQuality = "high";
    ctx.drawImage(source, x, y, w, h, 0, 0, width, height);
  }

  drawAll() {
    for (const canvas of this.canvases) this.draw(canvas);
    // what is shown, for whoever inspects the page (and the browser tests)
    const panels = this.canvases[0].closest(".photo-panels");
    const { x, y, w, h } = this.region();
    Object.assign(panels.dataset, { zoom: String(this.zoom), region: [x, y, w, h].map((v) => +v.toFixed(3)).join(",") });
  }

  setZoom(zoom) {
    this.zoom = Math.min(MAX_ZOOM, Math.max(1, Math.round(zoom)));
    this.drawAll();
    this.onZoom(this.zoom);
  }

  centreOn(x, y) {
    const { w, h } = this.region();
    this.cx = Math.min(this.width - w / 2, Math.max(w / 2, x));
    this.cy = Math.min(this.height - h / 2, Math.max(h / 2, y));
    this.drawAll();
  }

  // A click centres the region on that point (and magnifies 4x when not zoomed yet); a drag moves the region
  // with the pointer; the arrow keys move it by a quarter of its size.
  bind(canvas) {
    let start = null;
    const toImage = (event) => {
      const box = canvas.getBoundingClientRect();
      const { x, y, w, h } = this.region();
      return [x + ((event.clientX - box.left) / box.width) * w, y + ((event.clientY - box.top) / box.height) * h];
    };
    canvas.addEventListener("pointerdown", (event) => {
      if (!this.width) return;
      canvas.setPointerCapture(event.pointerId);
      start = { clientX: event.clientX, clientY: event.clientY, cx: this.cx, cy: this.cy, moved: false };
    });
    canvas.addEventListener("pointermove", (event) => {
      if (!start) return;
      const dx = event.clientX - start.clientX;
      const dy = event.clientY - start.clientY;
      if (!start.moved && Math.hypot(dx, dy) < 4) return;
      start.moved = true;
      const box = canvas.getBoundingClientRect();
      const { w, h } = this.region();
      this.centreOn(start.cx - (dx * w) / box.width, start.cy - (dy * h) / box.height);
    });
    const end = (event) => {
      if (!start) return;
      const clicked = !start.moved && event.type === "pointerup";
      start = null;
      if (!clicked) return;
      const [x, y] = toImage(event);
      if (this.zoom === 1) this.zoom = 4;
      this.centreOn(x, y);
      this.onZoom(this.zoom);
    };
    canvas.addEventListener("pointerup", end);
    canvas.addEventListener("pointercancel", end);
    canvas.addEventListener("keydown", (event) => {
      const steps = { ArrowLeft: [-1, 0], ArrowRight: [1, 0], ArrowUp: [0, -1], ArrowDown: [0, 1] }[event.key];
      if (!steps || !this.width) return;
      event.preventDefault();
      const { w, h } = this.region();
      this.centreOn(this.cx + (steps[0] * w) / 4, this.cy + (steps[1] * h) / 4);
    });
  }
}

// ---------------------------------------------------------------- the mode

// `api(path, options)`: the page's fetch (API key, errors thrown with the service's message); `normal(seed)`: a
// seeded standard normal generator; `models`: GET v1/models's list.
export async function startPhotoMode({ api, normal, models }) {
  const $ = (id) => document.getElementById(id);
  const candidates = models.filter((m) => m.kind === PHOTO_KIND);
  const ready = candidates.filter((m) => m.status === "ready");
  const section = $("photo-section");
  if (!ready.length) {
    const why = candidates.length
      ? candidates.map((m) => `${m.name} is ${m.status}${m.reason ? ` (${m.reason})` : ""}`).join("; ")
      : `this service serves no model of kind "${PHOTO_KIND}"`;
    $("photo-unavailable").textContent = `Photograph mode is not available: ${why}. The rest of the page still works.`;
    $("photo-unavailable").hidden = false;
    $("photo-mode").hidden = true;
    section.dataset.available = "false";
    return;
  }
  section.dataset.available = "true";

  const noisyView = $("photo-noisy");
  const denoisedView = $("photo-denoised");
  const cleanView = $("photo-clean");
  const views = new Views([noisyView, denoisedView, cleanView]);
  // noisy: the clean image plus noise of std noisySigma; generation: the newest input, older answers are dropped
  const state = { clean: null, noisy: null, noisySigma: 0, source: "", seed: 1, generation: 0, timer: null };

  const select = $("photo-model");
  select.replaceChildren(
    ...ready.map((m) => {
      const option = document.createElement("option");
      option.value = m.name;
      option.textContent = m.name;
      return option;
    })
  );
  if (ready.some((m) => m.name === "photo")) select.value = "photo";

  function message(text, kind) {
    const box = $("photo-message");
    box.textContent = text;
    box.className = kind || "";
  }

  function sigma() {
    return Number($("photo-sigma").value);
  }

  function resetOutput() {
    views.show(denoisedView, null);
    $("photo-denoised-psnr").textContent = "";
    $("photo-sigma-used").textContent = "";
    denoisedView.dataset.state = "idle";
    message("");
  }

  function makeNoisy() {
    if (!state.clean) return;
    state.generation += 1; // an answer still on its way is for the previous noisy image: it will be dropped
    state.noisySigma = sigma();
    state.noisy = addNoise(state.clean, state.noisySigma, normal(state.seed));
    views.show(noisyView, state.noisy);
    $("photo-noisy-psnr").textContent = psnrText(state.noisy, state.clean);
  }

  function setPhoto(image, source, label) {
    state.clean = image;
    state.source = source;
    views.setImageSize(image.width, image.height);
    views.show(cleanView, image);
    const scaled =
      image.originalWidth !== image.width ? ` (downscaled from ${image.originalWidth}×${image.originalHeight})` : "";
    $("photo-info").textContent = `${label}: ${image.width}×${image.height}${scaled}, ${image.gray ? "gray" : "colour"}`;
    makeNoisy();
    resetOutput();
    views.drawAll();
  }

  async function loadSample(name) {
    const response = await fetch(SAMPLES[name]);
    if (!response.ok) throw new Error(`${SAMPLES[name]}: ${response.status} ${response.statusText}`);
    setPhoto(await decodeImage(await bodyBlob(response), Infinity), `sample:${name}`, `${name}.png`);
  }

  async function loadUpload(file) {
    let image;
    try {
      image = await decodeImage(file, MAX_SIDE);
    } catch (_) {
      throw new Error(`${file.name}: the browser cannot read this file as an image`);
    }
    $("photo-sample").value = "";
    setPhoto(image, `upload:${file.name}`, file.name);
  }

  async function denoise() {
    if (!state.noisy) return;
    const gen = ++state.generation;
    const model = select.value;
    const { noisy, clean, noisySigma } = state;
    const told = $("photo-tell-sigma").checked;
    const attributes = { input: state.source, sigma: String(noisySigma), told: String(told), model };
    denoisedView.dataset.state = "loading";
    message(`Denoising with ${model}…`);
    try {
      const body = await encodePng(noisy);
      const query = told ? `?sigma=${noisySigma}` : "";
      const response = await api(`v1/models/${encodeURIComponent(model)}/denoise${query}`, {
        method: "POST",
        headers: { "Content-Type": "image/png", Accept: "image/png" },
        body,
      });
      const blob = await bodyBlob(response);
      const image = await decodeImage(blob, Infinity);
      const gray = await pngIsGray(blob);
      if (gen !== state.generation) return;
      if (image.width !== noisy.width || image.height !== noisy.height) {
        throw new Error(`the answer is ${image.width}×${image.height}, not ${noisy.width}×${noisy.height}`);
      }
      const used = response.headers.get("X-Sigma");
      const usedSource = response.headers.get("X-Sigma-Source") || "";
      views.show(denoisedView, image);
      $("photo-denoised-psnr").textContent = psnrText(image, clean);
      const usedValue = Number(used);
      $("photo-sigma-used").textContent =
        used !== null && Number.isFinite(usedValue) ? `${usedSource} σ ${usedValue.toFixed(1)}` : "σ not reported";
      Object.assign(denoisedView.dataset, attributes, {
        sigmaUsed: used ?? "",
        sigmaSource: usedSource,
        colour: gray ? "gray" : "colour",
        state: "done",
      });
      message("");
    } catch (error) {
      if (gen !== state.generation) return;
      Object.assign(denoisedView.dataset, attributes, { state: "error" });
      message(String(error.message || error), "error");
    }
  }

  function schedule(delay) {
    clearTimeout(state.timer);
    state.timer = setTimeout(denoise, delay);
  }

  const failed = (error) => message(String(error.message || error), "error");
  for (const canvas of [noisyView, denoisedView, cleanView]) views.bind(canvas);
  views.onZoom = (zoom) => {
    $("photo-zoom").value = String(zoom);
    $("photo-zoom-value").textContent = `${zoom}×`;
  };
  new ResizeObserver(() => views.drawAll()).observe($("photo-panels"));

  $("photo-sample").addEventListener("change", () => {
    const name = $("photo-sample").value;
    if (name) loadSample(name).then(() => schedule(0), failed);
  });
  $("photo-upload").addEventListener("change", () => {
    const file = $("photo-upload").files[0];
    if (file) loadUpload(file).then(() => schedule(0), failed);
    $("photo-upload").value = "";
  });
  $("photo-sigma").addEventListener("input", () => {
    $("photo-sigma-value").textContent = $("photo-sigma").value;
    makeNoisy();
    resetOutput();
    schedule(400); // while the slider moves, only the last position is sent
  });
  $("photo-reseed").addEventListener("click", () => {
    state.seed += 1;
    makeNoisy();
    schedule(0);
  });
  $("photo-tell-sigma").addEventListener("change", () => schedule(0));
  select.addEventListener("change", () => schedule(0));
  $("photo-run").addEventListener("click", () => schedule(0));
  $("photo-zoom").addEventListener("input", () => views.setZoom(Number($("photo-zoom").value)));

  // The first sample is shown with its noise, but nothing is sent until the user asks (a page load stays cheap).
  $("photo-sample").value = "coffee";
  try {
    await loadSample("coffee");
    message("Press Denoise, or pick another photograph.");
  } catch (error) {
    failed(error);
  }
}
