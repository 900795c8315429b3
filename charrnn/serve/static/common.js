// What charrnn's pages share: the served page (app.js) and an exported one (generate.py
// mode=export). Plain script, no build step: each page loads it before its own.
"use strict";

const $ = (id) => document.getElementById(id);

// ---- helpers ----

function showError(message) {
  const box = $("error");
  box.textContent = message || "";
  box.hidden = !message;
}

function shown(ch) {
  if (ch === "\n") return "\u21b5";
  if (ch === " ") return "\u2423";
  if (ch === "\t") return "\u21e5";
  return ch;
}

function escapeHtml(text) {
  const div = document.createElement("div");
  div.textContent = text;
  return div.innerHTML;
}

// Probability 0 -> red, 0.5 -> yellow, 1 -> green: a surprising draw stands out.
const shadeProb = (p) => `hsl(${Math.round(120 * p)} 75% 84%)`;
const shadeSurprise = (bits) => `hsla(20 90% 60% / ${Math.min(bits / 8, 1).toFixed(3)})`;

function numberOrNull(input) {
  return input.value === "" ? null : Number(input.value);
}

// ---- what a generated character chose between ----

function describeStep(item, temperature) {
  const rows = item.top.map(([ch, p]) => `
    <tr class="${ch === item.c ? "chosen" : ""}">
      <td class="ch">${escapeHtml(shown(ch))}</td>
      <td><div class="bar" style="width:${(100 * p).toFixed(1)}%"></div></td>
      <td>${p.toFixed(3)}</td></tr>`).join("");
  return `
    <div class="big">${escapeHtml(shown(item.c))}</div>
    <p>drawn with probability <b>${item.p.toFixed(3)}</b>
      (the model alone: ${item.q.toFixed(3)}${temperature ? `, before T = ${temperature}` : ""})</p>
    <p>choosing between <b class="choosing">${item.n.toFixed(1)}</b> characters
      (exp of the entropy of the distribution it was drawn from)</p>
    <table class="candidates">${rows}</table>`;
}

// A text area of spans, one per character, that explains a character when pointed at.
class CharView {
  constructor(element, info, describe) {
    this.element = element;
    this.info = info;
    this.describe = describe;
    this.items = [];
    const show = (event) => {
      const span = event.target.closest("span.c");
      if (!span || !element.contains(span)) return;
      if (event.type === "click") {
        element.querySelectorAll(".pinned").forEach((s) => s.classList.remove("pinned"));
        span.classList.add("pinned");
      }
      this.info.innerHTML = this.describe(this.items[Number(span.dataset.i)]);
    };
    element.addEventListener("mouseover", show);
    element.addEventListener("click", show);
  }

  clear(prompt) {
    this.element.textContent = "";
    this.items = [];
    if (prompt) {
      const span = document.createElement("span");
      span.className = "prompt";
      span.textContent = prompt;
      this.element.appendChild(span);
    }
  }

  add(item, color) {
    const span = document.createElement("span");
    span.className = "c";
    span.textContent = item.c;
    span.style.background = color;
    span.dataset.i = String(this.items.length);
    this.items.push(item);
    this.element.appendChild(span);
  }
}

function running(startButton, stopButton, on) {
  startButton.disabled = on;
  if (stopButton) stopButton.disabled = !on;
}

async function guarded(task, startButton, stopButton, controller) {
  showError("");
  running(startButton, stopButton, true);
  try {
    await task();
  } catch (err) {
    if (err.name !== "AbortError") showError(err.message);
  } finally {
    running(startButton, stopButton, false);
    if (controller) controller.abort();  // nothing left streaming for nobody
  }
}
