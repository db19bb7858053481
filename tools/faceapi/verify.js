#!/usr/bin/env node
/*
 * Reference outputs from the JavaScript implementation (npm @vladmandic/face-api on
 * tfjs, pure-JS "cpu" backend by default, or "wasm") for tools/faceapi/verify.py,
 * which runs the same inputs through the ONNX ports and compares.
 *
 *   node tools/faceapi/verify.js [--npm-dir build/npm] [--out build/faceapi-verify]
 *        [--faces-dir /work/shared/data/facial_expressions/images] [--backend cpu|wasm]
 *
 * What it writes under --out (little-endian raw arrays + index.json describing them):
 *   weights/<model>/...   the dequantized weight maps exactly as face-api loads them
 *   det_input, det_grid   the 416x416 float batch face-api builds (RGB, pre-normalisation)
 *                         and the raw TinyFaceDetector output before decoding
 *   lm_input, lm_full, lm_tiny   112x112 face inputs and the raw landmark-net fc outputs
 *   lm_expr               FaceExpressionNet's softmax on the same 112x112 inputs
 *   e2e/*                 decoded image pixels, detectAllFaces(TinyFaceDetectorOptions)
 *                         boxes + withFaceLandmarks() (full and tiny) in pixels, and
 *                         detectFaceLandmarks()/detectFaceLandmarksTiny() on face crops;
 *                         withFaceExpressions() and recognizeFaceExpressions() likewise
 *
 * Inputs need no download: the demo JPEGs inside the npm package, face images from the
 * shared facial_expressions data set (read in place, never copied into the repo; skipped
 * if the folder is absent), and synthetic images generated here with a fixed-seed PRNG.
 */
'use strict';

const fs = require('fs');
const path = require('path');
const { createRequire } = require('module');

const REPO = path.resolve(__dirname, '..', '..');

function parseArgs(argv) {
  const args = {
    npmDir: path.join(REPO, 'build', 'npm'),
    out: path.join(REPO, 'build', 'faceapi-verify'),
    facesDir: '/work/shared/data/facial_expressions/images',
    backend: 'cpu',
    numSquareFaces: 12,
    numCropFaces: 6,
  };
  for (let i = 2; i < argv.length; i++) {
    const a = argv[i];
    const next = () => { i += 1; return argv[i]; };
    if (a === '--npm-dir') args.npmDir = path.resolve(next());
    else if (a === '--out') args.out = path.resolve(next());
    else if (a === '--faces-dir') args.facesDir = path.resolve(next());
    else if (a === '--backend') args.backend = next();
    else if (a === '--help' || a === '-h') {
      console.log('usage: node tools/faceapi/verify.js [--npm-dir DIR] [--out DIR] [--faces-dir DIR] [--backend cpu|wasm]');
      process.exit(0);
    } else throw new Error(`unknown argument ${a}`);
  }
  return args;
}

const args = parseArgs(process.argv);
const req = createRequire(path.join(args.npmDir, 'package.json'));
const tf = req('@tensorflow/tfjs');
// the node-wasm build requires @tensorflow/tfjs + @tensorflow/tfjs-backend-wasm (no native
// libtensorflow); the cpu backend ships in @tensorflow/tfjs.
const faceapi = req('@vladmandic/face-api/dist/face-api.node-wasm.js');
const jpeg = req('jpeg-js');

const pkgDir = path.dirname(req.resolve('@vladmandic/face-api/package.json'));
const modelDir = path.join(pkgDir, 'model');

// ------------------------------------------------------------------ output helpers
const index = { meta: {}, arrays: {}, e2e: [], landmarks_on_crops: [] };

function dump(name, data, shape, dtype = 'float32') {
  const file = path.join(args.out, `${name}.bin`);
  fs.mkdirSync(path.dirname(file), { recursive: true });
  let typed;
  if (dtype === 'float32') typed = data instanceof Float32Array ? data : Float32Array.from(data);
  else if (dtype === 'uint8') typed = data instanceof Uint8Array ? data : Uint8Array.from(data);
  else throw new Error(dtype);
  const n = shape.reduce((a, b) => a * b, 1);
  if (typed.length !== n) throw new Error(`${name}: ${typed.length} values for shape ${shape}`);
  fs.writeFileSync(file, Buffer.from(typed.buffer, typed.byteOffset, typed.byteLength));
  index.arrays[name] = { file: `${name}.bin`, shape, dtype };
}

async function dumpTensor(name, t) {
  dump(name, await t.data(), t.shape, 'float32');
}

// ------------------------------------------------------------------ inputs
function decodeJpeg(file) {
  const img = jpeg.decode(fs.readFileSync(file), { useTArray: true, formatAsRGBA: true });
  const rgb = new Uint8Array(img.width * img.height * 3);
  for (let i = 0, j = 0; i < img.width * img.height; i++, j += 4) {
    rgb[i * 3] = img.data[j];
    rgb[i * 3 + 1] = img.data[j + 1];
    rgb[i * 3 + 2] = img.data[j + 2];
  }
  return { width: img.width, height: img.height, rgb };
}

// xorshift32, fixed seed: deterministic synthetic images without Math.random
function prng(seed) {
  let s = seed >>> 0;
  return () => {
    s ^= s << 13; s >>>= 0;
    s ^= s >>> 17;
    s ^= s << 5; s >>>= 0;
    return s / 4294967296;
  };
}

function synthetic() {
  const out = [];
  {
    const w = 640; const h = 480; const r = prng(12345); const rgb = new Uint8Array(w * h * 3);
    for (let i = 0; i < rgb.length; i++) rgb[i] = Math.floor(r() * 256);
    out.push({ name: 'synthetic_noise_640x480', width: w, height: h, rgb });
  }
  {
    const w = 640; const h = 480; const rgb = new Uint8Array(w * h * 3);
    for (let y = 0; y < h; y++) {
      for (let x = 0; x < w; x++) {
        const i = (y * w + x) * 3;
        rgb[i] = Math.floor((x * 255) / (w - 1));
        rgb[i + 1] = Math.floor((y * 255) / (h - 1));
        rgb[i + 2] = ((x >> 4) + (y >> 4)) % 2 ? 220 : 30; // checkerboard in blue
      }
    }
    out.push({ name: 'synthetic_gradient_640x480', width: w, height: h, rgb });
  }
  {
    const w = 400; const h = 300; const rgb = new Uint8Array(w * h * 3).fill(128);
    out.push({ name: 'synthetic_gray_400x300', width: w, height: h, rgb });
  }
  {
    const w = 112; const h = 112; const r = prng(777); const rgb = new Uint8Array(w * h * 3);
    for (let i = 0; i < rgb.length; i++) rgb[i] = Math.floor(r() * 256);
    out.push({ name: 'synthetic_noise_112', width: w, height: h, rgb });
  }
  return out;
}

function demoImages() {
  const dir = path.join(pkgDir, 'demo');
  return fs.readdirSync(dir).filter((f) => /^sample\d+\.jpg$/.test(f)).sort()
    .map((f) => ({ name: `demo_${f.replace('.jpg', '')}`, ...decodeJpeg(path.join(dir, f)) }));
}

function faceImages() {
  if (!fs.existsSync(args.facesDir)) {
    console.log(`faces dir ${args.facesDir} not found: skipping real face crops`);
    return { square: [], crops: [] };
  }
  const names = fs.readdirSync(args.facesDir).filter((f) => /\.jpe?g$/i.test(f)).sort();
  const stride = Math.max(1, Math.floor(names.length / 200));
  const square = []; const crops = [];
  for (let i = 0; i < names.length; i += stride) {
    if (square.length >= args.numSquareFaces && crops.length >= args.numCropFaces) break;
    const img = decodeJpeg(path.join(args.facesDir, names[i]));
    const entry = { name: `face_${names[i].replace(/\.jpe?g$/i, '')}`, ...img };
    if (img.width === img.height) { if (square.length < args.numSquareFaces) square.push(entry); } else if (crops.length < args.numCropFaces) crops.push(entry);
  }
  return { square, crops };
}

function toTensor(img) {
  // int32 HxWx3 RGB, as face-api's own node demos build it
  return tf.tensor3d(Int32Array.from(img.rgb), [img.height, img.width, 3], 'int32');
}

// ------------------------------------------------------------------ main
async function main() {
  if (args.backend === 'wasm') {
    const wasm = req('@tensorflow/tfjs-backend-wasm');
    wasm.setWasmPaths(`${path.dirname(req.resolve('@tensorflow/tfjs-backend-wasm/package.json'))}/dist/`);
  }
  await tf.setBackend(args.backend);
  await tf.ready();
  fs.mkdirSync(args.out, { recursive: true });

  const readJson = (p) => JSON.parse(fs.readFileSync(p, 'utf8'));
  index.meta = {
    node: process.version,
    backend: tf.getBackend(),
    faceapi: readJson(path.join(pkgDir, 'package.json')).version,
    tfjs: readJson(path.join(path.dirname(req.resolve('@tensorflow/tfjs/package.json')), 'package.json')).version,
    tfjs_core: tf.version_core,
    jpeg_js: readJson(path.join(path.dirname(req.resolve('jpeg-js/package.json')), 'package.json')).version,
  };
  console.log('reference:', JSON.stringify(index.meta));

  // 1. weight maps, loaded exactly like NeuralNetwork.loadFromDisk does
  const modelNames = ['tiny_face_detector_model', 'face_landmark_68_model', 'face_landmark_68_tiny_model', 'face_expression_model'];
  for (const m of modelNames) {
    const manifest = readJson(path.join(modelDir, `${m}-weights_manifest.json`));
    const fetchWeights = (paths) => Promise.all(paths.map((p) => {
      const buf = fs.readFileSync(p);
      return buf.buffer.slice(buf.byteOffset, buf.byteOffset + buf.byteLength);
    }));
    const weightMap = await tf.io.weightsLoaderFactory(fetchWeights)(manifest, `${modelDir}/`);
    for (const [k, t] of Object.entries(weightMap)) await dumpTensor(`weights/${m}/${k}`, t);
  }

  await faceapi.nets.tinyFaceDetector.loadFromDisk(modelDir);
  await faceapi.nets.faceLandmark68Net.loadFromDisk(modelDir);
  await faceapi.nets.faceLandmark68TinyNet.loadFromDisk(modelDir);
  await faceapi.nets.faceExpressionNet.loadFromDisk(modelDir);

  const demos = demoImages();
  const { square, crops } = faceImages();
  const synth = synthetic();

  // 2. raw detector grid, one image at a time (batch 1, as face-api's detect does)
  const detImages = [...demos, ...square.slice(0, 6), ...crops.slice(0, 2), ...synth];
  const detIn = []; const detOut = [];
  for (const img of detImages) {
    const t = toTensor(img);
    const netInput = await faceapi.toNetInput(t);
    const batch = netInput.toBatchTensor(416, false); // pad bottom/right, resizeBilinear
    const grid = faceapi.nets.tinyFaceDetector.forwardInput(netInput, 416);
    detIn.push(await batch.data());
    detOut.push(await grid.data());
    tf.dispose([t, batch, grid]);
  }
  const cat = (arrs) => { const n = arrs.reduce((a, b) => a + b.length, 0); const o = new Float32Array(n); let k = 0; for (const a of arrs) { o.set(a, k); k += a.length; } return o; };
  dump('det_input', cat(detIn), [detImages.length, 416, 416, 3]);
  dump('det_grid', cat(detOut), [detImages.length, 13, 13, 25]);
  index.det_names = detImages.map((i) => i.name);

  // 3. raw landmark outputs (before postProcess), one batch through face-api's own batching
  const lmImages = [...square, ...crops, ...synth.filter((s) => s.name.endsWith('_112') || s.name.includes('gray'))];
  if (lmImages.length) {
    const tensors = lmImages.map(toTensor);
    const netInput = await faceapi.toNetInput(tensors);
    const batch = netInput.toBatchTensor(112, true); // centred pad to square, resizeBilinear
    await dumpTensor('lm_input', batch);
    const full = faceapi.nets.faceLandmark68Net.runNet(netInput);
    const tiny = faceapi.nets.faceLandmark68TinyNet.runNet(netInput);
    await dumpTensor('lm_full', full);
    await dumpTensor('lm_tiny', tiny);
    const expr = faceapi.nets.faceExpressionNet.forwardInput(netInput); // softmax [N, 7]
    await dumpTensor('lm_expr', expr);
    tf.dispose([...tensors, batch, full, tiny, expr]);
    index.lm_names = lmImages.map((i) => i.name);
  }

  // 4. end to end: detectAllFaces(TinyFaceDetectorOptions) (+ withFaceLandmarks full / tiny)
  const opts = new faceapi.TinyFaceDetectorOptions({ inputSize: 416, scoreThreshold: 0.5 });
  const boxOf = (d) => ({ score: d.score, relative: [d.relativeBox.x, d.relativeBox.y, d.relativeBox.width, d.relativeBox.height], pixels: [d.box.x, d.box.y, d.box.width, d.box.height] });
  const pts = (lm) => lm.positions.map((p) => [p.x, p.y]);
  for (const img of [...demos, ...square, ...synth.filter((s) => !s.name.endsWith('_112'))]) {
    const t = toTensor(img);
    const dets = await faceapi.detectAllFaces(t, opts);
    const withFull = await faceapi.detectAllFaces(t, opts).withFaceLandmarks();
    const withTiny = await faceapi.detectAllFaces(t, opts).withFaceLandmarks(true);
    const withExpr = await faceapi.detectAllFaces(t, opts).withFaceExpressions();
    tf.dispose(t);
    dump(`e2e/${img.name}`, img.rgb, [img.height, img.width, 3], 'uint8');
    index.e2e.push({
      name: img.name,
      width: img.width,
      height: img.height,
      detections: dets.map(boxOf),
      landmarks_full: withFull.map((r) => ({ detection: boxOf(r.detection), points: pts(r.landmarks) })),
      landmarks_tiny: withTiny.map((r) => ({ detection: boxOf(r.detection), points: pts(r.landmarks) })),
      expressions: withExpr.map((r) => ({ detection: boxOf(r.detection), probs: faceapi.FACE_EXPRESSION_LABELS.map((k) => r.expressions[k]) })),
    });
    console.log(`${img.name}: ${dets.length} face(s) ${dets.map((d) => d.score.toFixed(3)).join(' ')}`);
  }

  // 5. detectFaceLandmarks / detectFaceLandmarksTiny on whole face crops
  for (const img of [...square, ...crops]) {
    const t = toTensor(img);
    const full = await faceapi.detectFaceLandmarks(t);
    const tiny = await faceapi.detectFaceLandmarksTiny(t);
    const expr = await faceapi.recognizeFaceExpressions(t);
    tf.dispose(t);
    dump(`crops/${img.name}`, img.rgb, [img.height, img.width, 3], 'uint8');
    index.landmarks_on_crops.push({ name: img.name, width: img.width, height: img.height, full: pts(full), tiny: pts(tiny), expressions: faceapi.FACE_EXPRESSION_LABELS.map((k) => expr[k]) });
  }

  fs.writeFileSync(path.join(args.out, 'index.json'), JSON.stringify(index, null, 1));
  console.log(`wrote ${Object.keys(index.arrays).length} arrays to ${args.out}`);
}

main().catch((e) => { console.error(e); process.exit(1); });
