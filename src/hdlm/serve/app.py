"""The ASGI application of `hdlm serve` (FastAPI on Starlette; uvicorn runs it).

Routes: `/` the live page (`static/index.html`), `/v1/models`, `/v1/completions`, `/v1/infill`,
`/v1/score`, `/v1/denoise` (the live view's server-sent events), `/v1/samplers` (what the page
builds its controls from), `/health`, and vLLM's tokenizer routes (`/tokenizer_info`,
`/tokenize`, `/detokenize`) that lm-evaluation-harness' `tokenizer_backend=remote` reads.

Every error is one JSON object in OpenAI's shape, `{"error": {"message", "type", "code"}}`: 400
for a bad request (malformed JSON, an unknown field, a value out of range, a prompt longer than
the context: the `HdlmError` the CLI would print), 401 without the API key, 503 with Retry-After
when the queue is full. The model runs only on the worker thread (`serve.worker`).
"""

from __future__ import annotations

import asyncio
import hmac
import json
import math
import signal
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from importlib import resources
from typing import Any

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, StreamingResponse
from pydantic import BaseModel, ValidationError

from hdlm.errors import HdlmError
from hdlm.sampling import chosen_sampler
from hdlm.sampling.registry import samplers_of
from hdlm.sampling.trace import COLOURS, STATES
from hdlm.serve import jobs
from hdlm.serve.live import LiveTrace
from hdlm.serve.schema import (
    CompletionRequest,
    DenoiseRequest,
    InfillRequest,
    ScoreRequest,
    request_options,
)
from hdlm.serve.worker import Busy, Cancelled, ModelWorker


def error(status: int, message: str, headers: dict | None = None) -> JSONResponse:
    """An OpenAI-shaped error response."""
    kind = {400: "invalid_request_error", 401: "authentication_error", 503: "overloaded"}
    body = {"error": {"message": message, "type": kind.get(status, "server_error"), "code": status}}
    return JSONResponse(body, status_code=status, headers=headers)


def _validation_message(exc: ValidationError) -> str:
    """The first problem of a pydantic error, in one line naming the field."""
    first = exc.errors()[0]
    where = ".".join(str(part) for part in first["loc"]) or "body"
    if first["type"] == "extra_forbidden":
        return f"unknown field '{where}'"
    if first["type"] == "missing":
        return f"missing field '{where}'"
    return f"{where}: {first['msg']}"


async def parse_body(request: Request, model: type[BaseModel]) -> Any:
    """The request's JSON body as `model`; an `HdlmError` (400) with one clear message else."""
    raw = await request.body()
    try:
        body = json.loads(raw)
    except ValueError as e:
        raise HdlmError(f"malformed JSON body: {e}") from None
    if not isinstance(body, dict):
        raise HdlmError("the body must be a JSON object")
    try:
        return model.model_validate(body, strict=True)
    except ValidationError as e:
        raise HdlmError(_validation_message(e)) from None


class Server:
    """What the routes share: the model, its name, the worker."""

    def __init__(self, lm, name: str, max_waiting: int):
        self.lm, self.name = lm, name
        self.worker = ModelWorker(max_waiting)

    async def run(self, job: Callable[[], Any]) -> Any:
        """Run `job` on the worker and await its result (`Busy` when the queue is full)."""
        return await asyncio.wrap_future(self.worker.submit(job))

    def samplers(self) -> dict:
        """The samplers of this model and their declared options (the page's controls)."""
        allowed = request_options()
        listed = []
        for name in samplers_of(self.lm.family):
            try:
                sampler = chosen_sampler(self.lm, name)
            except HdlmError:  # e.g. a process this sampler cannot walk
                continue
            options = [_describe(o) for o in sampler.options if o.name in allowed]
            listed.append({"name": name, "summary": sampler.summary, "options": options})
        return {"family": self.lm.config.family, "samplers": listed,
                "states": list(STATES), "colours": list(COLOURS),
                "max_len": self.lm.config.model.max_len,
                "seq_len": self.lm.config.data.seq_len}  # fmt: skip


def _describe(option) -> dict:
    """An `Option` as JSON: name, kind, default, range or choices, help."""
    bounds = (("low", option.low), ("high", option.high))
    finite = {name: value for name, value in bounds if math.isfinite(value)}
    default = option.default if option.kind is not object else None
    return {"name": option.name, "kind": option.kind.__name__, "default": default,
            "choices": list(option.choices), "help": option.help, **finite}  # fmt: skip


def create_app(lm, name: str = "hdlm", api_key: str | None = None, max_waiting: int = 16):
    """The FastAPI application serving `lm` under the model id `name` (module docstring)."""
    server = Server(lm, name, max_waiting)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        await asyncio.to_thread(server.worker.close)  # the running job finishes first

    app = FastAPI(title="hdlm serve", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.server = server
    _add_errors_and_auth(app, api_key)
    _add_info_routes(app, server)
    _add_sampling_routes(app, server)
    _add_live_route(app, server)
    return app


def _add_errors_and_auth(app: FastAPI, api_key: str | None) -> None:
    @app.exception_handler(HdlmError)
    async def bad_request(request: Request, exc: HdlmError) -> JSONResponse:
        return error(400, str(exc))

    @app.exception_handler(Busy)
    async def busy(request: Request, exc: Busy) -> JSONResponse:
        return error(503, str(exc), headers={"Retry-After": str(exc.retry_after)})

    if api_key is not None:
        app.add_middleware(ApiKeyGuard, api_key=api_key)


class ApiKeyGuard:
    """ASGI middleware: a request without the key (`Authorization: Bearer KEY`, or `?api_key=KEY`
    for the page) is a 401. A plain ASGI class, not `@app.middleware`: that wrapper would hide
    a client's disconnect from a streaming response, which must see it to free the worker."""

    def __init__(self, app, api_key: str):
        self.app, self.key = app, api_key.encode()

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http":
            request = Request(scope)
            given = request.headers.get("authorization", "").removeprefix("Bearer ").strip()
            given = given or request.query_params.get("api_key", "")
            if not hmac.compare_digest(given.encode(), self.key):
                reply = error(401, "missing or wrong API key: send 'Authorization: Bearer KEY'")
                await reply(scope, receive, send)
                return
        await self.app(scope, receive, send)


def _add_info_routes(app: FastAPI, server: Server) -> None:
    lm = server.lm

    @app.get("/", response_class=HTMLResponse)
    async def page() -> str:
        return resources.files("hdlm.serve").joinpath("static/index.html").read_text()

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok", "waiting": server.worker.waiting}

    @app.get("/v1/models")
    async def models() -> dict:
        card = {"id": server.name, "object": "model", "created": 0, "owned_by": "hdlm",
                "family": lm.config.family, "max_len": lm.config.model.max_len}  # fmt: skip
        return {"object": "list", "data": [card]}

    @app.get("/v1/samplers")
    async def samplers() -> dict:
        return server.samplers()

    @app.get("/tokenizer_info")
    async def tokenizer_info() -> dict:
        roles = getattr(lm.tokenizer, "roles", {})
        return {"eos_token": roles.get("eos"), "bos_token": roles.get("bos"),
                "pad_token": roles.get("eos"),
                "model_max_length": lm.config.model.max_len}  # fmt: skip

    @app.post("/tokenize")
    async def tokenize(request: Request) -> dict:
        body = await request.json()
        prompt = body.get("prompt") if isinstance(body, dict) else None
        if not isinstance(prompt, str):
            raise HdlmError("tokenize: give {'prompt': TEXT}")
        tokens = lm.tokenizer.encode(prompt)
        return {"tokens": tokens, "count": len(tokens), "max_model_len": lm.config.model.max_len}

    @app.post("/detokenize")
    async def detokenize(request: Request) -> dict:
        body = await request.json()
        tokens = body.get("tokens") if isinstance(body, dict) else None
        if not isinstance(tokens, list) or not all(isinstance(t, int) for t in tokens):
            raise HdlmError("detokenize: give {'tokens': [ids]}")
        return {"prompt": lm.tokenizer.decode(tokens)}


def _add_sampling_routes(app: FastAPI, server: Server) -> None:
    lm = server.lm

    @app.post("/v1/completions")
    async def completions(request: Request):
        job = jobs.prepare_completion(lm, await parse_body(request, CompletionRequest))
        choices = await server.run(lambda: jobs.run_completion(lm, job))
        reply = {"id": f"cmpl-{uuid.uuid4().hex}", "object": "text_completion",
                 "created": int(time.time()), "model": server.name}  # fmt: skip
        completion_tokens = sum(c.pop("tokens") for c in choices)
        if job.request.stream:  # the choices as chunks, once drawn (see README)
            chunks = [f"data: {json.dumps({**reply, 'choices': [c]})}\n\n" for c in choices]
            return StreamingResponse(iter([*chunks, "data: [DONE]\n\n"]),
                                     media_type="text/event-stream")  # fmt: skip
        prompt_tokens = sum(map(len, job.prompts)) * job.request.n
        usage = {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                 "total_tokens": prompt_tokens + completion_tokens}  # fmt: skip
        return {**reply, "choices": choices, "usage": usage}

    @app.post("/v1/infill")
    async def infill(request: Request) -> dict:
        body = await parse_body(request, InfillRequest)
        options = jobs.prepare_infill(lm, body)
        choices = await server.run(lambda: jobs.run_infill(lm, body, options))
        return {"id": f"infill-{uuid.uuid4().hex}", "object": "infill",
                "created": int(time.time()), "model": server.name, "choices": choices}  # fmt: skip

    @app.post("/v1/score")
    async def score(request: Request) -> dict:
        body = await parse_body(request, ScoreRequest)
        return {"model": server.name, **await server.run(lambda: jobs.run_score(lm, body))}


def _sse(event: str, data: dict) -> str:
    return f"event: {event}\ndata: {json.dumps(data)}\n\n"


def _add_live_route(app: FastAPI, server: Server) -> None:
    lm = server.lm

    @app.post("/v1/denoise")
    async def denoise(request: Request) -> StreamingResponse:
        options = jobs.prepare_denoise(lm, await parse_body(request, DenoiseRequest))
        loop, frames = asyncio.get_running_loop(), asyncio.Queue()
        stop = threading.Event()

        def send(event: str, data: dict) -> None:  # from the worker thread
            loop.call_soon_threadsafe(frames.put_nowait, (event, data))

        def job() -> None:
            trace = LiveTrace(send=lambda frame: send("frame", frame), stop=stop,
                              tokenizer=lm.tokenizer)  # fmt: skip
            try:
                send("done", jobs.run_denoise(lm, options, trace))
            except HdlmError as e:
                send("error", {"message": str(e)})
            except Cancelled:
                raise  # nobody is listening: the worker counts it and moves on
            except Exception as e:  # a bug: tell the page, and let the worker log it
                send("error", {"message": f"internal error: {e}"})
                raise

        future = server.worker.submit(job)  # Busy (503) before the stream starts

        async def events() -> AsyncIterator[str]:
            try:
                while True:
                    event, data = await frames.get()
                    yield _sse(event, data)
                    if event != "frame":
                        return
            finally:  # done, or the client went away: free the worker
                stop.set()
                future.cancel()

        return StreamingResponse(events(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache"})  # fmt: skip


def serve(
    lm,
    name: str,
    host: str = "127.0.0.1",
    port: int = 8000,
    api_key: str | None = None,
    max_waiting: int = 16,
) -> None:
    """Serve `lm` on http://HOST:PORT until SIGTERM or Ctrl-C (from the main thread): uvicorn
    stops accepting, lets open requests finish (10 s at most), then the worker finishes its job
    and stops. After SIGTERM this returns (exit 0, as `hdlm train` does); uvicorn re-raises the
    signal once it has shut down, which the handler installed here absorbs."""
    app = create_app(lm, name, api_key, max_waiting)
    previous = signal.signal(signal.SIGTERM, lambda sig, frame: None)
    try:
        uvicorn.run(app, host=host, port=port, timeout_graceful_shutdown=10, log_level="info")
    finally:
        signal.signal(signal.SIGTERM, previous)
