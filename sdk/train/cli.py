"""``bitnet-edge train-lm``: train the stdlib language model, ternary (QAT) and float, and compare them."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click
from rich.console import Console
from rich.table import Table

from bitnet_edge.sdk.cliutil import EXIT_FAILED, json_option
from bitnet_edge.sdk.errors import FormatError

__all__ = ["register", "print_report"]

def _fmt_bytes(n: int) -> str:
    return f"{n / 1024:,.0f} KiB" if n < 1 << 20 else f"{n / (1 << 20):,.2f} MiB"


def print_report(report, console: Console | None = None) -> None:
    console = console or Console()
    t = Table(title=f"stdlib LM: held-out perplexity and size (Python {report.corpus.python} stdlib, "
                    f"{len(report.corpus.heldout_modules)} held-out modules)")
    for col in ("model", "ppl trainer", "ppl runtime", "chat ppl", "weights", "zstd", "vs f32"):
        t.add_column(col, justify="left" if col == "model" else "right")
    base = next(m.weights_bytes for m in report.models if m.name == "float32")
    for m in report.models:
        t.add_row(m.name, "-" if m.heldout_ppl_trainer is None else f"{m.heldout_ppl_trainer:.2f}",
                  f"{m.heldout_ppl:.2f}", f"{m.heldout_chat_ppl:.2f}", _fmt_bytes(m.weights_bytes),
                  _fmt_bytes(m.weights_zstd_bytes), f"{m.weights_bytes / base:.2f}x")
    console.print(t)
    for m in report.models:
        trained = (f"; trained {m.train_tokens:,} tokens in {m.train_seconds:.0f} s ({m.train_cpu_seconds:.0f} CPU-s)"
                   if m.train_seconds is not None else "")
        console.print(f"  {m.name}: {m.deployed}{trained}", highlight=False)
    p = report.parity
    ok = all(g.match for g in p.greedy)
    console.print(f"runtime vs trainer: |logit diff| mean {p.mean_abs_logit_diff:.1e}, max {p.max_abs_logit_diff:.1e} "
                  f"(logits up to {p.logit_scale:.1f}); "
                  f"greedy tokens {'[green]identical[/green]' if ok else '[red]differ[/red]'} "
                  f"on {len(p.greedy)} prompts")
    for s in report.samples:
        console.print(f"[bold]{s.kind}[/bold] {s.prompt!r} -> {s.text!r}", markup=True, highlight=False)
    console.print(f"took {report.seconds:.1f} s ({report.jobs} training process(es)); "
                  f"ternary model: {report.models[0].model_dir}")


def register(main: click.Group) -> None:
    @main.command("train-lm")
    @click.option("--out", "-o", type=click.Path(file_okay=False, path_type=Path), required=True,
                  help="Output directory (tokenizer, Hugging Face checkpoints, converted models, lm-training.json).")
    @click.option("--steps", type=int, default=None, help="Optimizer steps of each run (default: the recipe's).")
    @click.option("--recipe", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
                  help="A JSON LmRecipe (model shape, training, data split); flags override it.")
    @click.option("--quick", is_flag=True, help="A tiny recipe that runs in seconds (smoke test).")
    @click.option("--jobs", type=click.IntRange(1, 2), default=None,
                  help="Training processes side by side (default: 2 when the machine has 2 cores).")
    @json_option("Print the report as JSON.")
    def train_lm_cmd(out, steps, recipe, quick, jobs, as_json):
        """Train a small ternary decoder (BitNet b1.58 QAT) and its float twin on the Python standard
        library, convert both, and report held-out perplexity and size side by side."""
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

        from bitnet_edge.sdk.schemas import parse_model
        from bitnet_edge.sdk.train.pipeline import train_lm
        from bitnet_edge.sdk.train.report import QUICK_RECIPE, LmRecipe

        err = Console(stderr=True)
        try:
            data = json.loads(recipe.read_text()) if recipe else (QUICK_RECIPE.model_dump() if quick else {})
        except json.JSONDecodeError as exc:
            raise FormatError(f"{recipe}: not JSON ({exc})", reason="bad-recipe") from None
        if steps is not None:
            data = {**data, "train": {**data.get("train", {}), "steps": steps}}
        rec = parse_model(LmRecipe, data, source=str(recipe) if recipe else "train-lm options")
        with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.fields[info]}"),
                      TimeElapsedColumn(), console=err, disable=as_json) as progress:
            bars = {m: progress.add_task(f"{m:8s}", total=rec.train.steps, info="") for m in ("ternary", "float")}

            def on_step(mode: str, step: int, loss: float) -> None:
                progress.update(bars[mode], completed=step + 1, info=f"loss {loss:.3f}")

            report = train_lm(out, rec, jobs=jobs, on_stage=lambda t: progress.console.log(t), on_step=on_step)
        if as_json:
            click.echo(report.model_dump_json(indent=2))
        else:
            print_report(report)
        if not report.parity.ok:
            sys.exit(EXIT_FAILED)
