"""One error root and one CLI failure path (sdk.errors, sdk.cliutil), and the builder-side bad inputs of
issue 18: each gets one line ``error: <detail> [<reason>]`` (exit 2, no traceback) naming what was wrong."""

from __future__ import annotations

import ast
import json

import click
import numpy as np
import pytest
from click.testing import CliRunner

from bitnet_edge.cli import main
from bitnet_edge.sdk import cliutil
from bitnet_edge.sdk.errors import BitnetEdgeError, FormatError, InputError
from tests.support.cli_errors import one_line_error
from tests.support.hf_fixtures import save_bitnet_float
from tests.support.tools import REPO


# ---- the root and the failure path --------------------------------------------------------------

def test_every_role_error_is_a_bitnet_edge_error_with_reason_and_detail():
    from bitnet_edge.agent.errors import AgentError, InstallRejected
    from bitnet_edge.fleet.errors import FleetError, PublishError
    from bitnet_edge.packagers.errors import PackagerError, UnknownTarget
    from bitnet_edge.sdk.bundle.errors import BundleError, KeyFileError

    for root in (AgentError, FleetError, PackagerError, BundleError, KeyFileError):
        assert issubclass(root, BitnetEdgeError)
    samples = [InstallRejected("downgrade", "release 1 is below 2", "policy"), PublishError("too-large", "big"),
               UnknownTarget("zx81", ["linux-x86_64"]), KeyFileError("/k.pub", "missing"),
               InputError("x", "must be int8"), FormatError("m.npz: not a .npz archive")]
    for e in samples:
        assert e.reason and e.detail and str(e) == e.detail and "\n" not in e.detail
        d = e.to_dict()
        assert (d["type"], d["reason"], d["detail"]) == (type(e).__name__, e.reason, e.detail)
    assert UnknownTarget("zx81", []).to_dict()["target"] == "zx81"  # a class's own fields come along
    assert isinstance(UnknownTarget("zx81", []), KeyError)  # and the builtin it also is


@click.group(cls=cliutil.CliGroup)
def demo():
    pass


@demo.command()
@cliutil.json_option()
@click.option("--kind", default="typed")
def fail(as_json, kind):
    if kind == "typed":
        raise InputError("--size", "must be positive")
    if kind == "os":
        open("/nonexistent/dir/file")
    raise RuntimeError("a bug")


def test_one_failure_path_human_json_usage_and_bugs():
    r = CliRunner()
    line = one_line_error(r.invoke(demo, ["fail"]), "--size: must be positive", reason="bad-input")
    assert line == "error: --size: must be positive [bad-input]"
    res = r.invoke(demo, ["fail", "--json"])
    assert res.exit_code == 2 and json.loads(res.stdout) == {
        "ok": False, "error": {"type": "InputError", "reason": "bad-input", "detail": "--size: must be positive",
                               "argument": "--size"}}
    one_line_error(r.invoke(demo, ["fail", "--kind", "os"]), "/nonexistent/dir/file", reason="no-such-file")
    res = r.invoke(demo, ["fail", "--bogus"])  # a usage error: same exit status, same prefix
    assert res.exit_code == 2 and res.stderr.strip().splitlines()[-1] == "error: No such option '--bogus'. [usage]"
    res = r.invoke(demo, ["fail", "--bogus", "--json"])
    assert res.exit_code == 2 and json.loads(res.stdout)["error"]["reason"] == "usage"
    res = r.invoke(demo, ["fail", "--kind", "bug"])  # a bug is not a user error: it propagates (a traceback)
    assert isinstance(res.exception, RuntimeError) and res.exit_code == 1


def test_every_command_uses_the_one_failure_path():
    """The root is the CliGroup; every ``--json`` is cliutil.json_option; no command group keeps a
    failure printer of its own."""
    assert isinstance(main, cliutil.CliGroup)

    def walk(cmd, path):
        yield path, cmd
        for name, sub in getattr(cmd, "commands", {}).items():
            yield from walk(sub, f"{path} {name}")

    bad = [f"{path}: --json" for path, cmd in walk(main, "bitnet-edge") for p in cmd.params
           if "--json" in getattr(p, "opts", ()) and p.callback is not cliutil._remember_json]
    assert not bad, bad
    for rel in ("sdk/_root/cli.py", "sdk/cli_models.py", "packagers/cli.py", "agent/cli.py", "fleet/cli.py",
                "fleet/security_cli.py", "fleet/tuf_cli.py"):
        tree = ast.parse((REPO / rel).read_text())
        fns = {n.name for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)}
        assert not fns & {"_fail", "_error_dict", "_handled"}, rel
        exits = [n.lineno for n in ast.walk(tree) if isinstance(n, ast.Call) and getattr(n.func, "attr", "") == "exit"
                 and n.args and isinstance(n.args[0], ast.Constant) and n.args[0].value == 2]
        assert not exits, f"{rel}:{exits}: exit 2 is the failure path's"


# ---- bad inputs of the model commands --------------------------------------------------------------

@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    return save_bitnet_float(tmp_path_factory.mktemp("bad") / "hf")


@pytest.fixture(scope="module")
def decoder_dir(hf_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("bad") / "model"
    res = CliRunner().invoke(main, ["convert", str(hf_dir), "-o", str(out), "--json"])
    assert res.exit_code == 0, res.output
    return out


def test_run_with_tokens_that_are_not_ids(decoder_dir):
    res = CliRunner().invoke(main, ["run", str(decoder_dir), "--tokens", "a,b"])
    one_line_error(res, "--tokens", "'a' is not a token id", reason="bad-input")
    res = CliRunner().invoke(main, ["run", str(decoder_dir), "--tokens", "1,-3"])
    one_line_error(res, "'-3' is not a token id")


def test_a_garbage_tokenizer_is_refused_at_convert_time(hf_dir, tmp_path):
    import shutil

    src = tmp_path / "hf"
    shutil.copytree(hf_dir, src)
    (src / "tokenizer.json").write_text('{"version": "1.0", "model": {"type": "garbage"')
    res = CliRunner().invoke(main, ["convert", str(src), "-o", str(tmp_path / "out")])
    one_line_error(res, "tokenizer.json", "not a tokenizer.json", reason="bad-tokenizer")
    assert not (tmp_path / "out").exists()  # nothing half-written for run or package to trip on


def test_a_model_directory_with_a_broken_tokenizer_fails_run_and_package_in_one_line(decoder_dir, tmp_path):
    import shutil

    m = tmp_path / "model"
    shutil.copytree(decoder_dir, m)
    man = json.loads((m / "manifest.json").read_text())
    man["tokenizer"] = "tokenizer.json"
    (m / "manifest.json").write_text(json.dumps(man))
    (m / "tokenizer.json").write_text("not json")
    one_line_error(CliRunner().invoke(main, ["run", str(m), "--prompt", "hi"]), "tokenizer.json",
                   reason="bad-tokenizer")
    from bitnet_edge.packagers.keys import generate_keypair

    kp = generate_keypair(tmp_path / "keys", "k")
    res = CliRunner().invoke(main, ["package", str(m), "--device", "x86-64-v3", "--version", "1.0.0", "--no-golden",
                                    "--key", str(kp.private_path), "-o", str(tmp_path / "dist")])
    one_line_error(res, "tokenizer.json", reason="bad-tokenizer")


def test_fake_npz_and_npy_files_say_what_they_are_not(tmp_path, rng):
    fake = tmp_path / "model.npz"
    fake.write_bytes(b"this is not a zip archive at all\n")
    line = one_line_error(CliRunner().invoke(main, ["convert", str(fake), "-o", str(tmp_path / "o")]),
                          "model.npz", "not a .npz archive", reason="not-npz")
    assert "pickle" not in line  # numpy's own answer suggests loading it with pickle
    np.savez(tmp_path / "obj.npz", **{"layers.0.weight": np.array([{"a": 1}], dtype=object)})
    line = one_line_error(CliRunner().invoke(main, ["convert", str(tmp_path / "obj.npz"), "-o", str(tmp_path / "o")]),
                          "obj.npz", "layers.0.weight", reason="pickled")
    assert "allow_pickle" not in line
    sizes = (4, 3)
    np.savez(tmp_path / "m.npz", **{"layers.0.weight": rng.standard_normal(sizes[::-1]).astype(np.float32)})
    res = CliRunner().invoke(main, ["convert", str(tmp_path / "m.npz"), "-o", str(tmp_path / "m")])
    assert res.exit_code == 0, res.output
    (tmp_path / "x.npy").write_text("1,2,3,4\n")
    one_line_error(CliRunner().invoke(main, ["predict", str(tmp_path / "m"), "--input", str(tmp_path / "x.npy")]),
                   "x.npy", "not a .npy file", reason="not-npy")


def test_package_refuses_a_version_that_is_not_one_before_any_work(decoder_dir, tmp_path):
    from bitnet_edge.packagers.keys import generate_keypair

    kp = generate_keypair(tmp_path / "keys", "k")
    for bad in ("banana", "v1.0", "1.0.0.0.0", "1..2", "1.0 beta"):
        res = CliRunner().invoke(main, ["package", str(decoder_dir), "--device", "x86-64-v3", "--version", bad,
                                        "--key", str(kp.private_path), "-o", str(tmp_path / "dist")])
        one_line_error(res, repr(bad), "is not a release version", reason="bad-version")
        assert "0/None" not in res.output and not (tmp_path / "dist").exists()


def test_the_manifest_model_holds_the_version_rule():
    import re

    from bitnet_edge.sdk.bundle.manifest import RELEASE_VERSION, BundleManifest

    assert BundleManifest.model_fields["version"].metadata  # the pattern lives in the model (and its schema)
    for good in ("1", "1.2.0", "2.0.0-rc.1", "1.4.2+jetson", "2024.5.1", "1.0.0-plain"):
        assert re.fullmatch(RELEASE_VERSION, good), good
    for bad in ("banana", "v1", "1.", ".1", "1.0-", "1.0+", "1.2.3.4.5", "1.0.0-a..b", ""):
        assert not re.fullmatch(RELEASE_VERSION, bad), bad


def test_an_unknown_device_shows_no_empty_progress_bar(decoder_dir, tmp_path):
    from bitnet_edge.packagers.keys import generate_keypair

    kp = generate_keypair(tmp_path / "keys", "k")
    res = CliRunner().invoke(main, ["package", str(decoder_dir), "--device", "pi-9", "--version", "1.0.0",
                                    "--key", str(kp.private_path), "-o", str(tmp_path / "dist")])
    one_line_error(res, "no device profile 'pi-9'", reason="unknown-device")
    assert "None" not in res.output and "packaging" not in res.output
