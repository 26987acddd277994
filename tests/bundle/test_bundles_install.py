"""Installing bundles: the model directory comes back bit for bit, the golden vectors pass on the
installed model, and the aarch64 library taken out of a bundle (built by zig, the default
toolchain) runs the kernel test vectors under qemu-aarch64 (cortex-a72: NEON, cortex-a76: NEON +
dotprod) bit for bit."""

from __future__ import annotations


import numpy as np
import pytest
import tests.native.test_aarch64_qemu as qv
from tests.support import qemu as Q
from tests.support.bundle_models import LIB_TARGETS, make_mlp_dir, prebuilt, require_toolchain
from tests.support.kernel_vectors import QEMU_TIMEOUT, check_run
from tests.support.tools import require_tool

from bitnet_edge.packagers.builder import PackageOptions, package_model
from bitnet_edge.sdk.bundle.errors import InstallError, TargetMismatch
from bitnet_edge.sdk.bundle.golden import check_outputs, read_golden, run_model
from bitnet_edge.sdk.bundle.install import ENVELOPE_FILE, install_bundle
from bitnet_edge.sdk.native.targets import library_host_target
from bitnet_edge.packagers.keys import generate_keypair, load_private_key
from bitnet_edge.sdk.bundle.signing import load_public_key
from bitnet_edge.sdk.native.targets import binary_kind
from bitnet_edge.sdk.bundle.verify import verify_bundle
from bitnet_edge.sdk import load_model

ALL_DEVICES = ["x86-64-v4", "raspberry-pi-4", "apple-m", "jetson-orin-nano"]


@pytest.fixture(scope="module")
def bundles(tmp_path_factory):
    """One model packaged for all four target families."""
    for t in LIB_TARGETS:
        require_toolchain(t)
    require_tool("nvcc", "nvidia-cuda-toolkit")  # the jetson bundle carries the CUDA fatbin
    root = tmp_path_factory.mktemp("install")
    kp = generate_keypair(root / "keys")
    key, pub = load_private_key(kp.private_path), load_public_key(kp.public_path)
    model = make_mlp_dir(root / "mlp")
    results = package_model(model, ALL_DEVICES, "1.0.0", [key], root / "dist",
                            options=PackageOptions(libraries=prebuilt(["linux-x86_64", "linux-aarch64",
                                                                       "macos-arm64"])))  # zig builds
    return dict(root=root, pub=pub, model=model, by_target={r.target: r for r in results})


def test_one_bundle_per_target_family(bundles):
    bt = bundles["by_target"]
    assert set(bt) == {"linux-x86_64", "linux-aarch64", "macos-arm64", "jetson"}
    expect = {"linux-x86_64": "elf/x86-64", "linux-aarch64": "elf/aarch64", "macos-arm64": "mach-o/arm64",
              "jetson": "elf/aarch64"}
    for target, r in bt.items():
        vb = verify_bundle(r.path, [bundles["pub"]])
        lib = vb.manifest.libraries[0]
        assert lib.binary == expect[target]
        assert [d.target for d in vb.manifest.devices] == [target]
    jet = bt["jetson"].manifest
    assert jet.cuda is not None and jet.cuda.included and jet.cuda.archs == ["sm_87", "sm_90", "sm_110"]
    assert jet.cuda.ptx and jet.cuda.ptx_arch == "compute_80" and jet.cuda.toolchain.startswith("nvcc")
    assert jet.section(jet.cuda.section).kind == "cuda-fatbin" and jet.cuda.size > 0
    assert all(b.manifest.cuda is None for t, b in bt.items() if t != "jetson")
    assert jet.libraries[0].target == "linux-aarch64"
    assert jet.libraries[0].sha256 == bt["linux-aarch64"].manifest.libraries[0].sha256
    mac = bt["macos-arm64"].manifest.libraries[0]
    assert mac.file == "libbitnet_edge.dylib" and mac.requires == ["neon", "dotprod"]
    for r in bt.values():  # every CPU library came from zig, recorded with its version and -target
        tc = r.manifest.build.toolchain
        assert tc.name == "zig" and tc.version and tc.target.startswith(("x86_64-linux-gnu", "aarch64-"))


def test_install_gives_back_the_model_and_the_golden_check_passes(bundles, tmp_path):
    host = library_host_target()
    if host not in bundles["by_target"]:
        pytest.skip(f"no bundle for this host ({host})")
    inst = install_bundle(bundles["by_target"][host].path, tmp_path / "m", [bundles["pub"]])
    for f in ("manifest.json", "weights.safetensors"):
        assert (inst.path / f).read_bytes() == (bundles["model"] / f).read_bytes()
    assert binary_kind(inst.library.read_bytes()[:64])[0] == "elf"
    assert (inst.path / ENVELOPE_FILE).is_file()
    g = inst.manifest.golden
    arrays = read_golden(g, inst.golden.read_bytes())
    model = load_model(inst.path)
    out = run_model(model, g.method, [arrays["input"]])
    check = check_outputs(out, arrays["output"], g.tolerance)
    assert check.ok and check.max_abs_error == 0.0, check  # same host, bit-exact kernels
    original = load_model(bundles["model"]).predict(arrays["input"])
    assert np.array_equal(out, original)
    # a garbage result fails the health check
    assert not check_outputs(out[::-1], arrays["output"], g.tolerance).ok
    with pytest.raises(InstallError) as e:
        install_bundle(bundles["by_target"][host].path, tmp_path / "m", [bundles["pub"]])
    assert e.value.reason == "dest-exists"
    install_bundle(bundles["by_target"][host].path, tmp_path / "m", [bundles["pub"]], overwrite=True)


def test_install_refuses_another_target(bundles, tmp_path):
    other = "linux-aarch64" if library_host_target() != "linux-aarch64" else "linux-x86_64"
    with pytest.raises(TargetMismatch) as e:
        install_bundle(bundles["by_target"][other].path, tmp_path / "x", [bundles["pub"]])
    assert e.value.bundle_target == other and e.value.host_target == library_host_target()
    assert not (tmp_path / "x").exists()


def test_tokenizer_travels_and_an_install_is_a_delta_base(bundles, tmp_path):
    from bitnet_edge.sdk.bundle.install import base_from_installed

    tok = tmp_path / "tok.json"
    from tokenizers import Tokenizer, models

    Tokenizer(models.WordLevel({"[UNK]": 0, "hello": 1}, unk_token="[UNK]")).save(str(tok))
    model = make_mlp_dir(tmp_path / "m", tokenizer=tok)
    key = load_private_key(bundles["root"] / "keys" / "signing.key")
    (r,) = package_model(model, ["raspberry-pi-5"], "1.0.0", [key], tmp_path / "d",
                         options=PackageOptions(libraries=prebuilt(["linux-aarch64"]), golden=False))
    assert [s.name for s in r.manifest.sections] == ["lib.linux-aarch64", "tokenizer", "weights.dense",
                                                     "weights.ternary"]
    inst = install_bundle(r.path, tmp_path / "i", [bundles["pub"]], check_host=False)
    assert (inst.path / "tokenizer.json").read_bytes() == tok.read_bytes() and inst.golden is None
    base = base_from_installed(inst.path, [bundles["pub"]])
    assert base.contents["tokenizer"] == tok.read_bytes()


@pytest.fixture(scope="module")
def harness_from_bundle(bundles, tmp_path_factory):
    """native/tests/harness.c linked dynamically against the library installed from the bundle."""
    arch = Q.ARCHES["linux-aarch64"]
    Q.require_arch(arch)
    inst = install_bundle(bundles["by_target"]["linux-aarch64"].path, tmp_path_factory.mktemp("arm") / "m",
                          [bundles["pub"]], check_host=False)
    assert inst.manifest.build.toolchain.name == "zig"
    return Q.build_linked(arch, "harness.c", inst.library.parent.parent, library=inst.library)


@pytest.mark.toolchain
@pytest.mark.parametrize("cpu,best,backends", qv.CPUS, ids=[c[0] for c in qv.CPUS])
def test_bundled_aarch64_library_is_bit_exact_under_qemu(harness_from_bundle, kernel_vectors, tmp_path, cpu, best, backends):
    arch = Q.ARCHES["linux-aarch64"]
    vin, cases = kernel_vectors
    vout = tmp_path / "results.bner"
    proc = Q.run(arch, harness_from_bundle.exe, cpu, vin, vout, timeout=QEMU_TIMEOUT)
    check_run(proc, vout, cases, target="aarch64-linux", best=best, backends=backends)
    # the harness really ran the bundle's library, not a static copy of the sources
    assert str(harness_from_bundle.library) in Q.loaded_objects(arch, harness_from_bundle.exe)


def test_jetson_install_puts_the_fatbin_beside_the_library_and_is_a_delta_base(bundles, tmp_path):
    import hashlib

    from bitnet_edge.sdk.bundle.install import base_from_installed
    from bitnet_edge.sdk.cuda import fatbin_candidates

    r = bundles["by_target"]["jetson"]
    inst = install_bundle(r.path, tmp_path / "j", [bundles["pub"]], check_host=False)
    fat = inst.library.parent / r.manifest.cuda.file
    assert hashlib.sha256(fat.read_bytes()).hexdigest() == r.manifest.cuda.sha256
    assert fat.read_bytes()[:4] == bytes.fromhex("50ed55ba")  # fatbin magic 0xBA55ED50, little-endian
    base = base_from_installed(inst.path, [bundles["pub"]])
    assert base.contents[r.manifest.cuda.section] == fat.read_bytes()
    with pytest.MonkeyPatch.context() as mp:  # the agent's worker sets BITNET_EDGE_LIBRARY to the slot's library
        mp.delenv("BITNET_EDGE_CUDA_FATBIN", raising=False)
        mp.setenv("BITNET_EDGE_LIBRARY", str(inst.library))
        assert fatbin_candidates()[0] == fat
