"""A run as one HTML file: the page's markup, the served page's style and shared script, the
model in JavaScript (page/runtime.js) and its weights, all inside; it opens from disk with the
network off (its Content-Security-Policy lets it fetch nothing)."""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

from charrnn.data.vocab import CharVocab
from charrnn.export.weights import packed
from charrnn.models.registry import CharModel

PAGE = Path(__file__).parent / "page"
SERVED = Path(__file__).parents[1] / "serve" / "static"  # the served page's style and helpers
PROMPT = "ROMEO:"
SCORE_TEXT = "ROMEO:\nBut soft, what light through yonder window breaks?"


def page(model: CharModel, vocab: CharVocab, card: dict[str, Any]) -> str:
    """The HTML text of the exported page."""
    spec = {**packed(model, vocab), "card": card}
    # JSON inside <script>: "</" would end the element early, so it is escaped.
    model_json = json.dumps(spec, ensure_ascii=False).replace("</", "<\\/")
    script = "\n".join(path.read_text(encoding="utf-8") for path in (
        SERVED / "common.js", PAGE / "runtime.js", PAGE / "page.js"))
    fits = lambda text: text if not vocab.unknown(text) else ""  # noqa: E731
    values = {
        "__STYLE__": (SERVED / "style.css").read_text(encoding="utf-8"),
        "__SCRIPT__": script.replace("</script", "<\\/script"),
        "__MODEL__": model_json,
        "__TITLE__": html.escape(f"{card['cell']} {card['hidden_size']} · {card['run']}"),
        "__PROMPT__": html.escape(fits(PROMPT)),
        "__SCORE_TEXT__": html.escape(fits(SCORE_TEXT)),
    }
    text = (PAGE / "page.html").read_text(encoding="utf-8")
    for marker in ("__STYLE__", "__SCRIPT__", "__TITLE__", "__PROMPT__", "__SCORE_TEXT__",
                   "__MODEL__"):  # the model last: nothing is looked for inside its weights
        text = text.replace(marker, values[marker], 1)
    return text
