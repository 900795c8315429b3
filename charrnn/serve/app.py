"""The web app: the page, and a small JSON API over the served models.

    GET  /                 the page (static files shipped in charrnn/serve/static/)
    GET  /api/runs         the runs the page can pick, with cell, size and perplexities
    GET  /api/model?run=   a run's vocabulary and shape
    POST /api/generate     a stream of generated characters (server-sent events); with
                           `fork`, a branch from a point of another text (the page's tree)
    POST /api/score        a text's perplexity and each character's surprisal
    GET  /api/units?run=   the hidden units worth watching (the memory view)
    POST /api/versus       a text scored by the model and by the n-gram (the vs-counting view)
    GET  /api/characters?run=  what each character's input vector became (the characters view)
    GET  /api/status       streams running, model calls, memory

Every request is checked with generate.py's own checks and messages: a bad value is a 400 with
that message, never a traceback; more than `max_streams` at once a 429 with Retry-After.
"""

from __future__ import annotations

import asyncio
import json
import math
from pathlib import Path
from typing import Any

import torch
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from charrnn import host
from charrnn.data.vocab import CharVocab
from charrnn.errors import CharRNNError, check_int
from charrnn.generation.sampling import character_losses, check_sampling_args, score_text
from charrnn.models.registry import CharModel
from charrnn.serve.engine import Stream
from charrnn.serve.insight import Insight
from charrnn.serve.models import Busy, Models
from charrnn.studies.mixture import MixedNext, check_mix
from charrnn.training.run_folder import run_folder_of

STATIC = Path(__file__).parent / "static"
MAX_BODY = 256 * 1024  # bytes of a request body: a text to score of a few pages at most
FLUSH_S = 0.02  # seconds between two events of a stream: 50 updates a second


class BadRequest(Exception):
    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


async def read_json(request: Request) -> dict[str, Any]:
    """The request's JSON object, its size capped at MAX_BODY."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > MAX_BODY:
        raise BadRequest(f"the request body is over {MAX_BODY // 1024} KiB", 413)
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_BODY:
            raise BadRequest(f"the request body is over {MAX_BODY // 1024} KiB", 413)
    try:
        data = json.loads(body or b"{}")
    except ValueError as err:
        raise BadRequest(f"the request body is not JSON ({err})") from None
    if not isinstance(data, dict):
        raise BadRequest("the request body must be a JSON object")
    return data


def sampling_settings(data: dict[str, Any], vocab: CharVocab, model: CharModel,
                      max_length: int) -> dict[str, Any]:
    """The settings of a generation request, checked as generate.py checks its keys."""
    known = {"prompt", "temperature", "top_k", "length", "seed", "run", "unit", "fork", "mix"}
    unknown = sorted(set(data) - known)
    if unknown:
        raise CharRNNError(f"unknown setting {unknown[0]!r}: the settings are "
                           f"{', '.join(sorted(known))}.")
    prompt = data.get("prompt", "")
    if not isinstance(prompt, str):
        raise CharRNNError(f"prompt must be text, got {prompt!r}.")
    settings = {"prompt": prompt, "temperature": data.get("temperature", 1.0),
                "top_k": data.get("top_k"), "length": data.get("length", 500),
                "seed": data.get("seed", 1234)}
    check_sampling_args(vocab, settings["prompt"], settings["length"],
                        settings["temperature"], settings["top_k"])
    check_int("seed", settings["seed"], minimum=0)
    for key in ("length", "prompt"):
        size = settings[key] if key == "length" else len(prompt)
        if size > max_length:
            raise CharRNNError(f"{key} is at most {max_length} characters here (the server's "
                               f"max_length), got {size}.")
    unit = data.get("unit")
    if unit is not None:
        settings["unit"] = check_unit(unit, model)
    if check_mix(data.get("mix"), None, "the page's mix setting"):
        settings["mix"] = "ngram"
    return settings


def fork_prefix(fork: Any, settings: dict[str, Any], vocab: CharVocab,
                max_length: int) -> tuple[str, str, int]:
    """A fork {"text", "at", "char"}: the branch's text as shown (prompt, then generated
    characters), the index in it of the generated character to replace, and the candidate
    drawn there instead. Returns the text the model reads first (the prompt, or the newline an
    empty prompt starts from, and the characters before `at`), the candidate, and how many
    characters the new branch still generates (the same total as `length`)."""
    ok = isinstance(fork, dict) and set(fork) == {"text", "at", "char"}
    if not ok or not isinstance(fork["text"], str) or not isinstance(fork["char"], str) or (
            isinstance(fork["at"], bool) or not isinstance(fork["at"], int)):
        raise CharRNNError('fork must be {"text": the branch\'s text, "at": the index of a '
                           'generated character in it, "char": the candidate drawn there}, '
                           f"got {fork!r}.")
    text, at, char, prompt = fork["text"], fork["at"], fork["char"], settings["prompt"]
    if len(text) > 2 * max_length or not text.startswith(prompt) or vocab.unknown(text):
        raise CharRNNError("fork.text must be a branch's text: the prompt, then at most "
                           f"{max_length} characters of the vocabulary.")
    generated = len(text) - len(prompt)
    if not len(prompt) <= at < len(text) or at - len(prompt) >= settings["length"]:
        raise CharRNNError(
            f"fork.at={at} is not a generated character of the branch: its generated "
            f"characters are at {len(prompt)} to {len(prompt) + generated - 1}"
            + (f", and length={settings['length']} ends the new branch before it"
               if at - len(prompt) >= settings["length"] else "") + ".")
    if len(char) != 1 or vocab.unknown(char):
        raise CharRNNError(f"fork.char must be one character of the vocabulary, got {char!r}.")
    start = prompt or ("\n" if "\n" in vocab.chars else vocab.chars[0])
    return start + text[len(prompt) : at], char, settings["length"] - (at - len(prompt))


def check_candidate(logits: torch.Tensor, char: str, at: int, settings: dict[str, Any],
                    vocab: CharVocab) -> None:
    """A fork's candidate must be one the distribution drawn from could give (top_k, T = 0)."""
    index = vocab.chars.index(char)
    if settings["temperature"] == 0:
        possible = int(logits.argmax()) == index
    else:
        kth = logits.topk(settings["top_k"]).values[-1] if settings["top_k"] else -math.inf
        possible = bool(logits[index] >= kth)
    if not possible:
        how = ("greedy (temperature 0)" if settings["temperature"] == 0
               else f"top_k={settings['top_k']}")
        raise CharRNNError(f"fork.char {char!r} had probability 0 at position {at} under "
                           f"{how}: pick a candidate the panel lists, or change the settings.")


def check_unit(unit: Any, model: CharModel) -> tuple[int, int, str]:
    """A hidden unit to watch: [layer, index] of a recurrent model's state (h), or
    [layer, index, "c"] of an LSTM's cell state."""
    if not model.recurrent:
        raise CharRNNError("unit: this model has no recurrent state (a Transformer); pick a "
                           "recurrent run to watch a hidden unit.")
    layers, size = model.rnn.num_layers, model.rnn.hidden_size
    kinds = ("h", "c") if isinstance(model.rnn, torch.nn.LSTM) else ("h",)
    ok = isinstance(unit, list) and len(unit) in (2, 3) and all(
        isinstance(v, int) and not isinstance(v, bool) for v in unit[:2])
    if ok and len(unit) == 2:
        unit = [*unit, "h"]
    if not (ok and 0 <= unit[0] < layers and 0 <= unit[1] < size and unit[2] in kinds):
        raise CharRNNError(f"unit must be [layer, index] or [layer, index, kind] with layer "
                           f"0..{layers - 1}, index 0..{size - 1} and kind {' or '.join(kinds)}, "
                           f"got {unit!r}.")
    return unit[0], unit[1], unit[2]


def model_info(run_id: str, model: CharModel, vocab: CharVocab) -> dict[str, Any]:
    cell = type(model.rnn).__name__.lower() if model.recurrent else "transformer"
    info = {"run": run_id, "vocab": vocab.chars, "recurrent": model.recurrent, "cell": cell}
    if model.recurrent:
        info.update(layers=model.rnn.num_layers, units=model.rnn.hidden_size)
    return info


def create_app(models: Models, max_length: int) -> Starlette:
    """The app over `models`; `max_length` caps a request's length and prompt."""

    insight = Insight()

    async def lookup(run_id: str | None) -> tuple[CharModel, CharVocab, Any]:
        try:
            return await run_in_threadpool(models.get, run_id)
        except KeyError:
            raise BadRequest(f"no run {run_id!r} here: pick one of /api/runs", 404) from None

    async def run_of(run_id: str | None):
        try:
            return await run_in_threadpool(models.run, run_id)
        except KeyError:
            raise BadRequest(f"no run {run_id!r} here: pick one of /api/runs", 404) from None

    async def page(request: Request) -> Response:
        return FileResponse(STATIC / "index.html")

    async def runs(request: Request) -> Response:
        listed = await run_in_threadpool(models.runs)
        return JSONResponse({"runs": [r.info for r in listed], "served": models.default.id,
                             "max_length": max_length, "max_streams": models.max_streams})

    async def model(request: Request) -> Response:
        run_id = request.query_params.get("run") or models.default.id
        net, vocab, _ = await lookup(run_id)
        return JSONResponse(model_info(run_id, net, vocab))

    async def generate(request: Request) -> Response:
        data = await read_json(request)
        net, vocab, engine = await lookup(data.get("run"))
        settings = sampling_settings(data, vocab, net, max_length)
        if settings.pop("mix", None):
            run = await run_of(data.get("run"))
            settings["mix"] = MixedNext(*await run_in_threadpool(
                insight.mixture, run_folder_of(run.checkpoint), net, vocab))
        fork = None
        if data.get("fork") is not None:
            if "unit" in settings:
                raise CharRNNError("fork and unit do not go together: a fork continues a "
                                   "branch of the Generate view.")
            prefix, char, length = fork_prefix(data["fork"], settings, vocab, max_length)
            logits, state = await run_in_threadpool(engine.read, prefix)
            drawn_from = logits if "mix" not in settings else settings["mix"](
                logits[None], [vocab.encode(prefix).tolist()])[0]  # the mixture's, mixing
            check_candidate(drawn_from, char, data["fork"]["at"], settings, vocab)
            fork = {"logits": logits, "state": state, "char": char, "length": length,
                    "prefix": prefix, "mix": settings.get("mix")}
        loop = asyncio.get_running_loop()
        ready = asyncio.Event()

        def notify() -> None:  # from the engine's thread; once while the page is behind
            if not ready.is_set():
                loop.call_soon_threadsafe(ready.set)

        try:
            if fork is None:
                stream = models.start(engine, notify=notify, **settings)
            else:
                stream = models.fork(engine, notify=notify, **fork, **{
                    k: settings[k] for k in ("temperature", "top_k", "seed")})
        except Busy as err:
            return JSONResponse({"error": f"the server is busy: {err}. Try again in a moment."},
                                status_code=429, headers={"Retry-After": "1"})
        return StreamingResponse(events(stream, ready), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-store"})

    async def score(request: Request) -> Response:
        data = await read_json(request)
        text = data.get("text")
        if not isinstance(text, str):
            raise CharRNNError("text must be the text to score, as a string.")
        net, vocab, _ = await lookup(data.get("run"))
        return JSONResponse(await run_in_threadpool(score_with_surprisal, net, vocab, text))

    async def units(request: Request) -> Response:
        run = await run_of(request.query_params.get("run"))
        return JSONResponse(await run_in_threadpool(insight.units, run_folder_of(run.checkpoint)))

    async def characters(request: Request) -> Response:
        run = await run_of(request.query_params.get("run"))
        return JSONResponse(await run_in_threadpool(insight.characters,
                                                    run_folder_of(run.checkpoint)))

    async def versus(request: Request) -> Response:
        data = await read_json(request)
        text = data.get("text")
        if not isinstance(text, str):
            raise CharRNNError("text must be the text to score, as a string.")
        run = await run_of(data.get("run"))
        net, vocab, _ = await lookup(data.get("run"))
        return JSONResponse(await run_in_threadpool(
            insight.versus, run_folder_of(run.checkpoint), net, vocab, text))

    async def status(request: Request) -> Response:
        return JSONResponse({"streams": models.active(), "models": models.loaded(),
                             "max_rss_mb": _rounded(host.peak_rss_mb()),
                             "rss_mb": host.rss_mb()})  # null where the system does not say

    async def refused(request: Request, err: Exception) -> Response:
        status_code = err.status if isinstance(err, BadRequest) else 400
        return JSONResponse({"error": str(err)}, status_code=status_code)

    routes = [Route("/", page), Route("/api/runs", runs), Route("/api/model", model),
              Route("/api/generate", generate, methods=["POST"]),
              Route("/api/score", score, methods=["POST"]), Route("/api/status", status),
              Route("/api/units", units), Route("/api/versus", versus, methods=["POST"]),
              Route("/api/characters", characters),
              Mount("/static", StaticFiles(directory=STATIC), name="static")]
    app = Starlette(routes=routes,
                    exception_handlers={CharRNNError: refused, BadRequest: refused})
    app.state.models = models
    return app


async def events(stream: Stream, ready: asyncio.Event):
    """Server-sent events: each a JSON list of the stream's items since the last one, then an
    `end` event; the first as soon as it is there, the others at most every FLUSH_S (text
    still streams smoothly, and under load each event carries many characters). A client that
    goes away (closed tab, Stop) ends the stream at once: Starlette cancels this generator when
    the server reports the disconnect, and the engine drops the stream at its next step."""
    loop, sent = asyncio.get_running_loop(), -math.inf
    try:
        ready.set()  # items may have come before this generator ran
        while True:
            await ready.wait()
            wait = sent + FLUSH_S - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            ready.clear()
            batch = []
            while stream.items:
                batch.append(stream.items.popleft())
            if batch:
                sent = loop.time()
                yield f"data: {json.dumps(batch, ensure_ascii=False)}\n\n"
            if stream.done and not stream.items:
                yield "event: end\ndata: {}\n\n"
                return
            if stream.cancelled:  # the client went away, or the server is stopping
                return
    finally:
        stream.cancel()


def score_with_surprisal(model: CharModel, vocab: CharVocab, text: str) -> dict[str, Any]:
    """generate.py's mode=score result for `text`, and each scored character's surprisal in
    bits (the first character is read, not scored)."""
    result = score_text(model, vocab, text)
    kept = text.translate({ord(c): None for c in result["unknown_chars"]})
    losses = character_losses(model, vocab.encode(kept).long())
    return {**result, "text": kept,
            "surprisal_bits": [round(float(x) / math.log(2), 3) for x in losses]}


def _rounded(mb: float | None) -> float | None:
    return None if mb is None else round(mb, 1)
