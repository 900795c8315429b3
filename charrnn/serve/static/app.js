// charrnn's page: generation streamed character by character, what each step chose between,
// temperatures side by side, and a text's surprisal. No build step, no dependencies.
"use strict";

const state = { run: null, maxLength: 2000 };

// ---- streams ----

async function postJson(path, body, signal) {
  const response = await fetch(path, {
    method: "POST", headers: { "Content-Type": "application/json" },
    body: JSON.stringify(body), signal,
  });
  if (!response.ok) {
    let message = `${response.status} ${response.statusText}`;
    try { message = (await response.json()).error || message; } catch (e) { /* not JSON */ }
    throw new Error(message);
  }
  return response;
}

// Server-sent events over a POST: call onItems with each event's list of items.
async function readEvents(response, onItems) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += decoder.decode(value, { stream: true });
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const event = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      if (event.startsWith("event: end")) return;
      const data = event.split("\n").filter((l) => l.startsWith("data: "))
        .map((l) => l.slice(6)).join("\n");
      if (data) onItems(JSON.parse(data));
    }
  }
}


// The server's compact step [c, p, q, n, top, top_p] as named fields.
function step([c, p, q, n, top, topP]) {
  return { c, p, q, n, top: [...top].map((ch, i) => [ch, topP[i]]).filter(([, v]) => v > 0) };
}

// onRead(value): a watched unit's activation after each character read (memory view).
async function stream(settings, view, signal, onRead) {
  const response = await postJson("/api/generate", { ...settings, run: state.run }, signal);
  await readEvents(response, (items) => {
    for (const item of items) {
      if (typeof item === "number") {
        if (onRead) onRead(item);
      } else {
        const s = step(item);
        view.add(s, shadeProb(s.p));
      }
    }
  });
}

// ---- the views ----

function setupGenerate() {
  const view = new CharView($("out"), $("info"),
    (item) => describeStep(item, Number($("temperature").value)));
  const slider = $("temperature");
  const showT = () => { $("temperature-value").textContent = Number(slider.value).toFixed(2); };
  slider.addEventListener("input", showT);
  showT();
  let controller = null;
  $("generate").addEventListener("click", () => {
    controller = new AbortController();
    const settings = {
      prompt: $("prompt").value, temperature: Number(slider.value), top_k: numberOrNull($("top_k")),
      length: Number($("length").value), seed: Number($("seed").value),
    };
    view.clear(settings.prompt);
    guarded(() => stream(settings, view, controller.signal),
      $("generate"), $("stop"), controller);
  });
  $("stop").addEventListener("click", () => controller && controller.abort());
}

function setupCompare() {
  const columns = [...document.querySelectorAll(".text.compare")];
  const views = columns.map((element) => new CharView(element, $("c-info"),
    (item) => describeStep(item, Number(element.dataset.temperature))));
  let controller = null;
  $("c-generate").addEventListener("click", () => {
    controller = new AbortController();
    const base = {
      prompt: $("c-prompt").value, top_k: numberOrNull($("c-top_k")),
      length: Number($("c-length").value), seed: Number($("c-seed").value),
    };
    views.forEach((v) => v.clear(base.prompt));
    guarded(() => Promise.all(views.map((view, i) => {
      const temperature = Number(columns[i].dataset.temperature);
      return stream({ ...base, temperature }, view, controller.signal);
    })), $("c-generate"), $("c-stop"), controller);
  });
  $("c-stop").addEventListener("click", () => controller && controller.abort());
}

function setupScore() {
  const view = new CharView($("s-out"), $("s-info"), (item) => `
    <div class="big">${escapeHtml(shown(item.c))}</div>
    <p>surprisal <b>${item.bits.toFixed(2)}</b> bits: the model gave it probability
      ${Math.pow(2, -item.bits).toFixed(3)} after the text before it</p>`);
  $("score").addEventListener("click", () => guarded(async () => {
    const response = await postJson("/api/score", { text: $("s-text").value, run: state.run });
    const result = await response.json();
    view.clear(result.text[0]);
    [...result.text.slice(1)].forEach((c, i) => {
      const bits = result.surprisal_bits[i];
      view.add({ c, bits }, shadeSurprise(bits));
    });
    const removed = result.unknown_removed
      ? ` (${result.unknown_removed} characters not in the vocabulary removed first)` : "";
    $("s-result").innerHTML = `perplexity <b id="s-ppl">${result.ppl.toFixed(4)}</b> ` +
      `over ${result.characters_scored} characters${removed}: the number ` +
      "<code>python generate.py mode=score text_path=...</code> prints for this text.";
  }, $("score"), null));
}

// Blue below zero, red above; `scale` is the value shaded fully.
const shadeValue = (v, scale) => {
  const x = Math.max(-1, Math.min(1, v / scale));
  return `hsl(${x < 0 ? 215 : 5} 80% ${(100 - 38 * Math.abs(x)).toFixed(1)}%)`;
};

function setupMemory() {
  const out = $("m-out");
  let controller = null;
  const suggest = $("m-suggest");
  suggest.addEventListener("change", () => {
    if (!suggest.value) return;
    const [layer, unit, kind] = suggest.value.split(",");
    $("m-layer").value = layer; $("m-unit").value = unit; $("m-kind").value = kind;
  });
  const describe = (span) => `<div class="big">${escapeHtml(shown(span.textContent))}</div>
    <p>unit value after reading it: <b>${Number(span.dataset.a).toFixed(3)}</b></p>`;
  out.addEventListener("mouseover", (event) => {
    const span = event.target.closest("span[data-a]");
    if (span) $("m-info").innerHTML = describe(span);
  });
  $("m-generate").addEventListener("click", () => {
    controller = new AbortController();
    const kind = $("m-kind").value;
    const settings = {
      prompt: $("m-prompt").value, temperature: Number($("m-temperature").value),
      length: Number($("m-length").value), seed: Number($("m-seed").value),
      unit: [Number($("m-layer").value), Number($("m-unit").value), kind],
    };
    out.textContent = "";
    const read = [];  // spans in the order the model reads them
    const addSpan = (ch, cls) => {
      const span = document.createElement("span");
      span.className = cls;
      span.textContent = ch;
      out.appendChild(span);
      read.push(span);
    };
    [...(settings.prompt || "\n")].forEach((ch) => addSpan(ch, "c prompt-read"));
    let next = 0;
    let scale = 1;  // h lies in [-1, 1]; an LSTM's c does not: rescaled as it grows
    const view = { add: (item) => addSpan(item.c, "c") };
    guarded(() => stream(settings, view, controller.signal, (value) => {
      const span = read[next++];
      if (!span) return;
      span.dataset.a = String(value);
      if (kind === "c" && Math.abs(value) > scale) {
        scale = Math.abs(value);
        read.slice(0, next - 1).forEach((s) => { s.style.background = shadeValue(Number(s.dataset.a), scale); });
      }
      span.style.background = shadeValue(value, scale);
    }), $("m-generate"), $("m-stop"), controller);
  });
  $("m-stop").addEventListener("click", () => controller && controller.abort());
}

async function loadUnits() {
  const select = $("m-suggest");
  select.textContent = "";
  const none = document.createElement("option");
  none.value = "";
  select.appendChild(none);
  try {
    const response = await fetch(`/api/units?run=${encodeURIComponent(state.run)}`);
    const data = await response.json();
    if (!response.ok) throw new Error(data.error);
    none.textContent = `(pick one: the best unit for each feature, from ${data.source})`;
    for (const [feature, best] of Object.entries(data.units)) {
      if (!best) continue;
      const option = document.createElement("option");
      option.value = `${best.layer},${best.unit},${best.kind}`;
      option.textContent = `${feature.replaceAll("_", " ")}: ${best.kind} of layer ` +
        `${best.layer}, unit ${best.unit} (r = ${best.r.toFixed(2)})`;
      select.appendChild(option);
    }
    $("m-note").textContent = "";
  } catch (err) {
    none.textContent = "(no suggestions)";
    $("m-note").textContent = `No suggested units: ${err.message}`;
  }
}

function setupVersus() {
  const view = new CharView($("v-out"), $("v-info"), (item) => `
    <div class="big">${escapeHtml(shown(item.c))}</div>
    <p>the model: <b>${item.model.toFixed(2)}</b> bits; counting: <b>${item.ngram.toFixed(2)}</b>
      bits</p><p>${item.ngram > item.model ? "the model" : "counting"} wins by
      ${Math.abs(item.ngram - item.model).toFixed(2)} bits</p>`);
  $("v-compare").addEventListener("click", () => guarded(async () => {
    const response = await postJson("/api/versus", { text: $("v-text").value, run: state.run });
    const r = await response.json();
    view.clear(r.text[0]);
    [...r.text.slice(1)].forEach((c, i) => {
      const item = { c, model: r.model_bits[i], ngram: r.ngram_bits[i] };
      view.add(item, shadeValue(item.ngram - item.model, 4));
    });
    $("v-result").innerHTML = `this text: the model's perplexity <b id="v-model">` +
      `${r.model_ppl.toFixed(3)}</b>, counting's (Kneser-Ney, order ${r.order}) <b id="v-ngram">` +
      `${r.ngram_ppl.toFixed(3)}</b>; on the run's test split counting scores ` +
      `${r.ngram_test_ppl.toFixed(3)}.`;
  }, $("v-compare"), null));
}

function setupTabs() {
  for (const button of document.querySelectorAll("#tabs button")) {
    button.addEventListener("click", () => {
      document.querySelectorAll("#tabs button").forEach((b) => b.classList.remove("active"));
      button.classList.add("active");
      document.querySelectorAll(".view").forEach((v) => { v.hidden = true; });
      $(`view-${button.dataset.view}`).hidden = false;
    });
  }
}

async function setupRuns() {
  const response = await fetch("/api/runs");
  const data = await response.json();
  state.maxLength = data.max_length;
  const select = $("run");
  for (const run of data.runs) {
    const option = document.createElement("option");
    const size = run.cell ? ` · ${run.cell} ${run.hidden_size}` +
      (run.num_layers > 1 ? `\u00d7${run.num_layers}` : "") : "";
    const val = run.best_val_ppl ? ` · val ${run.best_val_ppl.toFixed(2)}` : "";
    const test = run.test_ppl ? ` · test ${run.test_ppl.toFixed(2)}` : "";
    option.value = run.id;
    option.textContent = `${run.id}${size}${val}${test}`;
    option.selected = run.id === data.served;
    select.appendChild(option);
  }
  state.run = data.served;
  select.addEventListener("change", () => { state.run = select.value; loadUnits(); });
  loadUnits();
  for (const id of ["length", "c-length"]) $(id).max = String(data.max_length);
}

setupTabs();
setupGenerate();
setupCompare();
setupScore();
setupMemory();
setupVersus();
setupRuns().catch((err) => showError(`could not list the runs: ${err.message}`));
