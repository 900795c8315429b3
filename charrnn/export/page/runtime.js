// A trained charrnn model in plain JavaScript: the RNN, GRU and LSTM step as PyTorch computes it
// (its gate order and biases), scoring, and seeded temperature / top-k sampling. Weights are
// float32, as trained; sums are taken in doubles. No dependencies, no network.
"use strict";

const CharRNNRuntime = (() => {
  const GATES = { rnn: 1, gru: 3, lstm: 4 };
  const TOP = 5;  // candidates reported for every generated character, as on the served page

  // Little-endian float32s from base64 (every browser's typed arrays are little-endian).
  function decodeWeights(base64) {
    const text = atob(base64);
    const bytes = new Uint8Array(text.length);
    for (let i = 0; i < text.length; i++) bytes[i] = text.charCodeAt(i);
    return new Float32Array(bytes.buffer);
  }

  // out[r] = bias[r] + sum_j w[r, j] x[j] for a row-major w (rows x cols). Four rows at a
  // time, two columns a turn: each x[j] is loaded once for four rows (1.6 times the speed of
  // one row at a time in Chromium, for the default model's 512 x 512).
  function matvec(w, x, bias, out, rows, cols) {
    let r = 0;
    for (; r + 3 < rows; r += 4) {
      const o0 = r * cols, o1 = o0 + cols, o2 = o1 + cols, o3 = o2 + cols;
      let a0 = 0, a1 = 0, a2 = 0, a3 = 0, b0 = 0, b1 = 0, b2 = 0, b3 = 0, j = 0;
      for (; j + 1 < cols; j += 2) {
        const x0 = x[j], x1 = x[j + 1];
        a0 += w[o0 + j] * x0; a1 += w[o1 + j] * x0; a2 += w[o2 + j] * x0; a3 += w[o3 + j] * x0;
        b0 += w[o0 + j + 1] * x1; b1 += w[o1 + j + 1] * x1;
        b2 += w[o2 + j + 1] * x1; b3 += w[o3 + j + 1] * x1;
      }
      if (j < cols) {
        const x0 = x[j];
        a0 += w[o0 + j] * x0; a1 += w[o1 + j] * x0; a2 += w[o2 + j] * x0; a3 += w[o3 + j] * x0;
      }
      out[r] = bias[r] + a0 + b0; out[r + 1] = bias[r + 1] + a1 + b1;
      out[r + 2] = bias[r + 2] + a2 + b2; out[r + 3] = bias[r + 3] + a3 + b3;
    }
    for (; r < rows; r++) {
      let s = 0;
      for (let j = 0, o = r * cols; j < cols; j++) s += w[o + j] * x[j];
      out[r] = bias[r] + s;
    }
  }

  const sigmoid = (x) => 1 / (1 + Math.exp(-x));

  class Model {
    constructor(spec) {
      const flat = decodeWeights(spec.weights);
      const tensor = (name) => {
        const [shape, offset] = spec.tensors[name];
        return flat.subarray(offset, offset + shape.reduce((a, b) => a * b, 1));
      };
      this.cell = spec.cell;
      this.chars = [...spec.vocab];  // code points, as Python iterates a str
      this.index = new Map(this.chars.map((c, i) => [c, i]));
      const V = (this.V = this.chars.length);
      const H = (this.H = spec.hidden_size);
      const L = (this.L = spec.num_layers);
      const GH = (this.GH = GATES[spec.cell] * H);
      // Layer 0 reads one character: its input vector (one-hot, or its embedding) times W_ih,
      // plus b_ih, is the same for every step, so it is worked out once per character.
      const w0 = tensor("rnn.weight_ih_l0"), b0 = tensor("rnn.bias_ih_l0");
      this.table = new Float64Array(V * GH);
      if (spec.input === "embedding") {
        const emb = tensor("embedding.weight"), E = emb.length / V;
        const row = new Float64Array(E);
        for (let v = 0; v < V; v++) {
          for (let k = 0; k < E; k++) row[k] = emb[v * E + k];
          matvec(w0, row, b0, this.table.subarray(v * GH, (v + 1) * GH), GH, E);
        }
      } else {
        for (let v = 0; v < V; v++) {
          for (let r = 0; r < GH; r++) this.table[v * GH + r] = w0[r * V + v] + b0[r];
        }
      }
      this.layers = [];
      for (let l = 0; l < L; l++) {
        this.layers.push({
          wih: l ? tensor(`rnn.weight_ih_l${l}`) : null, bih: tensor(`rnn.bias_ih_l${l}`),
          whh: tensor(`rnn.weight_hh_l${l}`), bhh: tensor(`rnn.bias_hh_l${l}`),
        });
      }
      this.headW = tensor("head.weight");
      this.headB = tensor("head.bias");
      this.gx = new Float64Array(GH);
      this.gh = new Float64Array(GH);
      this.logits = new Float64Array(V);
    }

    // The state before any text: zeros, as the trained model starts.
    initial() {
      const zeros = () => Array.from({ length: this.L }, () => new Float64Array(this.H));
      return { h: zeros(), c: this.cell === "lstm" ? zeros() : null };
    }

    // Read character `id`: the state moves on in place; returns the next character's logits
    // (a buffer reused by the next step).
    step(id, state) {
      const { H, GH, gx, gh } = this;
      for (let l = 0; l < this.L; l++) {
        const layer = this.layers[l], h = state.h[l];
        if (l === 0) gx.set(this.table.subarray(id * GH, (id + 1) * GH));
        else matvec(layer.wih, state.h[l - 1], layer.bih, gx, GH, H);
        matvec(layer.whh, h, layer.bhh, gh, GH, H);
        if (this.cell === "rnn") {
          for (let k = 0; k < H; k++) h[k] = Math.tanh(gx[k] + gh[k]);
        } else if (this.cell === "gru") {  // gates r, z, n; r scales W_hn h + b_hn
          for (let k = 0; k < H; k++) {
            const r = sigmoid(gx[k] + gh[k]), z = sigmoid(gx[H + k] + gh[H + k]);
            const n = Math.tanh(gx[2 * H + k] + r * gh[2 * H + k]);
            h[k] = (1 - z) * n + z * h[k];
          }
        } else {  // lstm: gates i, f, g, o
          const c = state.c[l];
          for (let k = 0; k < H; k++) {
            const i = sigmoid(gx[k] + gh[k]), f = sigmoid(gx[H + k] + gh[H + k]);
            const g = Math.tanh(gx[2 * H + k] + gh[2 * H + k]);
            const o = sigmoid(gx[3 * H + k] + gh[3 * H + k]);
            c[k] = f * c[k] + i * g;
            h[k] = o * Math.tanh(c[k]);
          }
        }
      }
      matvec(this.headW, state.h[this.L - 1], this.headB, this.logits, this.V, H);
      return this.logits;
    }

    encode(text) {
      return [...text].map((c) => this.index.get(c));
    }

    unknown(text) {
      return [...new Set([...text].filter((c) => !this.index.has(c)))];
    }

    // What `python generate.py mode=score` gives: characters outside the vocabulary removed,
    // the first character read and not scored, the state carried through the whole text.
    score(text) {
      const kept = [...text].filter((c) => this.index.has(c));
      if (kept.length < 2) throw new Error("the text needs at least 2 characters in the vocabulary to be scored.");
      const ids = kept.map((c) => this.index.get(c));
      const state = this.initial();
      const bits = new Array(ids.length - 1);
      let nats = 0;
      for (let t = 0; t + 1 < ids.length; t++) {
        const loss = logSumExp(this.step(ids[t], state)) - this.logits[ids[t + 1]];
        nats += loss;
        bits[t] = loss / Math.LN2;
      }
      return {
        ppl: Math.exp(nats / bits.length), bits, loss: nats / bits.length,
        characters_scored: bits.length, unknown_removed: [...text].length - kept.length,
        text: kept.join(""),
      };
    }

    check(settings) {
      const { prompt, temperature, top_k: topK, length, seed } = settings;
      const fail = (message) => { throw new Error(message); };
      if (typeof prompt !== "string") fail("prompt must be a string.");
      const unknown = this.unknown(prompt);
      if (unknown.length) fail(`the prompt has characters that are not in the vocabulary: ${JSON.stringify(unknown.join(""))}. Remove them; the vocabulary is ${JSON.stringify(this.chars.join(""))}.`);
      if (!(typeof temperature === "number" && temperature >= 0 && Number.isFinite(temperature))) fail(`temperature must be a number >= 0 (0 means greedy), got ${temperature}.`);
      if (topK != null && !(Number.isInteger(topK) && topK >= 1 && topK <= this.V)) fail(`top_k must be an integer from 1 to the vocabulary size ${this.V} (or empty for no limit), got ${topK}.`);
      if (!(Number.isInteger(length) && length >= 1)) fail(`length must be an integer >= 1, got ${length}.`);
      if (!(Number.isInteger(seed) && seed >= 0)) fail(`seed must be an integer >= 0, got ${seed}.`);
    }

    // Generated characters one by one, each with what it was chosen from:
    // {c, p: its probability where drawn (after T and top-k), q: under the model alone,
    //  n: exp(entropy) of the distribution drawn from, top: [[char, probability], ...]}.
    // As generate.py: an empty prompt starts from a newline; T = 0 is greedy.
    *steps(settings) {
      this.check(settings);
      const { prompt, temperature, top_k: topK, length, seed } = settings;
      const start = prompt || (this.index.has("\n") ? "\n" : this.chars[0]);
      const random = seeded(seed);
      const state = this.initial();
      let logits;
      for (const id of this.encode(start)) logits = this.step(id, state);
      const probs = new Float64Array(this.V);
      for (let t = 0; t < length; t++) {
        distribution(logits, temperature, topK, probs);
        const id = temperature === 0 ? argmax(logits) : draw(probs, random());
        const item = describe(this.chars, logits, probs, id);
        if (t + 1 < length) this.step(id, state);
        yield item;
      }
    }
  }

  function logSumExp(x) {
    let max = -Infinity;
    for (let i = 0; i < x.length; i++) if (x[i] > max) max = x[i];
    let sum = 0;
    for (let i = 0; i < x.length; i++) sum += Math.exp(x[i] - max);
    return max + Math.log(sum);
  }

  function argmax(x) {
    let best = 0;
    for (let i = 1; i < x.length; i++) if (x[i] > x[best]) best = i;
    return best;
  }

  // softmax(logits / T) over the top k (all when topK is null) into `out`; T = 0: one-hot argmax.
  function distribution(logits, temperature, topK, out) {
    out.fill(0);
    if (temperature === 0) { out[argmax(logits)] = 1; return out; }
    let kth = -Infinity;
    if (topK != null && topK < logits.length) kth = Array.from(logits).sort((a, b) => b - a)[topK - 1];
    let max = -Infinity;
    for (let i = 0; i < logits.length; i++) if (logits[i] >= kth && logits[i] > max) max = logits[i];
    let sum = 0;
    for (let i = 0; i < logits.length; i++) {
      if (logits[i] >= kth) { out[i] = Math.exp((logits[i] - max) / temperature); sum += out[i]; }
    }
    for (let i = 0; i < out.length; i++) out[i] /= sum;
    return out;
  }

  // The index where the running sum of probs first passes u (u uniform in [0, 1)).
  function draw(probs, u) {
    let last = 0;
    for (let i = 0; i < probs.length; i++) {
      if (probs[i] > 0) { last = i; u -= probs[i]; if (u < 0) return i; }
    }
    return last;  // rounding left u a hair above the total
  }

  function describe(chars, logits, probs, id) {
    let entropy = 0;
    for (let i = 0; i < probs.length; i++) if (probs[i] > 0) entropy -= probs[i] * Math.log(probs[i]);
    const order = [];  // the TOP most likely, by insertion: cheaper than sorting them all
    for (let i = 0; i < probs.length; i++) {
      if (order.length === TOP && probs[i] <= probs[order[TOP - 1]]) continue;
      let k = Math.min(order.length, TOP - 1);
      while (k > 0 && probs[order[k - 1]] < probs[i]) k--;
      order.splice(k, 0, i);
      if (order.length > TOP) order.pop();
    }
    return {
      c: chars[id], p: probs[id], q: Math.exp(logits[id] - logSumExp(logits)), n: Math.exp(entropy),
      top: order.filter((i) => probs[i] > 0).map((i) => [chars[i], probs[i]]),
    };
  }

  // A seeded generator of uniforms in [0, 1): splitmix32 over both halves of the seed.
  function seeded(seed) {
    let a = (seed >>> 0) ^ Math.imul(Math.floor(seed / 4294967296) >>> 0, 0x9e3779b9);
    return () => {
      a = (a + 0x9e3779b9) | 0;
      let z = a;
      z = Math.imul(z ^ (z >>> 16), 0x85ebca6b);
      z = Math.imul(z ^ (z >>> 13), 0xc2b2ae35);
      return ((z ^ (z >>> 16)) >>> 0) / 4294967296;
    };
  }

  // Lets the page draw between slices of work (a message is not throttled as setTimeout is).
  const nextTask = () => new Promise((resolve) => {
    const channel = new MessageChannel();
    channel.port1.onmessage = () => resolve();
    channel.port2.postMessage(null);
  });

  // The prompt and `length` generated characters, as generate.py prints them; onStep(item) for
  // each character as it is written; `signal` (an AbortSignal) stops it with the text so far.
  async function generate(model, settings, onStep, signal) {
    const steps = model.steps(settings);
    let text = settings.prompt;
    for (;;) {
      const sliceEnd = performance.now() + 30;
      while (performance.now() < sliceEnd) {
        const next = steps.next();
        if (next.done) return text;
        text += next.value.c;
        if (onStep) onStep(next.value);
      }
      await nextTask();
      if (signal && signal.aborted) return text;
    }
  }

  return { Model, generate };
})();
