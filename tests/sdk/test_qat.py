"""QAT: what training measures with fake ternary quantization is what the deployed model scores."""

import numpy as np

from bitnet_edge.sdk import load_model, qat
from bitnet_edge.sdk.convert.convert import convert
from bitnet_edge.sdk.convert.npz import read_npz


def _blobs(rng, n=600, k=24, classes=4):
    centers = rng.standard_normal((classes, k)) * 3
    y = rng.integers(0, classes, n)
    return (centers[y] + rng.standard_normal((n, k))).astype(np.float32), y


def test_qat_model_deploys_with_the_accuracy_training_measured(tmp_path, rng):
    x, y = _blobs(rng)
    p = qat.train_mlp(x[:400], y[:400], (32,), ternary=True, epochs=15, x_val=x[400:], y_val=y[400:])
    assert len(p.history) == 15
    train_time_acc = qat.accuracy(p, x[400:], y[400:], ternary=True)
    assert train_time_acc > 0.9
    qat.save_npz(p, tmp_path / "m.npz", class_names=["a", "b", "c", "d"])
    m = load_model(convert(read_npz(tmp_path / "m.npz"), tmp_path / "model", precision="ternary"))
    deployed = m.predict(x[400:])
    assert (deployed.argmax(1) == y[400:]).mean() == train_time_acc
    np.testing.assert_allclose(deployed, qat.predict(p, x[400:], ternary=True), rtol=1e-4, atol=1e-4)
    assert m.cfg.class_names == ["a", "b", "c", "d"]
