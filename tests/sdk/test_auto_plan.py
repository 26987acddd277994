"""``--precision auto``: the budget holds for every output, a held-out split checks the plan, and
both figures are recorded (issue 18); ``convert --name``."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from bitnet_edge.cli import main
from bitnet_edge.sdk import load_model
from bitnet_edge.sdk.convert.convert import convert
from bitnet_edge.sdk.convert.graph_build import GraphBuilder, float_weight
from bitnet_edge.sdk.convert.plan import BelowBudget, split_calibration
from bitnet_edge.sdk.errors import InputError
from bitnet_edge.sdk.manifest import MODEL_NAME, default_model_name, is_model_name
from bitnet_edge.sdk.wire import protocol


def _rows_cos(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = a.reshape(len(a), -1).astype(np.float64), b.reshape(len(b), -1).astype(np.float64)
    return np.sum(a * b, 1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def _detector(seed: int = 3):
    """A trunk and two heads, as a face detector: 896 large box values and 4 small class scores.
    The box head dominates any cosine of the two outputs concatenated."""
    rng = np.random.default_rng(seed)
    b = GraphBuilder("two-heads")
    x = b.add_input("x", [1, 24])
    # trunk and box head hold ternary-valued weights (ternary keeps them); the score head does not
    h = b.node("fully_connected", "trunk", [x], weight=float_weight(rng.integers(-1, 2, (32, 24)) * 0.2),
               bias=np.zeros(32, np.float32), activation="relu")
    boxes = b.node("fully_connected", "boxes", [h], output="boxes",
                   weight=float_weight(rng.integers(-1, 2, (896, 32)) * 50.0))
    scores = b.node("fully_connected", "scores", [h], output="scores",
                    weight=float_weight(rng.standard_normal((4, 32)) * 0.05))
    b.add_output(boxes, [1, 896])
    b.add_output(scores, [1, 4])
    return b.finish("two-heads", "synthetic", "tests/sdk/test_auto_plan.py"), rng.standard_normal((40, 24))


def test_every_output_keeps_the_budget_not_their_concatenation(tmp_path):
    m, calib = _detector()
    calib = calib.astype(np.float32)
    out = convert(m, tmp_path / "auto", precision="auto", calibration=calib, budget=0.99)
    model = load_model(out)
    man = model.manifest
    small = next(n.weight for n in man.config.nodes if n.name == "scores")
    assert man.precision[small] in ("int8", "f16")  # the small head's path stays above ternary
    assert {p for w, p in man.precision.items() if w != small} == {"ternary"}
    q = man.quality
    assert q is not None and q.budget == 0.99 and not q.below_budget
    assert (q.calibration_samples, q.held_out_samples) == (32, 8)
    assert {o.name: o.size for o in q.outputs} == {"boxes": 896, "scores": 4}
    assert all(o.calibration_cosine >= 0.99 for o in q.outputs)
    assert q.calibration_min_cosine == min(o.calibration_cosine for o in q.outputs)
    assert q.held_out_min_cosine == min(o.held_out_cosine for o in q.outputs)

    # the recorded figures are what the model does, on each split, against the float model
    ref = load_model(convert(m, tmp_path / "f32", precision="f32"))
    fit, held = split_calibration(calib)
    for part, field in ((fit, "calibration"), (held, "held_out")):
        got, want = model.run([part]), ref.run([part])
        for o in q.outputs:
            c = _rows_cos(got[o.name], want[o.name])
            assert getattr(o, f"{field}_cosine") == pytest.approx(c.mean(), abs=1e-6)
            assert getattr(o, f"{field}_worst") == pytest.approx(c.min(), abs=1e-6)

    # what the old concatenated cosine would have accepted: the small head ternary passes on the
    # concatenation while the small output itself falls far below the budget
    alt = load_model(convert(m, tmp_path / "alt", precision={**man.precision, small: "ternary"}))
    got, want = alt.run([fit]), ref.run([fit])
    concat = _rows_cos(np.concatenate([got["boxes"], got["scores"]], 1),
                       np.concatenate([want["boxes"], want["scores"]], 1)).mean()
    assert concat >= 0.99 and _rows_cos(got["scores"], want["scores"]).mean() < 0.99


def test_the_split_is_deterministic_and_disjoint():
    x = np.arange(50, dtype=np.float32).reshape(25, 2)
    fit, held = split_calibration(x)
    fit2, held2 = split_calibration(x.copy())
    np.testing.assert_array_equal(fit, fit2)
    np.testing.assert_array_equal(held, held2)
    assert len(held) == 5 and len(fit) == 20
    assert sorted(map(tuple, np.concatenate([fit, held]).tolist())) == sorted(map(tuple, x.tolist()))
    seqs = [[i, i + 1] for i in range(7)]  # token-id sequences split the same way
    f, h = split_calibration(seqs)
    assert len(h) == 1 and sorted(f + h) == seqs
    with pytest.raises(InputError, match="at least 2 calibration samples"):
        split_calibration(x[:1])
    with pytest.raises(InputError, match="holdout"):
        split_calibration(x, holdout=1.0)


def _shifted_mlp(path):
    """A ternary-friendly MLP on the features the calibration part uses; features 16..31 carry
    tiny weights that ternary rounds to zero.  Returns (npz path, calibration whose held-out
    samples use only features 16..31)."""
    rng = np.random.default_rng(11)
    w0 = np.zeros((16, 32), np.float32)
    w0[:, :16] = rng.integers(-1, 2, (16, 16)) * 0.5
    w0[:, 16:] = rng.standard_normal((16, 16)) * 0.01
    w1 = (rng.integers(-1, 2, (4, 16)) * 0.5).astype(np.float32)
    np.savez(path, **{"layers.0.weight": w0, "layers.0.bias": np.zeros(16, np.float32),
                      "layers.1.weight": w1, "layers.1.bias": np.zeros(4, np.float32)})
    n = 20
    calib = np.zeros((n, 32), np.float32)
    calib[:, :16] = rng.standard_normal((n, 16))
    _, held_idx = split_calibration(np.arange(n))
    calib[held_idx] = 0
    calib[held_idx, 16:] = rng.standard_normal((len(held_idx), 16))
    return path, calib


def test_a_missed_held_out_check_refuses_or_is_flagged(tmp_path):
    from bitnet_edge.sdk.convert.npz import read_npz

    path, calib = _shifted_mlp(tmp_path / "m.npz")
    with pytest.raises(BelowBudget) as exc:
        convert(read_npz(path), tmp_path / "refused", precision="auto", calibration=calib, budget=0.99)
    assert exc.value.reason == "below-budget" and exc.value.output == "logits" and "\n" not in exc.value.detail
    assert exc.value.held_out_cosine < 0.99 and not (tmp_path / "refused").exists()
    warnings = []
    out = convert(read_npz(path), tmp_path / "kept", precision="auto", calibration=calib, budget=0.99,
                  allow_below_budget=True, on_warning=warnings.append)
    q = load_model(out).manifest.quality
    assert q.below_budget and q.calibration_min_cosine >= 0.99 and q.held_out_min_cosine < 0.99
    assert len(warnings) == 1 and "below the budget 0.99" in warnings[0]


def test_cli_refuses_below_budget_in_one_line_and_reports_both_figures(tmp_path):
    path, calib = _shifted_mlp(tmp_path / "m.npz")
    np.save(tmp_path / "c.npy", calib)
    args = ["convert", str(path), "-o", str(tmp_path / "m"), "--precision", "auto", "--calibration",
            str(tmp_path / "c.npy")]
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 2 and res.output.count("\n") == 1, res.output
    assert res.output.startswith("error: ") and "[below-budget]" in res.output
    res = CliRunner().invoke(main, args + ["--allow-below-budget", "--json"])
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout)
    q = summary["quality"]
    assert q["below_budget"] and q["budget"] == 0.99 and q["outputs"][0]["held_out_cosine"] < 0.99
    assert summary["calibration"]["held_out_cosine"] == q["held_out_min_cosine"]
    (warning,) = [ln for ln in res.stderr.splitlines() if ln.startswith("warning:")]
    assert "below the budget 0.99" in warning and "written with below_budget: true" in warning
    res = CliRunner().invoke(main, args[:3] + [str(tmp_path / "t"), *args[4:], "--allow-below-budget"])
    assert res.exit_code == 0 and "held-out check" in res.stdout and "BELOW BUDGET" in res.stdout


# ---- --name ------------------------------------------------------------------------------------

def test_convert_name_sets_the_manifest_name(tmp_path):
    path, _ = _shifted_mlp(tmp_path / "some model.npz")
    res = CliRunner().invoke(main, ["convert", str(path), "-o", str(tmp_path / "a"), "--name", "face-det_2.1",
                                    "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["name"] == "face-det_2.1"
    assert load_model(tmp_path / "a").manifest.name == "face-det_2.1"
    res = CliRunner().invoke(main, ["convert", str(path), "-o", str(tmp_path / "b"), "--json"])
    assert json.loads(res.stdout)["name"] == "some-model"  # derived from the file, made valid


@pytest.mark.parametrize("bad", ["bad name", "-lead", "a/b", "x" * 65, "", "ok\n", "..", "é"])
def test_a_bad_name_is_a_one_line_typed_error(tmp_path, bad):
    path, _ = _shifted_mlp(tmp_path / "m.npz")
    res = CliRunner().invoke(main, ["convert", str(path), "-o", str(tmp_path / "a"), "--name", bad])
    assert res.exit_code == 2 and res.output.count("\n") == 1, res.output
    assert res.output.startswith("error: --name: ") and "[bad-input]" in res.output
    assert not (tmp_path / "a").exists()
    res = CliRunner().invoke(main, ["convert", str(path), "-o", str(tmp_path / "a"), "--name", bad, "--json"])
    err = json.loads(res.stdout)["error"]
    assert err["type"] == "InputError" and err["argument"] == "--name"


def test_default_names_always_match_the_wire_rule():
    assert protocol.MODEL_NAME is MODEL_NAME
    for raw in ["microsoft/bitnet-b1.58-2B-4T", "BitNet b1.58 2B4T", "", "...", "_x", "a" * 200, "/tmp/dir/",
                "模型", "C:\\models\\face.tflite", "name\n"]:
        name = default_model_name(raw)
        assert is_model_name(name), (raw, name)
    assert default_model_name("microsoft/bitnet-b1.58-2B-4T") == "bitnet-b1.58-2B-4T"
    assert default_model_name("BitNet b1.58 2B4T") == "BitNet-b1.58-2B4T"
    from pydantic import ValidationError

    from bitnet_edge.sdk.manifest import ModelManifest, MlpConfig, SourceInfo

    with pytest.raises(ValidationError):
        ModelManifest(name="a/b", config=MlpConfig(layer_sizes=[2, 2], activation="relu"), precision={},
                      tensors=[], source=SourceInfo(kind="synthetic", path="-"))
