"""Model commands of the CLI: convert, run, embed, predict, bench."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click
import numpy as np
from rich.console import Console
from rich.table import Table

from bitnet_edge.sdk.errors import BitnetEdgeError

console = Console(stderr=True)


def _fail(exc: Exception) -> None:
    click.echo(f"error: {exc}", err=True)  # unwrapped: messages carry paths
    sys.exit(2)


def import_source(src: Path, activation: str | None = None):
    """Pick the importer from the source: HF directory, .gguf, .npz, .tflite or .onnx."""
    if src.is_dir():
        from bitnet_edge.sdk.convert.hf import read_hf

        return read_hf(src)
    if src.suffix == ".gguf":
        from bitnet_edge.sdk.convert.gguf import read_gguf

        return read_gguf(src)
    if src.suffix == ".npz":
        from bitnet_edge.sdk.convert.npz import read_npz

        return read_npz(src, activation=activation)
    if src.suffix == ".tflite":
        from bitnet_edge.sdk.convert.tflite import read_tflite

        return read_tflite(src)
    if src.suffix == ".onnx":
        from bitnet_edge.sdk.convert.onnx import read_onnx

        return read_onnx(src)
    from bitnet_edge.sdk.errors import FormatError

    raise FormatError(f"{src}: not a Hugging Face directory, .gguf, .npz, .tflite or .onnx file")


def load_calibration(path: Path | None, imported):
    """--calibration: .npy/.npz samples (mlp), .json token-id lists, or .txt (one text per line)."""
    if path is None:
        return None
    from bitnet_edge.sdk.errors import FormatError

    if path.suffix == ".npy":
        return np.load(path).astype(np.float32)
    if path.suffix == ".npz":
        with np.load(path) as z:
            return z["x" if "x" in z.files else z.files[0]].astype(np.float32)
    if path.suffix == ".json":
        return json.loads(path.read_text())
    if path.suffix == ".txt":
        lines = [ln for ln in path.read_text().splitlines() if ln.strip()]
        if imported.tokenizer_file is None:
            raise FormatError(f"{path}: text calibration needs a model with tokenizer.json")
        from tokenizers import Tokenizer

        tok = Tokenizer.from_file(imported.tokenizer_file)
        ids = [e.ids for e in tok.encode_batch(lines)]
        return ids if imported.config.architecture == "bitnet" else ids
    raise FormatError(f"{path}: calibration must be .npy, .npz, .json or .txt")


def _manifest_summary(md) -> dict:
    man = md.manifest
    sizes = {t.name: md.weights.get(t.name).nbytes for t in man.tensors}
    counts: dict[str, int] = {}
    for p in man.precision.values():
        counts[p] = counts.get(p, 0) + 1
    params = {t.name: int(np.prod(t.shape)) for t in man.tensors if t.name in man.precision}
    lin_bytes = sum(sizes[n] for n in params)
    return {"name": man.name, "architecture": man.architecture, "path": str(md.path),
            "layers_by_precision": counts, "linear_params": sum(params.values()),
            "linear_bytes": lin_bytes, "total_bytes": sum(sizes.values()),
            "bits_per_linear_weight": 8 * lin_bytes / max(1, sum(params.values())),
            "calibration": man.calibration}


def register(main: click.Group) -> None:
    @main.command()
    @click.argument("src", type=click.Path(exists=True, path_type=Path))
    @click.option("-o", "--out", type=click.Path(path_type=Path), required=True, help="Output model directory.")
    @click.option("--precision", default="ternary", show_default=True,
                  type=click.Choice(["ternary", "int8", "f16", "f32", "auto"]))
    @click.option("--head", type=click.Choice(["int8", "f16", "f32"]), default=None,
                  help="Precision of a decoder's LM head (default: int8 with --precision ternary).")
    @click.option("--embeddings", type=click.Choice(["int8", "f16", "f32"]), default=None,
                  help="Precision of a decoder's token embeddings (int8 shares one matrix with a tied int8 head).")
    @click.option("--ternary-format", type=click.Choice(["2bit", "base3"]), default="2bit", show_default=True,
                  help="Layout of ternary linears: 2bit (2 bits/weight) or base3 (1.6 bits/weight, 20% fewer bytes "
                       "per decoded token, same results).")
    @click.option("--calibration", type=click.Path(exists=True, path_type=Path), default=None,
                  help="Calibration data for --precision auto (.npy/.npz samples, .json token ids, .txt texts).")
    @click.option("--budget", type=float, default=0.99, show_default=True, help="Cosine to float that auto keeps.")
    @click.option("--activation", type=click.Choice(["relu", "gelu", "tanh"]), default=None,
                  help="MLP activation when the .npz does not say.")
    @click.option("--json", "as_json", is_flag=True)
    def convert(src, out, precision, head, embeddings, ternary_format, calibration, budget, activation, as_json):
        """Convert a Hugging Face directory, GGUF, .npz, .tflite or .onnx model into a bitnet-edge model directory."""
        from bitnet_edge.sdk.convert.convert import convert as do_convert
        from bitnet_edge.sdk.modeldir import open_model_dir

        try:
            with console.status(f"reading {src}"):
                imported = import_source(src, activation)
            calib = load_calibration(calibration, imported)
            with console.status(f"converting ({precision})"):
                path = do_convert(imported, out, precision=precision, head=head, calibration=calib, budget=budget,
                                  embeddings=embeddings, ternary_format=ternary_format)
            summary = _manifest_summary(open_model_dir(path))
        except BitnetEdgeError as exc:
            _fail(exc)
        if as_json:
            click.echo(json.dumps(summary, indent=2))
            return
        t = Table(title=f"converted {summary['name']} -> {path}", show_header=False)
        for k in ("architecture", "layers_by_precision", "linear_params", "linear_bytes", "total_bytes"):
            t.add_row(k, str(summary[k]))
        t.add_row("bits / linear weight", f"{summary['bits_per_linear_weight']:.2f}")
        if summary["calibration"]:
            t.add_row("calibration", json.dumps(summary["calibration"]))
        Console().print(t)

    @main.command()
    @click.argument("model", type=click.Path(exists=True, path_type=Path))
    @click.option("--prompt", default=None, help="Text prompt (needs the model's tokenizer).")
    @click.option("--tokens", default=None, help="Prompt as comma-separated token ids.")
    @click.option("--max-new-tokens", type=int, default=64, show_default=True)
    @click.option("--temperature", type=float, default=0.0, show_default=True)
    @click.option("--top-k", type=int, default=None)
    @click.option("--top-p", type=float, default=None)
    @click.option("--seed", type=int, default=None)
    @click.option("--json", "as_json", is_flag=True, help="Print the result as JSON instead of streaming.")
    def run(model, prompt, tokens, max_new_tokens, temperature, top_k, top_p, seed, as_json):
        """Generate from a decoder model, streaming tokens as they come."""
        from bitnet_edge.sdk import load_model

        try:
            m = load_model(model)
            if not hasattr(m, "generate"):
                from bitnet_edge.sdk.models.errors import UnsupportedOperation

                raise UnsupportedOperation(m.architecture, "generate")
            ids = _prompt_ids(m, prompt, tokens)
            tok = m.tokenizer
            out: list[int] = []

            def stream(t: int) -> None:
                out.append(t)
                if not as_json:
                    click.echo(tok.decode([t]) if tok else f"{t} ", nl=False)

            m.generate(ids, max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p, seed=seed,
                       on_token=stream)
        except BitnetEdgeError as exc:
            _fail(exc)
        if as_json:
            click.echo(json.dumps({"prompt_ids": list(map(int, ids)), "ids": out,
                                   "text": tok.decode(out) if tok else None}))
        else:
            click.echo()

    @main.command()
    @click.argument("model", type=click.Path(exists=True, path_type=Path))
    @click.argument("texts", nargs=-1, required=True)
    @click.option("--json", "as_json", is_flag=True)
    def embed(model, texts, as_json):
        """Sentence embeddings from an encoder model."""
        from bitnet_edge.sdk import load_model

        try:
            m = load_model(model)
            if not hasattr(m, "embed"):
                from bitnet_edge.sdk.models.errors import UnsupportedOperation

                raise UnsupportedOperation(m.architecture, "embed")
            e = m.embed(list(texts))
        except BitnetEdgeError as exc:
            _fail(exc)
        if as_json:
            click.echo(json.dumps({"dim": int(e.shape[1]), "embeddings": e.tolist()}))
        else:
            t = Table(title=f"embeddings ({e.shape[1]} dims)")
            for col in ("text", "first values", "norm"):
                t.add_column(col)
            for s, v in zip(texts, e):
                t.add_row(s, " ".join(f"{x:+.3f}" for x in v[:6]) + " ...", f"{np.linalg.norm(v):.3f}")
            Console().print(t)

    @main.command()
    @click.argument("model", type=click.Path(exists=True, path_type=Path))
    @click.option("--input", "inp", type=click.Path(exists=True, path_type=Path), required=True,
                  help=".npy (n, features) or .npz with array x")
    @click.option("--json", "as_json", is_flag=True)
    def predict(model, inp, as_json):
        """Batch inference with an MLP classifier."""
        from bitnet_edge.sdk import load_model

        try:
            m = load_model(model)
            if not hasattr(m, "predict"):
                from bitnet_edge.sdk.models.errors import UnsupportedOperation

                raise UnsupportedOperation(m.architecture, "predict")
            x = load_calibration(inp, None) if inp.suffix in (".npy", ".npz") else None
            logits = m.predict(x)
        except BitnetEdgeError as exc:
            _fail(exc)
        names = m.cfg.class_names
        classes = logits.argmax(1).tolist()
        if as_json:
            click.echo(json.dumps({"classes": classes, "labels": [names[c] for c in classes] if names else None,
                                   "logits": logits.tolist()}))
        else:
            for i, c in enumerate(classes):
                click.echo(f"{i}: {names[c] if names else c}")

    @main.command()
    @click.argument("model", type=click.Path(exists=True, path_type=Path))
    @click.option("--threads", type=int, default=None, help="Kernel threads (default: all cores).")
    @click.option("--prompt-tokens", type=int, default=128, show_default=True)
    @click.option("--new-tokens", type=int, default=128, show_default=True)
    @click.option("--json", "as_json", is_flag=True)
    def bench(model, threads, prompt_tokens, new_tokens, as_json):
        """Prefill and decode speed of a decoder model (tokens/s, ms/token, peak RSS, GB/s)."""
        from bitnet_edge.sdk.models.bench import bench_decoder

        try:
            res = bench_decoder(model, threads=threads, prompt_tokens=prompt_tokens, new_tokens=new_tokens)
        except BitnetEdgeError as exc:
            _fail(exc)
        if as_json:
            click.echo(json.dumps(res, indent=2))
            return
        t = Table(title=f"bench {model}", show_header=False)
        for k, v in res.items():
            t.add_row(k, f"{v:,.2f}" if isinstance(v, float) else str(v))
        Console().print(t)


def _prompt_ids(m, prompt, tokens):
    from bitnet_edge.sdk.errors import InputError

    if tokens:
        return [int(t) for t in tokens.split(",")]
    if prompt is None:
        raise InputError("prompt", "give --prompt TEXT or --tokens 1,2,3")
    if m.tokenizer is None:
        raise InputError("prompt", "this model has no tokenizer: use --tokens")
    ids = m.tokenizer.encode(prompt).ids
    if m.cfg.bos_token_id is not None and (not ids or ids[0] != m.cfg.bos_token_id):
        ids = [m.cfg.bos_token_id] + ids
    return ids
