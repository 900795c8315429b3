// The exported page: the model of this file (runtime.js) behind the served page's Generate and
// Score views, and `window.charrnn` for scripts that embed it.
"use strict";

const spec = JSON.parse($("charrnn-model").textContent);
const model = new CharRNNRuntime.Model(spec);
const card = spec.card;
const DEFAULTS = { prompt: "", temperature: 1, top_k: null, length: 500, seed: 1234 };

window.charrnn = {
  card, vocab: spec.vocab,
  // {ppl, bits}: bits[i] is the surprisal of character i + 1 (the first is read, not scored).
  score: (text) => model.score(text),
  // A Promise of the prompt and the generated text; the same seed gives the same text.
  generate: (settings = {}, onStep = null, signal = null) => {
    try {
      return CharRNNRuntime.generate(model, { ...DEFAULTS, ...settings }, onStep, signal);
    } catch (err) {
      return Promise.reject(err);
    }
  },
};

function showCard() {
  const size = `${card.cell} ${card.hidden_size}` + (card.num_layers > 1 ? `\u00d7${card.num_layers}` : "") +
    (card.input === "embedding" ? `, embedding ${card.embedding_dim}` : ", one-hot");
  const ppl = (label, value) => (value ? ` · ${label} <b>${value.toFixed(3)}</b>` : "");
  $("card").innerHTML = `<b>${escapeHtml(size)}</b> · ${card.parameters.toLocaleString("en")} ` +
    `parameters · corpus <b>${escapeHtml(card.corpus || "unknown")}</b>` +
    ppl("validation perplexity", card.best_val_ppl) + ppl("test", card.test_ppl) +
    ` · run ${escapeHtml(card.run)}, exported ${escapeHtml(card.exported)}`;
}

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
    const started = performance.now();
    let written = 0;
    guarded(async () => {
      await window.charrnn.generate(settings, (item) => {
        view.add(item, shadeProb(item.p));
        written += 1;
      }, controller.signal);
      const seconds = (performance.now() - started) / 1000;
      $("speed").textContent = `${written} characters in ${seconds.toFixed(2)} s on this device`;
    }, $("generate"), $("stop"), controller);
  });
  $("stop").addEventListener("click", () => controller && controller.abort());
}

function setupScore() {
  const view = new CharView($("s-out"), $("s-info"), (item) => `
    <div class="big">${escapeHtml(shown(item.c))}</div>
    <p>surprisal <b>${item.bits.toFixed(2)}</b> bits: the model gave it probability
      ${Math.pow(2, -item.bits).toFixed(3)} after the text before it</p>`);
  $("score").addEventListener("click", () => guarded(async () => {
    const result = window.charrnn.score($("s-text").value);
    const chars = [...result.text];
    view.clear(chars[0]);
    chars.slice(1).forEach((c, i) => view.add({ c, bits: result.bits[i] }, shadeSurprise(result.bits[i])));
    const removed = result.unknown_removed
      ? ` (${result.unknown_removed} characters not in the vocabulary removed first)` : "";
    $("s-result").innerHTML = `perplexity <b id="s-ppl">${result.ppl.toFixed(4)}</b> ` +
      `over ${result.characters_scored} characters${removed}: what ` +
      "<code>python generate.py mode=score text_path=...</code> prints for this text.";
  }, $("score"), null));
}

showCard();
setupTabs();
setupGenerate();
setupScore();
