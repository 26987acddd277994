"""A model worker: one process serving one installed slot on a Unix socket.

    python -m bitnet_edge.agent.worker --slot DIR --socket PATH

The agent starts it with ``BITNET_EDGE_LIBRARY`` pointing at the slot's own native library, so
the bundle's kernels are what run.  It loads the model (mmap), runs the golden vectors, prints
one JSON line (``ready``, load time, golden result, RSS) and serves the inference endpoints.  A
worker that crashes takes only itself down; the agent keeps answering from the old one.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
import uuid
from pathlib import Path

import numpy as np
from pydantic import ValidationError

from bitnet_edge.agent.api import CompletionRequest, EmbeddingsRequest, InferRequest
from bitnet_edge.agent.httpbase import JsonHandler, UnixServer
from bitnet_edge.sdk.errors import BitnetEdgeError

__all__ = ["main", "rss_mb", "golden_check"]


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
    from bitnet_edge.sdk.bundle.container import read_envelope
    from bitnet_edge.sdk.bundle.golden import check_outputs, read_golden, run_model
    from bitnet_edge.sdk.bundle.install import ENVELOPE_FILE, GOLDEN_FILE
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


def make_handler(model, name: str, lock: threading.Lock):
    arch = model.architecture

    class Handler(JsonHandler):
        def do_GET(self):
            if self.path == "/v1/models":
                self.send_json(200, {"object": "list", "data": [{"id": name, "object": "model",
                                                                  "architecture": arch, "owned_by": "bitnet-edge"}]})
            elif self.path == "/internal/ping":
                self.send_json(200, {"ok": True})
            else:
                self.send_error_json(404, "not_found", f"no route {self.path}")

        def do_POST(self):
            routes = {"/v1/infer": (("mlp", "graph"), InferRequest, self._infer),
                      "/v1/embeddings": ("bert", EmbeddingsRequest, self._embed),
                      "/v1/completions": ("bitnet", CompletionRequest, self._complete)}
            if self.path not in routes:
                self.send_error_json(404, "not_found", f"no route {self.path}")
                return
            want, cls, fn = routes[self.path]
            body = self.read_body()
            if body is None:
                return
            if arch not in (want if isinstance(want, tuple) else (want,)):
                self.send_error_json(400, "wrong_model", f"{self.path} needs a {want!r} model; this one is {arch!r}")
                return
            try:
                req = cls.model_validate_json(body)
            except ValidationError as exc:
                msg = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'body'}: {e['msg']}" for e in exc.errors())
                self.send_error_json(400, "invalid_request", msg)
                return
            try:
                fn(req)
            except BitnetEdgeError as exc:
                self.send_error_json(400, "invalid_request", str(exc))
            except (BrokenPipeError, ConnectionResetError):
                pass

        def _infer(self, req: InferRequest):
            x = np.asarray(req.inputs, dtype=np.float32)
            with lock:
                logits = model.predict(x)
            names = model.cfg.class_names
            classes = logits.argmax(-1).tolist() if logits.ndim == 2 else None  # graph outputs may be maps
            self.send_json(200, {"model": name, "outputs": logits.tolist(), "classes": classes,
                                 "labels": [names[c] for c in classes] if names and classes else None})

        def _embed(self, req: EmbeddingsRequest):
            inp = req.input
            batch = [inp] if isinstance(inp, str) or (inp and isinstance(inp[0], int)) else inp
            with lock:
                e = model.embed(batch)
            ntok = sum(len(b) if not isinstance(b, str) else len(model.tokenizer.encode(b).ids) for b in batch)
            self.send_json(200, {"object": "list", "model": name,
                                 "data": [{"object": "embedding", "index": i, "embedding": v.tolist()}
                                          for i, v in enumerate(e)],
                                 "usage": {"prompt_tokens": ntok, "total_tokens": ntok}})

        def _complete(self, req: CompletionRequest):
            tok = model.tokenizer
            if isinstance(req.prompt, str):
                if tok is None:
                    self.send_error_json(400, "invalid_request", "this model has no tokenizer: send token ids")
                    return
                ids = tok.encode(req.prompt).ids
                if model.cfg.bos_token_id is not None and (not ids or ids[0] != model.cfg.bos_token_id):
                    ids = [model.cfg.bos_token_id] + ids
            else:
                ids = list(req.prompt)
            stops = [req.stop] if isinstance(req.stop, str) else (req.stop or [])
            cid, created = f"cmpl-{uuid.uuid4().hex[:24]}", int(time.time())
            out: list[int] = []
            state = {"text": "", "finish": "length"}

            def decode(t: list[int]) -> str:
                return tok.decode(t) if tok else "".join(f"{i} " for i in t)

            def chunk(text: str, finish):
                return {"id": cid, "object": "text_completion", "created": created, "model": name,
                        "choices": [{"index": 0, "text": text, "finish_reason": finish, "logprobs": None,
                                     "token_ids": out[-1:] if text or finish is None else []}]}

            def on_token(t: int):
                out.append(t)
                full = decode(out)
                piece, state["text"] = full[len(state["text"]):], full
                if any(s and s in full for s in stops):
                    state["finish"] = "stop"
                    raise _Stop
                if t in model.cfg.eos_token_ids:
                    state["finish"] = "stop"
                if req.stream:
                    self._sse(chunk(piece, None))

            if req.stream:
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.send_header("Cache-Control", "no-cache")
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
            with lock:
                try:
                    model.generate(ids, req.max_tokens, temperature=req.temperature, top_k=req.top_k,
                                   top_p=req.top_p, seed=req.seed, on_token=on_token)
                except _Stop:
                    pass
                except BitnetEdgeError as exc:
                    if not req.stream:
                        raise
                    self._sse({"error": {"type": "invalid_request", "message": str(exc)}})
                    self._end_stream()
                    return
            text = state["text"]
            for s in stops:
                if s and s in text:
                    text = text[: text.index(s)]
            usage = {"prompt_tokens": len(ids), "completion_tokens": len(out), "total_tokens": len(ids) + len(out)}
            if req.stream:
                final = chunk("", state["finish"])
                final["usage"] = usage
                self._sse(final)
                self._end_stream()
            else:
                body = chunk(text, state["finish"])
                body["choices"][0]["token_ids"] = out
                body["usage"] = usage
                self.send_json(200, body)

        def _sse(self, obj) -> None:
            data = f"data: {json.dumps(obj)}\n\n".encode()
            self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
            self.wfile.flush()

        def _end_stream(self) -> None:
            data = b"data: [DONE]\n\n"
            self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n0\r\n\r\n")
            self.wfile.flush()

    return Handler


def _die_with_parent() -> None:
    """Exit when the agent dies (even by SIGKILL), so no worker outlives it.  (PR_SET_PDEATHSIG
    would fire when the agent *thread* that started us ends, which is any request thread.)"""
    import os

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

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    ap = argparse.ArgumentParser(prog="bitnet_edge.agent.worker")
    ap.add_argument("--slot", required=True, type=Path)
    ap.add_argument("--socket", required=True)
    args = ap.parse_args(argv)
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
        report["golden"] = golden_check(args.slot, model)
        report["rss_mb"] = rss_mb()
        server = UnixServer(args.socket, make_handler(model, model.manifest.name, threading.Lock()))
    except Exception as exc:  # noqa: BLE001 - any failure is reported to the agent, which decides
        report["error"] = f"{type(exc).__name__}: {exc}"
        print(json.dumps(report), flush=True)
        return 1
    report["ready"] = True
    print(json.dumps(report), flush=True)
    try:
        server.serve_forever(poll_interval=0.2)
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
