// charrnn's page: generation streamed character by character, what each step chose between,
// forks into a tree of branches (with a link that replays it), temperatures side by side, and
// a text's surprisal. No build step, no dependencies.
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


// The server's compact step [c, p, q, n, top, top_p (, parts)] as named fields; parts (mixed
// with counting): [model, n-gram] probabilities of the drawn character, then of each top one.
function step([c, p, q, n, top, topP, parts]) {
  return {
    c, p, q, n, parts: parts ? parts[0] : null,
    top: [...top].map((ch, i) => [ch, topP[i], parts ? parts[i + 1] : null])
      .filter(([, v]) => v > 0),
  };
}

// onRead(value): a watched unit's activation after each character read (memory view).
async function stream(settings, view, signal, onRead) {
  const response = await postJson("/api/generate", { run: state.run, ...settings }, signal);
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

// ---- the Generate view: a tree of branches ----
// The first text is branch 0; a fork (another candidate picked at a generated character)
// makes a branch that shares the text before that character and goes on from there. The
// address's fragment holds the run, the settings and every fork, so a copied link replays
// the same text and tree on this server.

const tree = { run: null, prompt: "", settings: null, branches: [], current: 0, busy: false };
let generateView = null;
let generateController = null;

function controlSettings() {
  const settings = {
    temperature: Number($("temperature").value), top_k: numberOrNull($("top_k")),
    length: Number($("length").value), seed: Number($("seed").value),
  };
  if ($("mix").checked) settings.mix = "ngram";
  return settings;
}

const percent = (p) => (p >= 0.1 ? `${(100 * p).toFixed(0)}%` : `${(100 * p).toPrecision(2)}%`);

function branchLabel(branch) {
  if (branch.parent === null) return "#0 first text";
  const p = branch.p === null ? "" : ` (${percent(branch.p)})`;
  return `#${branch.id} from #${branch.parent} at ${branch.at}: ${shown(branch.char)}${p}`;
}

// The branch's text in the view, the fork point and the points where other branches leave it
// marked; the breadcrumb from branch 0 to it and the list of every branch.
function showBranch(id) {
  tree.current = id;
  const branch = tree.branches[id];
  const start = tree.prompt.length;
  generateView.clear(tree.prompt);
  branch.items.forEach((item) => generateView.add(item, shadeProb(item.p)));
  const spans = generateView.element.querySelectorAll("span.c");
  const path = [];
  for (let b = branch; b; b = b.parent === null ? null : tree.branches[b.parent]) path.unshift(b);
  for (const b of path.slice(1)) {  // where this branch and each of its ancestors forked
    const span = spans[b.at - start];
    if (span) {
      span.classList.add("fork-point");
      span.title = `branch #${b.id} forked here (${percent(b.p || 0)})`;
    }
  }
  for (const other of tree.branches) {
    if (other.parent === id && spans[other.at - start] && !path.includes(other)) {
      spans[other.at - start].classList.add("forked");
      spans[other.at - start].title = `branch #${other.id} leaves here`;
    }
  }
  $("breadcrumb").innerHTML = path.map((b) =>
    `<button data-branch="${b.id}">${escapeHtml(branchLabel(b))}</button>`).join(" &rsaquo; ");
  $("branch-list").innerHTML = tree.branches.map((b) =>
    `<li><button data-branch="${b.id}" class="${b.id === id ? "current" : ""}">` +
    `${escapeHtml(branchLabel(b))}</button> <span class="hint">` +
    `${escapeHtml(b.text.slice(b.parent === null ? start : b.at, (b.parent === null ? start : b.at) + 24))}` +
    "&hellip;</span></li>").join("");
  $("branches").hidden = tree.branches.length < 2;
  writeLink();
}

// One branch's stream: its items appended as they come (and shown if it is the one in view).
async function runBranch(branch, body) {
  await stream({ ...body, run: tree.run }, {
    add: (item) => {
      branch.items.push(item);
      branch.text += item.c;
      if (tree.current !== branch.id) return;
      const span = generateView.add(item, shadeProb(item.p));
      if (branch.parent !== null && branch.text.length === branch.at + 1) {
        span.classList.add("fork-point");
      }
    },
  }, generateController.signal);
}

async function generateRoot(settings) {
  tree.branches = [{ id: 0, parent: null, at: null, char: null, p: null, settings,
    text: tree.prompt, items: [] }];
  showBranch(0);
  await runBranch(tree.branches[0], { prompt: tree.prompt, ...settings });
}

async function forkBranch(parentId, at, char, settings) {
  const parent = tree.branches[parentId];
  if (!parent || !Number.isInteger(at) || at < tree.prompt.length || at >= parent.text.length) {
    throw new Error(`there is no generated character ${at} in branch #${parentId} to fork at.`);
  }
  const kept = at - tree.prompt.length;
  const branch = { id: tree.branches.length, parent: parentId, at, char, p: null, settings,
    text: parent.text.slice(0, at), items: parent.items.slice(0, kept) };
  tree.branches.push(branch);
  showBranch(branch.id);
  try {
    await runBranch(branch, { prompt: tree.prompt, ...settings,
      fork: { text: parent.text, at, char } });
  } finally {
    if (branch.items.length > kept) branch.p = branch.items[kept].p;
    else tree.branches.pop();  // refused: nothing to keep
    showBranch(tree.branches.includes(branch) ? branch.id : parentId);
  }
}

function busy(task) {
  if (tree.busy) return;
  generateController = new AbortController();
  tree.busy = true;
  guarded(task, $("generate"), $("stop"), generateController)
    .finally(() => { tree.busy = false; writeLink(); });
}

// The fragment: {run, prompt, settings, forks: [[parent, at, char, settings]], view}.
function treeSpec() {
  return {
    run: tree.run, prompt: tree.prompt, settings: tree.settings, view: tree.current,
    forks: tree.branches.slice(1).map((b) => [b.parent, b.at, b.char, b.settings]),
  };
}

function writeLink() {
  if (!tree.branches.length) return;
  const url = `${location.pathname}${location.search}#${encodeURIComponent(JSON.stringify(treeSpec()))}`;
  history.replaceState(null, "", url);
  $("link").value = location.href;
}

// Replays a link's tree: the first text, then every fork in order.
async function replay(spec) {
  const ok = spec && typeof spec.prompt === "string" && spec.settings && Array.isArray(spec.forks);
  if (!ok) throw new Error("this link's tree could not be read: it needs run, prompt, settings and forks.");
  const before = { ...tree };  // kept if the link's first text is refused (run, settings)
  tree.run = spec.run || state.run;
  tree.prompt = spec.prompt;
  tree.settings = spec.settings;
  $("prompt").value = spec.prompt;
  $("temperature").value = spec.settings.temperature;
  $("temperature").dispatchEvent(new Event("input"));
  $("top_k").value = spec.settings.top_k ?? "";
  $("length").value = spec.settings.length;
  $("seed").value = spec.settings.seed;
  $("mix").checked = spec.settings.mix === "ngram";
  try {
    await generateRoot(spec.settings);
  } catch (err) {
    Object.assign(tree, before);
    if (tree.branches.length) showBranch(tree.current);
    throw err;
  }
  for (const [parent, at, char, settings] of spec.forks) {
    await forkBranch(parent, at, char, settings);
  }
  if (tree.branches[spec.view]) showBranch(spec.view);
}

function download(name, text, type) {
  const a = document.createElement("a");
  a.href = URL.createObjectURL(new Blob([text], { type }));
  a.download = name;
  a.click();
  URL.revokeObjectURL(a.href);
}

function setupGenerate() {
  generateView = new CharView($("out"), $("info"),
    (item) => describeStep(item, Number($("temperature").value)),
    (index, char) => busy(() => forkBranch(tree.current, tree.prompt.length + index, char,
      controlSettings())));
  const slider = $("temperature");
  const showT = () => { $("temperature-value").textContent = Number(slider.value).toFixed(2); };
  slider.addEventListener("input", showT);
  showT();
  $("generate").addEventListener("click", () => busy(() => {
    tree.run = state.run;
    tree.prompt = $("prompt").value;
    tree.settings = controlSettings();
    return generateRoot(tree.settings);
  }));
  $("stop").addEventListener("click", () => generateController && generateController.abort());
  $("branches").addEventListener("click", (event) => {
    const button = event.target.closest("button[data-branch]");
    if (button && !tree.busy) showBranch(Number(button.dataset.branch));
  });
  $("breadcrumb").addEventListener("click", (event) => {
    const button = event.target.closest("button[data-branch]");
    if (button && !tree.busy) showBranch(Number(button.dataset.branch));
  });
  $("copy-link").addEventListener("click", async () => {
    $("link").select();
    try { await navigator.clipboard.writeText($("link").value); } catch (err) {
      document.execCommand("copy");  // a page not served from a secure context
    }
    $("copy-link").textContent = "Copied";
    setTimeout(() => { $("copy-link").textContent = "Copy link"; }, 1500);
  });
  $("download-text").addEventListener("click", () => {
    const branch = tree.branches[tree.current];
    if (branch) download(`branch-${branch.id}.txt`, branch.text, "text/plain");
  });
  $("download-tree").addEventListener("click", () => {
    const branches = tree.branches.map((b) => ({
      id: b.id, parent: b.parent, fork_at: b.at, fork_char: b.char, fork_probability: b.p,
      settings: b.settings, text: b.text }));
    download("tree.json", JSON.stringify({ run: tree.run, prompt: tree.prompt, branches }, null, 2),
      "application/json");
  });
}

// A link's tree, once the runs are known.
function openLink() {
  if (location.hash.length < 2) return;
  let spec;
  try {
    spec = JSON.parse(decodeURIComponent(location.hash.slice(1)));
  } catch (err) {
    showError("this link's tree could not be read (it is not the JSON this page writes).");
    return;
  }
  busy(() => replay(spec));
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

// ---- the characters view: what each character's input vector became ----

const CLASS_COLOURS = { vowel: "#d62728", consonant: "#1f77b4", digit: "#2ca02c",
  punctuation: "#9467bd", whitespace: "#7f7f7f", other: "#8c564b" };

async function loadCharacters() {
  const svg = $("ch-plot");
  svg.textContent = "";
  $("ch-summary").textContent = "reading the run's characters...";
  const response = await fetch(`/api/characters?run=${encodeURIComponent(state.run)}`);
  const data = await response.json();
  if (!response.ok) {
    $("ch-summary").textContent = "";
    showError(data.error);
    return;
  }
  const { points, nearest, classes, case: pairs } = data.trained;
  const xs = points.map((p) => p[1]), ys = points.map((p) => p[2]);
  const [x0, x1, y0, y1] = [Math.min(...xs), Math.max(...xs), Math.min(...ys), Math.max(...ys)];
  const sx = (x) => 30 + (740 * (x - x0)) / (x1 - x0 || 1);
  const sy = (y) => 530 - (500 * (y - y0)) / (y1 - y0 || 1);
  svg.innerHTML = points.map(([c, x, y, cls]) => `<text x="${sx(x).toFixed(1)}" ` +
    `y="${sy(y).toFixed(1)}" fill="${CLASS_COLOURS[cls]}" text-anchor="middle" ` +
    `data-c="${encodeURIComponent(c)}">${escapeHtml(shown(c))}</text>`).join("");
  const untrained = data.untrained.classes;
  $("ch-summary").innerHTML = `${escapeHtml(data.vectors)}: classes within − between ` +
    `<b id="ch-separation">${classes.separation.toFixed(3)}</b> (untrained ` +
    `${untrained.separation.toFixed(3)}; labels shuffled ${classes.shuffled_mean.toFixed(3)}, ` +
    `z ${classes.z.toFixed(1)})` + (pairs.pairs ? `; case pairs (R, r) ` +
    `${pairs.case_pair_similarity.toFixed(3)} against random letter pairs ` +
    `${pairs.random_pair_similarity.toFixed(3)}` : "");
  svg.onmouseover = (event) => {
    if (!event.target.dataset || event.target.dataset.c === undefined) return;
    const c = decodeURIComponent(event.target.dataset.c);
    const near = nearest[c];
    svg.querySelectorAll("text.near").forEach((t) => t.classList.remove("near"));
    for (const t of svg.querySelectorAll("text")) {
      if (near.some(([n]) => n === decodeURIComponent(t.dataset.c))) t.classList.add("near");
    }
    $("ch-info").innerHTML = `<div class="big">${escapeHtml(shown(c))}</div>
      <p>nearest by cosine similarity (untrained: ${escapeHtml(data.untrained.nearest[c]
        .slice(0, 3).map(([n]) => shown(n)).join(" "))})</p>
      <table class="candidates">${near.map(([n, sim]) => `<tr><td class="ch">` +
        `${escapeHtml(shown(n))}</td><td>${sim.toFixed(3)}</td></tr>`).join("")}</table>`;
  };
}

async function setupRuns() {
  const response = await fetch("/api/runs");
  const data = await response.json();
  state.maxLength = data.max_length;
  const select = $("run");
  state.run = data.served;
  if (location.hash.length > 1) {  // a link's run, picked if this server lists it
    try {
      state.run = JSON.parse(decodeURIComponent(location.hash.slice(1))).run || state.run;
    } catch (err) { /* openLink says so */ }
  }
  for (const run of data.runs) {
    const option = document.createElement("option");
    const size = run.cell ? ` · ${run.cell} ${run.hidden_size}` +
      (run.num_layers > 1 ? `\u00d7${run.num_layers}` : "") : "";
    const val = run.best_val_ppl ? ` · val ${run.best_val_ppl.toFixed(2)}` : "";
    const test = run.test_ppl ? ` · test ${run.test_ppl.toFixed(2)}` : "";
    option.value = run.id;
    option.textContent = `${run.id}${size}${val}${test}`;
    option.selected = run.id === state.run;
    select.appendChild(option);
  }

  select.addEventListener("change", () => {
    state.run = select.value;
    loadUnits();
    if (!$("view-characters").hidden) loadCharacters().catch((err) => showError(err.message));
  });
  loadUnits();
  for (const id of ["length", "c-length"]) $(id).max = String(data.max_length);
}

setupTabs((view) => {
  if (view === "characters") loadCharacters().catch((err) => showError(err.message));
});
setupGenerate();
setupCompare();
setupScore();
setupMemory();
setupVersus();
setupRuns().then(openLink).catch((err) => showError(`could not list the runs: ${err.message}`));
window.addEventListener("hashchange", openLink);  // a link pasted into this tab
