"""Model commands of the CLI: convert, run, embed, predict, bench."""

from __future__ import annotations

import json
from pathlib import Path

import click
from rich.console import Console
from rich.table import Table

from bitnet_edge.sdk.cliutil import json_option

console = Console(stderr=True)


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
    from bitnet_edge.sdk.npfiles import load_npy, load_npz

    if path.suffix in (".npy", ".npz"):
        arrays = {"x": load_npy(path)} if path.suffix == ".npy" else load_npz(path)
        if not arrays:
            raise FormatError(f"{path}: the archive holds no arrays (expected x: samples by features)")
        x = arrays.get("x", next(iter(arrays.values())))
        if x.dtype.kind not in "fiu" or x.ndim < 2:
            raise FormatError(f"{path}: samples must be a numeric array (samples, ...), got {x.dtype} {x.shape}")
        import numpy as np

        return x.astype(np.float32)
    if path.suffix == ".json":
        try:
            ids = json.loads(path.read_text())
        except (ValueError, UnicodeDecodeError) as exc:
            raise FormatError(f"{path}: not JSON ({exc})") from None
        if not (isinstance(ids, list) and all(isinstance(seq, list) and all(type(t) is int and t >= 0 for t in seq)
                                              for seq in ids)):
            raise FormatError(f"{path}: token-id calibration must be a JSON list of lists of token ids")
        return ids
    if path.suffix == ".txt":
        lines = [ln for ln in path.read_text().splitlines() if ln.strip()]
        if not imported.has_tokenizer:
            raise FormatError(f"{path}: text calibration needs a model with tokenizer.json")
        tok = imported.load_tokenizer()
        ids = [e.ids for e in tok.encode_batch(lines)]
        return ids if imported.config.architecture == "bitnet" else ids
    raise FormatError(f"{path}: calibration must be .npy, .npz, .json or .txt")


def _manifest_summary(md) -> dict:
    man = md.manifest
    sizes = {t.name: md.weights.get(t.name).nbytes for t in man.tensors}
    counts: dict[str, int] = {}
    for p in man.precision.values():
        counts[p] = counts.get(p, 0) + 1
    import math

    params = {t.name: int(math.prod(t.shape)) for t in man.tensors if t.name in man.precision}
    lin_bytes = sum(sizes[n] for n in params)
    return {"name": man.name, "architecture": man.architecture, "path": str(md.path),
            "layers_by_precision": counts, "linear_params": sum(params.values()),
            "linear_bytes": lin_bytes, "total_bytes": sum(sizes.values()),
            "bits_per_linear_weight": 8 * lin_bytes / max(1, sum(params.values())),
            "calibration": man.calibration, "chat_template": man.chat_template is not None,
            "quality": man.quality.model_dump() if man.quality else None}


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
    @click.option("--budget", type=float, default=0.99, show_default=True,
                  help="Cosine to float that auto keeps on every output (the minimum over outputs).")
    @click.option("--holdout", type=float, default=0.2, show_default=True,
                  help="Share of the calibration samples auto keeps aside (a fixed-seed split) to check the plan.")
    @click.option("--allow-below-budget", is_flag=True, default=False,
                  help="Write the model even when the held-out check misses the budget (flagged below_budget in "
                       "the manifest, and a warning); without it convert refuses.")
    @click.option("--activation", type=click.Choice(["relu", "gelu", "tanh"]), default=None,
                  help="MLP activation when the .npz does not say.")
    @click.option("--name", default=None,
                  help="Model name (bundles, fleet and device use it): a letter or digit, then up to 63 letters, "
                       "digits, '.', '_', '-'. Default: from the source (HF id, GGUF general.name, file name).")
    @json_option()
    def convert(src, out, precision, head, embeddings, ternary_format, calibration, budget, holdout,
                allow_below_budget, activation, name, as_json):
        """Convert a Hugging Face directory, GGUF, .npz, .tflite or .onnx model into a bitnet-edge model directory."""
        from bitnet_edge.sdk.convert.convert import check_name, convert as do_convert
        from bitnet_edge.sdk.modeldir import open_model_dir

        check_name(name)  # before the (possibly long) import
        with console.status(f"reading {src}"):
            imported = import_source(src, activation)
        calib = load_calibration(calibration, imported)
        with console.status(f"converting ({precision})"):
            path = do_convert(imported, out, precision=precision, head=head, calibration=calib, budget=budget,
                              embeddings=embeddings, ternary_format=ternary_format, name=name, holdout=holdout,
                              allow_below_budget=allow_below_budget,
                              on_warning=lambda line: click.echo(f"warning: {line}", err=True))  # one line
        summary = _manifest_summary(open_model_dir(path))
        summary["notes"] = list(imported.notes)
        if as_json:
            click.echo(json.dumps(summary, indent=2))
            return
        t = Table(title=f"converted {summary['name']} -> {path}", show_header=False)
        for k in ("architecture", "layers_by_precision", "linear_params", "linear_bytes", "total_bytes"):
            t.add_row(k, str(summary[k]))
        t.add_row("bits / linear weight", f"{summary['bits_per_linear_weight']:.2f}")
        if summary["architecture"] == "bitnet":
            t.add_row("chat template", "yes" if summary["chat_template"] else "no")
        for note in summary["notes"]:
            t.add_row("note", note)
        q = summary["quality"]
        if summary["calibration"] and not q:
            t.add_row("calibration", json.dumps(summary["calibration"]))
        if q:
            t.add_row("budget", f"{q['budget']} on every output; calibration {q['calibration_samples']} samples, "
                                f"held out {q['held_out_samples']}")
            for o in q["outputs"]:
                t.add_row(f"cosine {o['name']} ({o['size']})",
                          f"calibration {o['calibration_cosine']:.4f} (worst {o['calibration_worst']:.4f}), "
                          f"held out {o['held_out_cosine']:.4f} (worst {o['held_out_worst']:.4f})")
            t.add_row("held-out check", "BELOW BUDGET" if q["below_budget"] else "meets the budget")
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
    @json_option("Print the result as JSON instead of streaming.")
    def run(model, prompt, tokens, max_new_tokens, temperature, top_k, top_p, seed, as_json):
        """Generate from a decoder model, streaming tokens as they come."""
        from bitnet_edge.sdk import load_model

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
        if as_json:
            click.echo(json.dumps({"prompt_ids": list(map(int, ids)), "ids": out,
                                   "text": tok.decode(out) if tok else None}))
        else:
            click.echo()

    @main.command()
    @click.argument("model", type=click.Path(exists=True, path_type=Path))
    @click.argument("texts", nargs=-1, required=True)
    @json_option()
    def embed(model, texts, as_json):
        """Sentence embeddings from an encoder model."""
        from bitnet_edge.sdk import load_model

        m = load_model(model)
        if not hasattr(m, "embed"):
            from bitnet_edge.sdk.models.errors import UnsupportedOperation

            raise UnsupportedOperation(m.architecture, "embed")
        e = m.embed(list(texts))
        if as_json:
            click.echo(json.dumps({"dim": int(e.shape[1]), "embeddings": e.tolist()}))
        else:
            t = Table(title=f"embeddings ({e.shape[1]} dims)")
            for col in ("text", "first values", "norm"):
                t.add_column(col)
            for s, v in zip(texts, e):
                t.add_row(s, " ".join(f"{x:+.3f}" for x in v[:6]) + " ...", f"{float((v * v).sum()) ** 0.5:.3f}")
            Console().print(t)

    @main.command()
    @click.argument("model", type=click.Path(exists=True, path_type=Path))
    @click.option("--input", "inp", type=click.Path(exists=True, path_type=Path), required=True,
                  help=".npy (n, features) or .npz with array x")
    @json_option()
    def predict(model, inp, as_json):
        """Batch inference with an MLP classifier."""
        from bitnet_edge.sdk import load_model

        m = load_model(model)
        if not hasattr(m, "predict"):
            from bitnet_edge.sdk.models.errors import UnsupportedOperation

            raise UnsupportedOperation(m.architecture, "predict")
        if inp.suffix not in (".npy", ".npz"):
            from bitnet_edge.sdk.errors import InputError

            raise InputError("--input", f"{inp}: give a .npy array or a .npz archive with array x")
        logits = m.predict(load_calibration(inp, None))
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
    @json_option()
    def bench(model, threads, prompt_tokens, new_tokens, as_json):
        """Prefill and decode speed of a decoder model (tokens/s, ms/token, peak RSS, GB/s)."""
        from bitnet_edge.sdk.models.bench import bench_decoder

        res = bench_decoder(model, threads=threads, prompt_tokens=prompt_tokens, new_tokens=new_tokens)
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
        parts = [t.strip() for t in tokens.split(",")]
        bad = [t for t in parts if not (t.isascii() and t.isdigit())]
        if bad:
            raise InputError("--tokens", f"{bad[0]!r} is not a token id: give comma-separated non-negative "
                                         "integers, e.g. 1,15043,3186")
        return [int(t) for t in parts]
    if prompt is None:
        raise InputError("prompt", "give --prompt TEXT or --tokens 1,2,3")
    if m.tokenizer is None:
        raise InputError("prompt", "this model has no tokenizer: use --tokens")
    ids = m.tokenizer.encode(prompt).ids
    if m.cfg.bos_token_id is not None and (not ids or ids[0] != m.cfg.bos_token_id):
        ids = [m.cfg.bos_token_id] + ids
    return ids
