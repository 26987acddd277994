"""The demo's language model: train the stdlib decoder (ternary QAT and its float twin, numpy
only), show held-out perplexity and sizes, and talk to it through an agent's
``/v1/chat/completions``, streamed.

Pure pieces (``llm_facts``, ``parse_sse``) are apart from I/O (``train``, ``stream_chat``) so tests
can check them without a fleet.
"""

from __future__ import annotations

import http.client
import json
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

from rich.console import Console
from rich.table import Table

__all__ = ["train", "llm_facts", "ppl_table", "chat_question", "parse_sse", "stream_chat", "ChatResult",
           "ROWS", "MAX_TOKENS", "SAMPLING"]

#: report rows shown, with their label in the table
ROWS = {"ternary": "ternary QAT", "float32": "float32", "ternary-ptq": "ternary PTQ (no QAT)"}
MAX_TOKENS = 40
#: seeded sampling: the same reply on every device (the kernels are bit-exact), and less looping than greedy
SAMPLING = {"temperature": 0.3, "top_k": 20, "seed": 7}


def train(out: Path, quick: bool, console: Console):
    """``train_lm`` into ``out`` with the demo's recipe and a progress bar; the LmTrainingReport."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from bitnet_edge.sdk.train.pipeline import train_lm
    from bitnet_edge.sdk.train.report import QUICK_RECIPE, LmRecipe

    recipe = QUICK_RECIPE if quick else LmRecipe()
    with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.fields[info]}"),
                  TimeElapsedColumn(), console=console) as progress:
        bars = {m: progress.add_task(f"{m:8s}", total=recipe.train.steps, info="") for m in ("ternary", "float")}

        def on_step(mode: str, step: int, loss: float) -> None:
            progress.update(bars[mode], completed=step + 1, info=f"loss {loss:.3f}")

        return train_lm(out, recipe, on_stage=lambda t: progress.console.print(f"  {t}", highlight=False),
                        on_step=on_step)


def llm_facts(report, bundles: list[dict]) -> dict:
    """What training measured, as plain data: held-out perplexities and sizes per model row, the
    bundles' sizes per target, the model's name."""
    rows = {m.name: m for m in report.models}
    models = {}
    for name in ROWS:
        m = rows[name]
        models[name] = {"trained": m.trained, "deployed": m.deployed, "heldout_ppl": m.heldout_ppl,
                        "heldout_chat_ppl": m.heldout_chat_ppl, "weights_bytes": m.weights_bytes,
                        "weights_zstd_bytes": m.weights_zstd_bytes, "model_dir_bytes": m.model_dir_bytes,
                        "train_seconds": m.train_seconds}
    return {"models": models,
            "bundles": {b["target"]: b["size"] for b in bundles},
            "heldout_tokens": report.corpus.heldout_tokens, "heldout_modules": len(report.corpus.heldout_modules),
            "train_tokens": rows["ternary"].train_tokens, "steps": report.recipe.train.steps,
            "training_seconds": report.seconds, "parity_ok": report.parity.ok}


def _size(n: int) -> str:
    return f"{n / 1024:,.0f} KiB" if n < 1 << 20 else f"{n / (1 << 20):,.2f} MiB"


def ppl_table(facts: dict) -> Table:
    m = facts["models"]
    t = Table(title=f"language model: held-out perplexity ({facts['heldout_modules']} stdlib modules, "
                    f"{facts['heldout_tokens']:,} tokens) and size",
              caption="ternary QAT: W1.58A8 projections, int8 embeddings/head; PTQ: the float model ternarized "
                      "after training; bundles carry the ternary model, its tokenizer and kernel library")
    for col in ("model", "code ppl", "chat ppl", "weights", "weights zstd", "vs float32"):
        t.add_column(col, justify="left" if col == "model" else "right")
    base = m["float32"]["weights_bytes"]
    for name, label in ROWS.items():
        r = m[name]
        t.add_row(label, f"{r['heldout_ppl']:.2f}", f"{r['heldout_chat_ppl']:.2f}", _size(r["weights_bytes"]),
                  _size(r["weights_zstd_bytes"]), f"{r['weights_bytes'] / base:.2f}x")
    for target, size in sorted(facts["bundles"].items()):
        t.add_row(f"bundle {target}", "", "", _size(size), "", f"{size / base:.2f}x")
    return t


def chat_question(report) -> str:
    """A question about a held-out module (the chat sample train_lm drew from the held-out split)."""
    chats = [s.prompt for s in report.samples if s.kind == "chat"]
    return chats[-1]


# ---- streaming chat -------------------------------------------------------------------------------

@dataclass
class ChatResult:
    text: str = ""
    pieces: int = 0  # content deltas received
    finish_reason: str | None = None
    usage: dict | None = None
    model: str | None = None
    first_piece_s: float | None = None  # time to the first content delta
    seconds: float = 0.0
    error: str | None = None
    status: int | None = None
    done: bool = False  # the stream ended with [DONE]
    extra: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        return asdict(self)


def parse_sse(lines: Iterable[bytes]) -> Iterator[dict | str]:
    """The ``data:`` payloads of a server-sent event stream: dicts, then the string ``[DONE]``."""
    for raw in lines:
        line = raw.decode("utf-8").rstrip("\r\n")
        if not line.startswith("data:"):
            continue
        data = line[5:].strip()
        if data == "[DONE]":
            yield "[DONE]"
            return
        yield json.loads(data)


def stream_chat(port: int, model: str, question: str, on_piece: Callable[[str], object],
                max_tokens: int = MAX_TOKENS, timeout: float = 120) -> ChatResult:
    """POST a streamed chat completion to an agent's local API; ``on_piece`` sees each text delta
    as it arrives.  Never raises for what the agent answered: the result says what happened."""
    body = json.dumps({"model": model, "messages": [{"role": "user", "content": question}],
                       "max_tokens": max_tokens, "stream": True, **SAMPLING}).encode()
    res = ChatResult()
    t0 = time.perf_counter()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("POST", "/v1/chat/completions", body=body,
                     headers={"Content-Type": "application/json", "Content-Length": str(len(body))})
        resp = conn.getresponse()
        res.status = resp.status
        if resp.status != 200 or not (resp.getheader("Content-Type") or "").startswith("text/event-stream"):
            raw = resp.read()
            try:
                err = json.loads(raw).get("error", {})
                res.error = f"HTTP {resp.status}: {err.get('type')}: {err.get('message')}"
            except (ValueError, AttributeError):
                res.error = f"HTTP {resp.status}: {raw[:200].decode(errors='replace')}"
            return res
        for ev in parse_sse(iter(resp.readline, b"")):
            if ev == "[DONE]":
                res.done = True
                break
            if "error" in ev:
                res.error = f"{ev['error'].get('type')}: {ev['error'].get('message')}"
                continue
            res.model = ev.get("model", res.model)
            choice = (ev.get("choices") or [{}])[0]
            piece = (choice.get("delta") or {}).get("content") or ""
            if piece:
                if res.first_piece_s is None:
                    res.first_piece_s = time.perf_counter() - t0
                res.pieces += 1
                res.text += piece
                on_piece(piece)
            if choice.get("finish_reason"):
                res.finish_reason = choice["finish_reason"]
            if ev.get("usage"):
                res.usage = ev["usage"]
    except (OSError, http.client.HTTPException, ValueError) as exc:
        res.error = f"{type(exc).__name__}: {exc}"
    finally:
        conn.close()
        res.seconds = time.perf_counter() - t0
    if res.error is None and not res.done:
        res.error = "the stream ended without [DONE]"
    return res
