// lrpgraph web page: preprocess an image as lrpgraph.runtime.images does (PIL's arithmetic), run the converted
// model with onnxruntime-web (WebGPU where the browser has it, else WASM) and draw the heatmap as
// lrpgraph.runtime.render does. Nothing leaves the browser. window.lastResult holds the last run's numbers.
import * as ort from './ort/ort.min.mjs';

const $ = (id) => document.getElementById(id);
const config = await (await fetch('model.json')).json();
const params = new URLSearchParams(location.search);
ort.env.wasm.numThreads = 1; // threads need cross-origin isolation, which a plain static server does not give
ort.env.wasm.wasmPaths = new URL('./ort/', import.meta.url).href;

// ---- image preprocessing, bit for bit as PIL + lrpgraph.runtime.images ----
const PRECISION = 22; // PIL's PRECISION_BITS for 8-bit images

function pilCoefficients(inSize, outSize) {
  // PIL's precompute_coeffs (bilinear, antialiased when shrinking) and normalize_coeffs_8bpc
  const scale = inSize / outSize;
  const filterScale = Math.max(scale, 1.0);
  const support = 1.0 * filterScale;
  const ksize = Math.ceil(support) * 2 + 1;
  const bounds = new Int32Array(outSize * 2), kk = new Float64Array(outSize * ksize);
  for (let xx = 0; xx < outSize; xx++) {
    const center = (xx + 0.5) * scale;
    let ww = 0.0;
    const ss = 1.0 / filterScale;
    const xmin = Math.max(Math.trunc(center - support + 0.5), 0);
    const xmax = Math.min(Math.trunc(center + support + 0.5), inSize) - xmin;
    for (let x = 0; x < xmax; x++) {
      const t = Math.abs((x + xmin - center + 0.5) * ss);
      const w = t < 1.0 ? 1.0 - t : 0.0;
      kk[xx * ksize + x] = w;
      ww += w;
    }
    for (let x = 0; x < xmax; x++) if (ww !== 0.0) kk[xx * ksize + x] /= ww;
    bounds[2 * xx] = xmin;
    bounds[2 * xx + 1] = xmax;
  }
  const k = kk.map((v) => (v < 0 ? Math.trunc(-0.5 + v * 2 ** PRECISION) : Math.trunc(0.5 + v * 2 ** PRECISION)));
  return { bounds, k, ksize };
}

const clip8 = (ss) => (ss >= 2 ** (PRECISION + 8) ? 255 : ss <= 0 ? 0 : Math.floor(ss / 2 ** PRECISION));

function resample(img, outW, outH) {
  // img: {w, h, c, data: Uint8Array (h, w, c)}; PIL's horizontal pass, then the vertical one
  let cur = img;
  if (outW !== cur.w) {
    const { bounds, k, ksize } = pilCoefficients(cur.w, outW);
    const out = new Uint8Array(cur.h * outW * cur.c);
    for (let y = 0; y < cur.h; y++) for (let xx = 0; xx < outW; xx++) for (let ch = 0; ch < cur.c; ch++) {
      let ss = 2 ** (PRECISION - 1);
      for (let x = 0; x < bounds[2 * xx + 1]; x++) ss += cur.data[(y * cur.w + x + bounds[2 * xx]) * cur.c + ch] * k[xx * ksize + x];
      out[(y * outW + xx) * cur.c + ch] = clip8(ss);
    }
    cur = { w: outW, h: cur.h, c: cur.c, data: out };
  }
  if (outH !== cur.h) {
    const { bounds, k, ksize } = pilCoefficients(cur.h, outH);
    const out = new Uint8Array(outH * cur.w * cur.c);
    for (let yy = 0; yy < outH; yy++) for (let x = 0; x < cur.w; x++) for (let ch = 0; ch < cur.c; ch++) {
      let ss = 2 ** (PRECISION - 1);
      for (let y = 0; y < bounds[2 * yy + 1]; y++) ss += cur.data[((y + bounds[2 * yy]) * cur.w + x) * cur.c + ch] * k[yy * ksize + y];
      out[(yy * cur.w + x) * cur.c + ch] = clip8(ss);
    }
    cur = { w: cur.w, h: outH, c: cur.c, data: out };
  }
  return cur;
}

const pyRound = (x) => { const r = Math.round(x); return Math.abs(x % 1) === 0.5 && r % 2 !== 0 ? r - 1 : r; };

function centerCrop(img, height, width) {
  const top = pyRound((img.h - height) / 2.0), left = pyRound((img.w - width) / 2.0);
  const out = new Uint8Array(height * width * img.c); // zeros outside the image, as PIL's crop
  for (let y = 0; y < height; y++) for (let x = 0; x < width; x++) {
    const sy = y + top, sx = x + left;
    if (sy < 0 || sx < 0 || sy >= img.h || sx >= img.w) continue;
    for (let ch = 0; ch < img.c; ch++) out[(y * width + x) * img.c + ch] = img.data[(sy * img.w + sx) * img.c + ch];
  }
  return { w: width, h: height, c: img.c, data: out };
}

async function decode(blob) {
  const bitmap = await createImageBitmap(blob, { colorSpaceConversion: 'none', premultiplyAlpha: 'none' });
  const canvas = new OffscreenCanvas(bitmap.width, bitmap.height);
  const context = canvas.getContext('2d', { willReadFrequently: true });
  context.drawImage(bitmap, 0, 0);
  const rgba = context.getImageData(0, 0, bitmap.width, bitmap.height).data;
  const n = bitmap.width * bitmap.height, c = config.pipeline.mode === 'L' ? 1 : 3;
  const data = new Uint8Array(n * c);
  for (let i = 0; i < n; i++) {
    const [r, g, b] = [rgba[4 * i], rgba[4 * i + 1], rgba[4 * i + 2]];
    if (c === 1) data[i] = (r * 19595 + g * 38470 + b * 7471 + 0x8000) >> 16; // PIL's RGB -> L
    else data.set([r, g, b], 3 * i);
  }
  return { w: bitmap.width, h: bitmap.height, c, data };
}

function preprocess(img) {
  const p = config.pipeline;
  if (p.size) img = resample(img, p.size[1], p.size[0]);
  else if (p.shorter) {
    const short = Math.min(img.w, img.h), long = Math.max(img.w, img.h);
    const newLong = Math.trunc((p.shorter * long) / short);
    img = img.w <= img.h ? resample(img, p.shorter, newLong) : resample(img, newLong, p.shorter);
  }
  else if (p.cover) { // just cover H x W, aspect kept (lrpgraph.runtime.images.cover)
    const f = Math.max(p.cover[0] / img.h, p.cover[1] / img.w);
    const w = Math.max(p.cover[1], Math.floor(img.w * f + 0.5)), h = Math.max(p.cover[0], Math.floor(img.h * f + 0.5));
    if (w !== img.w || h !== img.h) img = resample(img, w, h);
  }
  if (p.crop) img = centerCrop(img, p.crop[0], p.crop[1]);
  const [C, H, W] = config.shape;
  if (img.c !== C || img.h !== H || img.w !== W) throw new Error(`preprocessing gives ${img.c}x${img.h}x${img.w}, the model takes ${C}x${H}x${W}`);
  const x = new Float32Array(C * H * W), f = Math.fround, scale = f(p.scale);
  for (let ch = 0; ch < C; ch++) {
    const src = p.bgr ? C - 1 - ch : ch;
    const mean = p.mean ? f(p.mean[p.mean.length === 1 ? 0 : ch]) : null;
    const std = p.std ? f(p.std[p.std.length === 1 ? 0 : ch]) : null;
    for (let i = 0; i < H * W; i++) {
      let v = f(img.data[i * C + src] / scale);
      if (mean !== null) v = f(v - mean);
      if (std !== null) v = f(v / std);
      x[ch * H * W + i] = v;
    }
  }
  return { x, display: img };
}

// ---- onnxruntime-web session: WebGPU where it works, else WASM ----
async function createSession() {
  const wanted = params.get('backend') || 'auto';
  let why = '';
  if (wanted !== 'wasm') {
    const adapter = navigator.gpu ? await navigator.gpu.requestAdapter().catch(() => null) : null;
    if (!adapter) why = 'this browser has no WebGPU adapter';
    else if (config.webgpu_blocked) why = config.webgpu_blocked;
    else {
      const missing = new Set(), error = console.error;
      console.error = (...args) => { // onnxruntime reports the nodes that the WebGPU backend has no kernel for
        const m = String(args[0]).match(/webgpu kernel not found in registries for Op type: (\w+)/);
        if (m) missing.add(m[1]); else error(...args);
      };
      try {
        const session = await ort.InferenceSession.create('model.lrp.onnx', { executionProviders: ['webgpu', 'wasm'], logSeverityLevel: 1 });
        await run(session, new Float32Array(config.shape.reduce((a, b) => a * b))); // fails here on kernels it refuses
        const note = missing.size ? ` (on WASM: ${[...missing].sort().join(', ')})` : '';
        return { session, backend: 'webgpu', note: `WebGPU${note}` };
      } catch (error) {
        why = `WebGPU failed: ${String(error.message || error).split('\n')[0].slice(0, 160)}`;
      } finally { console.error = error; }
    }
  }
  const session = await ort.InferenceSession.create('model.lrp.onnx', { executionProviders: ['wasm'] });
  return { session, backend: 'wasm', note: why ? `WASM (${why})` : 'WASM' };
}

async function run(session, x) {
  const [C, H, W] = config.shape;
  const outputs = await session.run({ [config.input]: new ort.Tensor('float32', x, [1, C, H, W]) });
  return { logits: Array.from(outputs[config.logits].data), relevance: outputs[config.relevance].data };
}

// ---- drawing, as lrpgraph.runtime.render ----
function colorize(v, cmap) {
  const stops = config.colormaps[cmap], n = stops.length - 1;
  const t = (Math.min(Math.max(v, -1), 1) + 1) / 2 * n, i = Math.min(Math.floor(t), n - 1), a = t - i;
  return stops[i].map((c, k) => Math.round((c + (stops[i + 1][k] - c) * a) * 255));
}

function heatmap(relevance, cmap) {
  const [C, H, W] = config.shape, sum = new Float64Array(H * W);
  for (let ch = 0; ch < C; ch++) for (let i = 0; i < H * W; i++) { const v = relevance[ch * H * W + i]; if (Number.isFinite(v)) sum[i] += v; }
  const peak = sum.reduce((m, v) => Math.max(m, Math.abs(v)), 0);
  return { colours: Array.from(sum, (v) => colorize(peak > 0 ? v / peak : v, cmap)), peak };
}

function paint(canvas, w, h, pixel) {
  canvas.width = w; canvas.height = h;
  const context = canvas.getContext('2d'), image = context.createImageData(w, h);
  for (let i = 0; i < w * h; i++) image.data.set([...pixel(i), 255], 4 * i);
  context.putImageData(image, 0, 0);
}

function show(result, display) {
  const [, H, W] = config.shape, cmap = $('cmap').value;
  const { colours, peak } = heatmap(result.relevance, cmap);
  const rgb = (i) => (display.c === 1 ? [0, 0, 0].fill(display.data[i]) : Array.from(display.data.subarray(3 * i, 3 * i + 3)));
  paint($('image'), W, H, rgb);
  paint($('heatmap'), W, H, (i) => colours[i]);
  paint($('overlay'), W, H, (i) => rgb(i).map((c, k) => Math.round(0.5 * c + 0.5 * colours[i][k])));
  paint($('colorbar'), 256, 1, (i) => colorize(i / 127.5 - 1, cmap));
  $('barlow').textContent = (-peak).toPrecision(3);
  $('barhigh').textContent = peak.toPrecision(3);
  $('top5').replaceChildren(...result.top5.map(({ index, label, probability }) => {
    const li = document.createElement('li');
    li.textContent = `${label ?? index}: ${(100 * probability).toFixed(1)} %`;
    return li;
  }));
}

function top5(logits) {
  let probabilities = logits;
  if (!config.outputs_probabilities) {
    const m = Math.max(...logits), e = logits.map((v) => Math.exp(v - m)), s = e.reduce((a, b) => a + b, 0);
    probabilities = e.map((v) => v / s);
  }
  return probabilities.map((probability, index) => ({ index, label: config.labels?.[index], probability }))
    .sort((a, b) => b.probability - a.probability).slice(0, 5);
}

let engine = null, last = null;
async function explain(blob, name) {
  $('status').textContent = `explaining ${name} ...`;
  try {
    const { x, display } = preprocess(await decode(blob));
    const out = await run(engine.session, x);
    const result = { ...out, top5: top5(out.logits) };
    result.predicted = result.top5[0].index;
    last = { result, display };
    show(result, display);
    window.lastResult = { name, backend: engine.backend, predicted: result.predicted, logits: out.logits,
      input: Array.from(x), relevance: Array.from(out.relevance) };
    $('status').textContent = `${name}: ${result.top5[0].label ?? result.predicted}`;
  } catch (error) {
    $('status').textContent = `${name}: ${error.message || error}`;
    window.lastResult = { name, error: String(error.message || error) };
  }
}

$('title').textContent = config.title;
for (const cmap of Object.keys(config.colormaps)) $('cmap').add(new Option(cmap, cmap));
$('cmap').onchange = () => last && show(last.result, last.display);
$('file').onchange = (event) => { const f = event.target.files[0]; if (f) explain(f, f.name); };
const drop = $('drop');
drop.ondragover = (event) => { event.preventDefault(); drop.classList.add('over'); };
drop.ondragleave = () => drop.classList.remove('over');
drop.ondrop = (event) => { event.preventDefault(); drop.classList.remove('over'); const f = event.dataTransfer.files[0]; if (f) explain(f, f.name); };
for (const sample of config.samples) {
  const button = document.createElement('button');
  button.textContent = sample.replace(/^samples\//, '');
  button.onclick = async () => explain(await (await fetch(sample)).blob(), button.textContent);
  $('samples').append(button);
}
engine = await createSession();
$('backend').textContent = engine.note;
$('status').textContent = 'ready: pick or drop an image';
window.pageReady = engine.backend;
