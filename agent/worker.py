"""A model worker: one process serving one installed slot on a Unix socket.

    python -m bitnet_edge.agent.worker --slot DIR --socket PATH

The agent starts it with ``BITNET_EDGE_LIBRARY`` pointing at the slot's own native library, so
the bundle's kernels are what run.  It loads the model (mmap), runs the golden vectors, prints
one JSON line (``ready``, load time, golden result, RSS) and serves the inference endpoints.  A
worker that crashes takes only itself down; the agent keeps answering from the old one.
"""

from __future__ import annotations

import argparse
import base64
import json
import logging
import sys
import threading
import time
import uuid
from pathlib import Path

import numpy as np
from pydantic import ValidationError

from bitnet_edge.agent.api import ChatCompletionRequest, CompletionRequest, EmbeddingsRequest, InferRequest
from bitnet_edge.agent.httpbase import (
    MAX_BODY,
    HttpError,
    HttpServer,
    Request,
    ServerLimits,
    error_response,
    json_response,
)
from bitnet_edge.sdk.errors import BitnetEdgeError

__all__ = ["main", "rss_mb", "golden_check", "make_app", "Admission"]

log = logging.getLogger("bitnet_edge.agent.worker")

try:  # raised by the server's write() when the client has gone
    from waitress.channel import ClientDisconnected as ClientGone
except ImportError:  # pragma: no cover - waitress is a dependency
    class ClientGone(Exception):
        pass


def rss_mb(pid: int | str = "self") -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return 0.0


def golden_check(slot: Path, model) -> dict:
    """Run the bundle's golden vectors; {"present": False} when the bundle has none."""
    from bitnet_edge.sdk.bundle.container import ENVELOPE_FILE, read_envelope
    from bitnet_edge.sdk.bundle.golden import GOLDEN_FILE, check_outputs, read_golden, run_model
    from bitnet_edge.sdk.bundle.manifest import parse_manifest

    if not (slot / GOLDEN_FILE).is_file():
        return {"present": False}
    with open(slot / ENVELOPE_FILE, "rb") as f:
        manifest = parse_manifest(read_envelope(f).manifest_bytes)
    gs = manifest.golden
    arrays = read_golden(gs, (slot / GOLDEN_FILE).read_bytes())
    inputs = [arrays[a.name] for a in gs.arrays if a.role == "input"]
    want = next(arrays[a.name] for a in gs.arrays if a.role == "output")
    got = run_model(model, gs.method, inputs)  # first run: correctness (and page-ins)
    res = check_outputs(got, want, gs.tolerance)
    times = []
    for _ in range(5):  # latency: median of warm runs, so one scheduling hiccup does not fail a device
        t0 = time.perf_counter()
        run_model(model, gs.method, inputs)
        times.append((time.perf_counter() - t0) * 1000.0)
    latency = sorted(times)[len(times) // 2]
    return {"present": True, "ok": res.ok, "max_abs_error": res.max_abs_error, "cosine": res.cosine,
            "problem": res.problem, "latency_ms": latency, "method": gs.method}


class _Stop(Exception):
    pass


class Admission:
    """Bounds on the requests a worker takes at once (``max_requests``) and the request bytes
    (prompts, inputs) they hold (``max_bytes``, from the device's memory budget); over either the
    request is refused at once with a typed 429 / 503 (413 when it alone is over ``max_bytes``)."""

    def __init__(self, max_requests: int, max_bytes: int):
        self.max_requests, self.max_bytes = max_requests, max_bytes
        self._lock = threading.Lock()
        self.requests = self.bytes = 0

    def enter(self, nbytes: int) -> None:
        if nbytes > self.max_bytes:
            raise HttpError(413, "too_large", f"a request of {nbytes} bytes is over this device's in-flight budget "
                                              f"of {self.max_bytes} bytes (limits.max_inflight_prompt_mb)")
        with self._lock:
            if self.requests >= self.max_requests:
                raise HttpError(429, "busy", f"{self.requests} requests in progress (limits.max_concurrent_requests="
                                             f"{self.max_requests}); retry shortly", [("Retry-After", "1")])
            if self.bytes + nbytes > self.max_bytes:
                raise HttpError(503, "over_memory_budget", f"{self.bytes} request bytes in progress; {nbytes} more "
                                                           f"would pass the budget of {self.max_bytes}; retry shortly",
                                [("Retry-After", "1")])
            self.requests += 1
            self.bytes += nbytes

    def leave(self, nbytes: int) -> None:
        with self._lock:
            self.requests -= 1
            self.bytes -= nbytes


def _held_back(text: str, stops: list[str]) -> int:
    """How many characters at the end of ``text`` a stream must hold back: the longest end that could
    be the start of a stop text, and an incomplete UTF-8 character (decoded as U+FFFD so far)."""
    hold = 0
    for s in stops:
        for k in range(min(len(s) - 1, len(text)), hold, -1):
            if text.endswith(s[:k]):
                hold = k
                break
    while hold < len(text) and text[len(text) - hold - 1] == "\ufffd":
        hold += 1
    return hold


def _validation_message(exc: ValidationError) -> str:
    return "; ".join(f"{'.'.join(map(str, e['loc'])) or 'body'}: {e['msg']}" for e in exc.errors())[:2000]


def make_app(model, name: str, lock: threading.Lock, admission: Admission):
    """The worker's WSGI app: /v1/models, /v1/infer, /v1/embeddings, /v1/completions, /v1/chat/completions."""
    arch = model.architecture
    loaded_at = int(time.time())
    routes = {"/v1/infer": (("mlp", "graph"), InferRequest, "_infer"),
              "/v1/embeddings": (("bert",), EmbeddingsRequest, "_embed"),
              "/v1/completions": (("bitnet",), CompletionRequest, "_complete"),
              "/v1/chat/completions": (("bitnet",), ChatCompletionRequest, "_chat")}

    def app(environ, start_response):
        req = Request(environ)
        try:
            if req.method == "GET":
                if req.path == "/v1/models":
                    return json_response(start_response, 200, {"object": "list", "data": [
                        {"id": name, "object": "model", "created": loaded_at, "architecture": arch,
                         "owned_by": "bitnet-edge"}]})
                if req.path == "/internal/ping":
                    return json_response(start_response, 200, {"ok": True})
                raise HttpError(404, "not_found", f"no route {req.path}")
            if req.method != "POST" or req.path not in routes:
                raise HttpError(404, "not_found", f"no route {req.method} {req.path}")
            want, cls, fn = routes[req.path]
            body = req.body(MAX_BODY)
            if arch not in want:
                raise HttpError(400, "wrong_model", f"{req.path} needs a {want[0]!r} model; this one is {arch!r}")
            try:
                parsed = cls.model_validate_json(body)
            except ValidationError as exc:
                raise HttpError(400, "invalid_request", _validation_message(exc)) from None
            admission.enter(len(body))
            try:
                return handlers[fn](parsed, start_response)
            finally:
                admission.leave(len(body))
        except HttpError as exc:
            return error_response(start_response, exc.code, exc.kind, exc.message, exc.headers)
        except BitnetEdgeError as exc:
            return error_response(start_response, 400, "invalid_request", str(exc).splitlines()[0][:2000])
        except (ValueError, TypeError, OverflowError) as exc:  # e.g. ragged inputs numpy cannot shape
            return error_response(start_response, 400, "invalid_request", f"{type(exc).__name__}: {exc}"[:2000])
        except Exception as exc:  # noqa: BLE001 - a bug: answered and logged, never a dead request thread
            log.exception("worker: %s %s failed", req.method, req.path)
            return error_response(start_response, 500, "internal", f"{type(exc).__name__}: {exc}"[:500])

    def _infer(req: InferRequest, start_response):
        x = np.asarray(req.inputs, dtype=np.float32)  # ragged -> ValueError -> 400
        if x.dtype == object or x.ndim < 2:
            raise HttpError(400, "invalid_request", "inputs: every row must have the same shape")
        with lock:
            logits = model.predict(x)
        names = model.cfg.class_names
        classes = logits.argmax(-1).tolist() if logits.ndim == 2 else None  # graph outputs may be maps
        return json_response(start_response, 200, {
            "model": name, "outputs": logits.tolist(), "classes": classes,
            "labels": [names[c] for c in classes] if names and classes else None})

    def _embed(req: EmbeddingsRequest, start_response):
        inp = req.input
        batch = [inp] if isinstance(inp, str) or (inp and isinstance(inp[0], int)) else inp
        if any(isinstance(b, str) for b in batch) and model.tokenizer is None:
            raise HttpError(400, "invalid_request", "this model has no tokenizer: send token ids")
        with lock:
            e = model.embed(batch)
        if req.dimensions is not None and req.dimensions != e.shape[-1]:
            raise HttpError(400, "invalid_request", f"dimensions: this model's embeddings have {e.shape[-1]} "
                                                    f"dimensions, not {req.dimensions} (no truncation)")
        ntok = sum(len(b) if not isinstance(b, str) else len(model.tokenizer.encode(b).ids) for b in batch)
        if req.encoding_format == "base64":  # as OpenAI: the float32 little-endian bytes, base64
            vectors = [base64.b64encode(np.asarray(v, dtype="<f4").tobytes()).decode("ascii") for v in e]
        else:
            vectors = [v.tolist() for v in e]
        return json_response(start_response, 200, {
            "object": "list", "model": name,
            "data": [{"object": "embedding", "index": i, "embedding": v} for i, v in enumerate(vectors)],
            "usage": {"prompt_tokens": ntok, "total_tokens": ntok}})

    def _complete(req: CompletionRequest, start_response):
        tok = model.tokenizer
        if isinstance(req.prompt, str):
            if tok is None:
                raise HttpError(400, "invalid_request", "this model has no tokenizer: send token ids")
            ids = tok.encode(req.prompt).ids
            if model.cfg.bos_token_id is not None and (not ids or ids[0] != model.cfg.bos_token_id):
                ids = [model.cfg.bos_token_id] + ids
        else:
            ids = list(req.prompt)
        echo = ""
        if req.echo:
            echo = req.prompt if isinstance(req.prompt, str) else (tok.decode(ids) if tok else "")
        return _generate(req, ids, 16 if req.max_tokens is None else req.max_tokens, [], False, start_response,
                         logprobs=req.logprobs, echo=echo)

    def _chat(req: ChatCompletionRequest, start_response):
        from bitnet_edge.sdk.chat import render_chat

        tok, template = model.tokenizer, model.manifest.chat_template
        if tok is None or template is None:
            raise HttpError(400, "invalid_request", "this model has no chat template: use /v1/completions")
        msgs = [{"role": "system" if m.role == "developer" else m.role, "content": m.text} for m in req.messages]
        ids = tok.encode(render_chat(template, msgs), add_special_tokens=False).ids
        # the template's stop texts that are tokens (special tokens are not in decoded text)
        stop_ids = [i for i in (tok.token_to_id(s) for s in template.stop) if i is not None]
        limit = req.max_completion_tokens if req.max_completion_tokens is not None else req.max_tokens
        if limit is None:  # unset: up to 256 tokens, within the context
            limit = max(0, min(256, model.cfg.max_position_embeddings - len(ids)))
        k = (req.top_logprobs or 0) if req.logprobs else None
        return _generate(req, ids, limit, stop_ids, True, start_response, logprobs=k)

    def _sampler(req, logprobs: int | None):
        from bitnet_edge.sdk.models.sampling import Sampler

        bias = {int(k): float(v) for k, v in (req.logit_bias or {}).items()}
        outside = [t for t in bias if t >= model.cfg.vocab_size]
        if outside:
            raise HttpError(400, "invalid_request", f"logit_bias: token {outside[0]} is outside the vocabulary "
                                                    f"of {model.cfg.vocab_size} tokens")
        seed = req.seed if req.seed is None or req.seed >= 0 else req.seed + 2**64  # the same 64 bits, unsigned
        return Sampler(req.temperature or 0.0, req.top_k, req.top_p, seed, logit_bias=bias,
                       presence_penalty=req.presence_penalty or 0.0, frequency_penalty=req.frequency_penalty or 0.0,
                       logprobs=logprobs)

    def _token(t: int) -> tuple[str, list[int]]:
        """A token's text and bytes, for logprobs."""
        tok = model.tokenizer
        if tok is None:
            return f"{t} ", list(f"{t} ".encode())
        from bitnet_edge.sdk.tokenizer import token_bytes

        b = token_bytes(tok, t)
        return b.decode("utf-8", errors="replace"), list(b)

    def _chat_logprobs(records) -> dict:
        content = []
        for r in records:
            text, raw = _token(r.token)
            top = []
            for i, lp in r.top:
                tt, tb = _token(i)
                top.append({"token": tt, "logprob": lp, "bytes": tb})
            content.append({"token": text, "logprob": r.logprob, "bytes": raw, "top_logprobs": top})
        return {"content": content, "refusal": None}

    def _text_logprobs(records, offset: int) -> dict:
        out = {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}
        for r in records:
            text = _token(r.token)[0]
            out["tokens"].append(text)
            out["token_logprobs"].append(r.logprob)
            out["top_logprobs"].append({_token(i)[0]: lp for i, lp in r.top})
            out["text_offset"].append(offset)
            offset += len(text)
        return out

    def _generate(req, ids: list[int], max_tokens: int, stop_ids: list[int], chat: bool, start_response, *,
                  logprobs: int | None = None, echo: str = ""):
        """Generate and answer as a text completion or a chat completion (plain or streamed)."""
        tok = model.tokenizer
        stops = [req.stop] if isinstance(req.stop, str) else (req.stop or [])
        ends = set(model.cfg.eos_token_ids) | set(stop_ids)
        cid, created = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex[:24]}", int(time.time())
        sampler = _sampler(req, logprobs)
        usage_chunk = bool(req.stream_options and req.stream_options.include_usage)
        out: list[int] = []
        state = {"text": "", "finish": "length", "sent": 0, "offset": len(echo), "streamed": 0}
        write = None

        def decode(t: list[int]) -> str:
            return tok.decode(t) if tok else "".join(f"{i} " for i in t)

        def pending_logprobs():
            """The logprobs of the tokens not sent yet (a token may add no text of its own)."""
            if logprobs is None:
                return None
            recs = sampler.records[state["sent"]:len(out)]
            if not recs and req.stream:
                return None
            state["sent"] = len(out)
            if chat:
                return _chat_logprobs(recs)
            lp = _text_logprobs(recs, state["offset"])
            state["offset"] += sum(len(t) for t in lp["tokens"])
            return lp

        def chunk(text: str, finish, token_ids: list[int] | None = None):
            if chat:
                return {"id": cid, "object": "chat.completion.chunk", "created": created, "model": name,
                        "system_fingerprint": None,
                        "choices": [{"index": 0, "delta": {"content": text} if text or finish is None else {},
                                     "finish_reason": finish, "logprobs": pending_logprobs()}]}
            return {"id": cid, "object": "text_completion", "created": created, "model": name,
                    "choices": [{"index": 0, "text": text, "finish_reason": finish, "logprobs": pending_logprobs(),
                                 "token_ids": token_ids if token_ids is not None else
                                 (out[-1:] if text or finish is None else [])}]}

        def sse(obj) -> None:
            if usage_chunk:
                obj.setdefault("usage", None)
            write(f"data: {json.dumps(obj)}\n\n".encode())

        def send(upto: int) -> None:
            """Stream the text up to ``upto`` not sent yet (completions: a chunk per token, even empty)."""
            piece = state["text"][state["streamed"]:upto] if upto > state["streamed"] else ""
            if piece or not chat:
                sse(chunk(piece, None))
                state["streamed"] = max(state["streamed"], upto)

        def on_token(t: int):
            out.append(t)
            full = decode(out)
            cut = min((full.index(s) for s in stops if s and s in full), default=None)
            if cut is not None:  # the stop text and what follows it are not part of the answer
                state["finish"], state["text"] = "stop", full[:cut]
                if req.stream and cut > state["streamed"]:
                    send(cut)
                raise _Stop
            state["text"] = full
            if t in ends:
                state["finish"] = "stop"
            if req.stream:
                send(len(full) - _held_back(full, stops))

        if req.stream:  # chunked by the server as it is written (WSGI write callable)
            write = start_response("200 OK", [("Content-Type", "text/event-stream"), ("Cache-Control", "no-cache")])
            if chat:  # OpenAI's first chunk: the role
                first = chunk("", None)
                first["choices"][0]["delta"] = {"role": "assistant", "content": ""}
                sse(first)
            elif echo:
                sse(chunk(echo, None))
        with lock:
            try:
                model.generate(ids, max_tokens, stop=stop_ids, on_token=on_token, sampler=sampler)
            except _Stop:
                pass
            except ClientGone:
                return []
            except (BitnetEdgeError, ValueError) as exc:
                if not req.stream:
                    raise
                sse({"error": {"type": "invalid_request", "message": str(exc).splitlines()[0][:2000]}})
                write(b"data: [DONE]\n\n")
                return []
        text = state["text"]
        for s in stops:
            if s and s in text:
                text = text[: text.index(s)]
        usage = {"prompt_tokens": len(ids), "completion_tokens": len(out), "total_tokens": len(ids) + len(out)}
        if req.stream:
            try:
                if len(text) > state["streamed"]:  # what was held back (a stop's possible start)
                    sse(chunk(text[state["streamed"]:], None, []))
            except ClientGone:
                return []
            final = chunk("", state["finish"])
            if not usage_chunk:
                final["usage"] = usage  # extension: the finishing chunk carries the usage
            try:
                sse(final)
                if usage_chunk:  # OpenAI's stream_options.include_usage: one more chunk, no choices
                    last = chunk("", None)
                    last["choices"], last["usage"] = [], usage
                    sse(last)
                write(b"data: [DONE]\n\n")
            except ClientGone:
                pass
            return []
        if chat:
            return json_response(start_response, 200, {
                "id": cid, "object": "chat.completion", "created": created, "model": name,
                "system_fingerprint": None, "service_tier": "default",
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                             "finish_reason": state["finish"], "logprobs": pending_logprobs()}], "usage": usage})
        body = chunk(echo + text, state["finish"])
        body["choices"][0]["token_ids"] = out
        body["usage"] = usage
        return json_response(start_response, 200, body)

    handlers = {"_infer": _infer, "_embed": _embed, "_complete": _complete, "_chat": _chat}
    return app


def _die_with_parent() -> None:
    """Exit when the agent dies (even by SIGKILL), so no worker outlives it.  (PR_SET_PDEATHSIG
    would fire when the agent *thread* that started us ends, which is any request thread.)"""
    import os

    agent = os.environ.get("BITNET_EDGE_AGENT_PID")
    if agent and agent.isdigit() and hasattr(os, "pidfd_open"):  # forked by the zygote: watch the agent itself
        import select

        try:
            fd = os.pidfd_open(int(agent))
        except OSError:
            os._exit(0)  # the agent is gone already

        def watch_agent() -> None:
            p = select.poll()
            p.register(fd, select.POLLIN)
            p.poll()  # readable when the agent has exited (the zygote may come and go)
            os._exit(0)

        threading.Thread(target=watch_agent, daemon=True, name="agent-watch").start()
        return
    parent = os.getppid()

    def watch() -> None:
        while True:
            time.sleep(0.5)
            if os.getppid() != parent:
                os._exit(0)

    threading.Thread(target=watch, daemon=True, name="parent-watch").start()


def main(argv=None) -> int:
    _die_with_parent()
    import signal

    ap = argparse.ArgumentParser(prog="bitnet_edge.agent.worker")
    ap.add_argument("--slot", required=True, type=Path)
    ap.add_argument("--socket", required=True)
    ap.add_argument("--max-requests", type=int, default=4, help="inference requests at once (429 beyond)")
    ap.add_argument("--max-inflight-bytes", type=int, default=64 << 20, help="request bytes at once (503 beyond)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(name)s %(levelname)s %(message)s")
    t0 = time.perf_counter()
    report: dict = {"ready": False, "pid": None}
    try:
        import os

        from bitnet_edge.sdk import load_model
        from bitnet_edge.sdk.native import load

        report["pid"] = os.getpid()
        lib = load()
        model = load_model(args.slot)
        report["load_s"] = time.perf_counter() - t0
        report["library"] = str(lib.path)
        report["model"] = model.manifest.name
        report["architecture"] = model.architecture
        report["golden"] = golden_check(args.slot, model)
        report["rss_mb"] = rss_mb()
        admission = Admission(max(1, args.max_requests), max(1, args.max_inflight_bytes))
        # threads: the admitted requests, plus two to answer 429 / 503 at once instead of queueing
        server = HttpServer(make_app(model, model.manifest.name, threading.Lock(), admission),
                            unix_socket=args.socket, socket_mode=0o600, name="worker",
                            limits=ServerLimits(threads=admission.max_requests + 2, connection_limit=256,
                                                channel_timeout=600.0, max_body=MAX_BODY))
    except Exception as exc:  # noqa: BLE001 - any failure is reported to the agent, which decides
        report["error"] = f"{type(exc).__name__}: {exc}"
        print(json.dumps(report), flush=True)
        return 1
    report["ready"] = True
    print(json.dumps(report), flush=True)
    server.start()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    stop.wait()
    server.stop(timeout=2.0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
