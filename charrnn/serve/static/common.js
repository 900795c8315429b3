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

// parts (mixed with counting): [model, n-gram] probabilities, shown on hover of a candidate.
const partsText = (parts) => (parts
  ? `the model alone: ${parts[0].toFixed(3)} · counting alone: ${parts[1].toFixed(3)}` : "");

function describeStep(item, temperature) {
  const rows = item.top.map(([ch, p, parts]) => `
    <tr class="${ch === item.c ? "chosen" : ""}" data-char="${encodeURIComponent(ch)}"
      data-parts="${partsText(parts)}">
      <td class="ch">${escapeHtml(shown(ch))}</td>
      <td><div class="bar" style="width:${(100 * p).toFixed(1)}%"></div></td>
      <td>${p.toFixed(3)}</td></tr>`).join("");
  return `
    <div class="big">${escapeHtml(shown(item.c))}</div>
    <p>drawn with probability <b>${item.p.toFixed(3)}</b>
      (${item.parts ? "the mixture" : "the model alone"}: ${item.q.toFixed(3)}${temperature ? `, before T = ${temperature}` : ""})</p>
    ${item.parts ? `<p class="parts">mixed with counting: ${partsText(item.parts)}
      (point at a candidate for its parts)</p>` : ""}
    <p>choosing between <b class="choosing">${item.n.toFixed(1)}</b> characters
      (exp of the entropy of the distribution it was drawn from)</p>
    <table class="candidates">${rows}</table>`;
}

// A text area of spans, one per character, that explains a character when pointed at; a click
// pins it (pointing elsewhere then leaves the panel alone until another click). With `onPick`,
// the panel's other candidates can be picked, by click or Enter: onPick(index, char).
class CharView {
  constructor(element, info, describe, onPick = null) {
    this.element = element;
    this.info = info;
    this.describe = describe;
    this.onPick = onPick;
    this.items = [];
    this.index = null;  // the item the panel shows
    const show = (event) => {
      const span = event.target.closest("span.c");
      if (!span || !element.contains(span)) return;
      if (event.type === "click") {
        const wasPinned = span.classList.contains("pinned");
        element.querySelectorAll(".pinned").forEach((s) => s.classList.remove("pinned"));
        if (!wasPinned) span.classList.add("pinned");
      } else if (element.querySelector(".pinned")) {
        return;
      }
      this.explain(Number(span.dataset.i));
    };
    element.addEventListener("mouseover", show);
    element.addEventListener("click", show);
    if (onPick) {
      const pick = (event) => {
        const row = event.target.closest("tr.pick");
        if (!row || (event.type === "keydown" && event.key !== "Enter")) return;
        this.onPick(this.index, decodeURIComponent(row.dataset.char));
      };
      info.addEventListener("click", pick);
      info.addEventListener("keydown", pick);
    }
  }

  explain(index) {
    this.index = index;
    const item = this.items[index];
    this.info.innerHTML = this.describe(item);
    if (!this.onPick) return;
    for (const row of this.info.querySelectorAll("table.candidates tr")) {
      if (row.dataset.parts) row.title = row.dataset.parts;
      if (decodeURIComponent(row.dataset.char) === item.c) continue;
      row.classList.add("pick");
      row.tabIndex = 0;
      row.title = [row.dataset.parts, "click: continue the text from here with this " +
        "character instead"].filter(Boolean).join("\n");
    }
    this.info.insertAdjacentHTML("beforeend", '<p class="hint">Click another candidate (or ' +
      "Tab to it and press Enter) to fork: the text goes on from here with it instead.</p>");
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
    return span;
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

// Tabs: a button per view (data-view), one view shown; onShow(view) after each switch.
function setupTabs(onShow = null) {
  for (const button of document.querySelectorAll("#tabs button")) {
    button.addEventListener("click", () => {
      document.querySelectorAll("#tabs button").forEach((b) => b.classList.remove("active"));
      button.classList.add("active");
      document.querySelectorAll(".view").forEach((v) => { v.hidden = true; });
      $(`view-${button.dataset.view}`).hidden = false;
      if (onShow) onShow(button.dataset.view);
    });
  }
}
