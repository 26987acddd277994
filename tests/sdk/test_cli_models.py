"""The model commands end to end: convert, run, embed, predict, bench."""

import json

import numpy as np
import pytest
from click.testing import CliRunner

from tests.support.hf_fixtures import save_bitnet_float
from bitnet_edge.cli import main


def _invoke(*args):
    res = CliRunner().invoke(main, [str(a) for a in args])
    assert res.exit_code == 0, res.output
    return res.output


@pytest.fixture(scope="module")
def decoder_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    src = save_bitnet_float(root / "hf")
    out = json.loads(_invoke("convert", src, "-o", root / "model", "--json"))
    assert out["architecture"] == "bitnet" and out["layers_by_precision"] == {"ternary": 14, "int8": 1}
    return root / "model"


def test_run_streams_and_json(decoder_dir):
    res = json.loads(_invoke("run", decoder_dir, "--tokens", "1,5,9", "--max-new-tokens", "6", "--json"))
    assert res["prompt_ids"] == [1, 5, 9] and 1 <= len(res["ids"]) <= 6
    text = _invoke("run", decoder_dir, "--tokens", "1,5,9", "--max-new-tokens", "6")
    assert text.split() == [str(i) for i in res["ids"]]


def test_bench_reports_the_named_fields(decoder_dir):
    res = json.loads(_invoke("bench", decoder_dir, "--prompt-tokens", "16", "--new-tokens", "8", "--threads", "1",
                             "--json"))
    for key in ("prefill_tok_s", "decode_tok_s", "ms_per_token", "peak_rss_mb", "effective_gb_s"):
        assert res[key] > 0
    assert res["threads"] == 1


def test_errors_are_reported_not_raised(decoder_dir, tmp_path):
    res = CliRunner().invoke(main, ["run", str(decoder_dir), "--prompt", "hello"])
    assert res.exit_code == 2 and "no tokenizer" in res.output
    res = CliRunner().invoke(main, ["embed", str(decoder_dir), "hi"])
    assert res.exit_code == 2 and "no embed()" in res.output
    (tmp_path / "x.bin").write_bytes(b"\0")
    res = CliRunner().invoke(main, ["convert", str(tmp_path / "x.bin"), "-o", str(tmp_path / "o")])
    assert res.exit_code == 2 and "not a Hugging Face directory" in res.output


def test_mlp_predict_and_auto(tmp_path, rng):
    sizes = (16, 32, 4)
    arrays = {}
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        arrays[f"layers.{i}.weight"] = rng.standard_normal((b, a)).astype(np.float32)
        arrays[f"layers.{i}.bias"] = np.zeros(b, np.float32)
    arrays["class_names"] = np.array(["ok", "warn", "fault", "off"])
    np.savez(tmp_path / "m.npz", **arrays)
    x = rng.standard_normal((5, 16)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    out = json.loads(_invoke("convert", tmp_path / "m.npz", "-o", tmp_path / "m", "--precision", "auto",
                             "--calibration", tmp_path / "x.npy", "--json"))
    assert out["calibration"]["cosine"] >= 0.99
    res = json.loads(_invoke("predict", tmp_path / "m", "--input", tmp_path / "x.npy", "--json"))
    assert len(res["classes"]) == 5 and set(res["labels"]) <= {"ok", "warn", "fault", "off"}
