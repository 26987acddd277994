"""Mutated-bundle fuzzing of the agent's install pipeline.

    python -m benchmarks.fuzz_bundles [--count 10000] [--seed 0] [--out benchmarks/results/]

Real signed bundles of a small MLP (a full release 2, its delta from release 1, and release 2
encrypted to the device's X25519 key) are mutated: bit flips, byte overwrites, truncations,
trailing data, splices from another bundle, insertions and deletions, length fields, signature
block fields and same-length JSON edits of the manifest.  Each mutant goes through an in-process
:class:`~bitnet_edge.agent.daemon.Agent` that serves release 1, and must be

- refused: the outcome is not ``installed``, its reason a protocol ReasonCode other than
  ``internal`` (an untyped exception), and ``verify_bundle`` raises a typed ``BundleError``;
- harmless: release 1 still active and served by the same worker process, no staging directory
  left behind; every ``--probe-every`` mutants (and at the end) an inference through the worker
  gives the same output as before the run.

A control follows the mutants: the unmutated release-2 bundle must verify and install (and change
the served output), so a pipeline that refuses everything cannot pass for a safe one
(``report["control"]``).

Prints and writes (``--out``) a JSON report: counts by outcome reason, by error class and reason,
by mutation kind, time.  tests/bundle/test_fuzz.py runs a 200-mutant slice of it.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import struct
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

__all__ = ["Corpus", "build_corpus", "mutate", "MUTATIONS", "run_fuzz", "main"]

SIZES = (32, 48, 4)


@dataclass
class Item:
    name: str
    data: bytes
    manifest_len: int  # M
    sig_len: int  # S
    payload_offset: int

    @property
    def envelope(self) -> int:
        return self.payload_offset


@dataclass
class Corpus:
    root: Path
    items: list[Item]
    v1: Path
    trusted: list
    device_keys: list
    config: Path
    probe_input: list = field(default_factory=list)


def build_corpus(root: Path) -> Corpus:
    """Keys, a device key, release 1 (to install) and the release-2 bundles to mutate."""
    from bitnet_edge.packagers.builder import PackageOptions, package_model
    from bitnet_edge.packagers.keys import generate_keypair, load_private_key
    from bitnet_edge.packagers import keys, seal
    from bitnet_edge.sdk.bundle import crypt
    from bitnet_edge.sdk.bundle.container import read_envelope
    from bitnet_edge.sdk.bundle.signing import load_public_key
    from bitnet_edge.sdk.native.targets import host_target
    from tests.support.bundle_models import built_library, make_mlp_dir
    from tests.support.agent_fixtures import HOST_DEVICE, write_config

    root.mkdir(parents=True, exist_ok=True)
    kp = generate_keypair(root / "keys", "release")
    key = load_private_key(kp.private_path)
    dev = keys.generate_device_key(root / "keys", "device")
    libs = {host_target(): built_library(host_target())}
    plain = PackageOptions(libraries=libs)
    sealed = PackageOptions(libraries=libs, encrypt_to=(seal.load_device_public_key(dev.public_path),))
    m1 = make_mlp_dir(root / "m1", SIZES, seed=5, name="fuzz-mlp")
    m2 = make_mlp_dir(root / "m2", SIZES, seed=5, change=0.1, name="fuzz-mlp")
    (r1,) = package_model(m1, [HOST_DEVICE], "1.0.0", [key], root / "d1", options=plain)
    (r2,) = package_model(m2, [HOST_DEVICE], "2.0.0", [key], root / "d2", delta_from=[r1.path], options=plain)
    (r2e,) = package_model(m2, [HOST_DEVICE], "2.0.0", [key], root / "d2e", release=2, options=sealed)
    items = []
    for name, path in (("full", r2.path), ("delta", r2.delta_path), ("encrypted", r2e.path)):
        data = path.read_bytes()
        with open(path, "rb") as f:
            env = read_envelope(f)
        mlen = len(env.manifest_bytes)
        items.append(Item(name, data, mlen, env.payload_offset - 20 - mlen, env.payload_offset))
    cfg = write_config(root / "agent.toml", root / "agent-data", [kp.public_path],
                       extra=f'device_key = "{dev.private_path}"')
    return Corpus(root, items, r1.path, [load_public_key(kp.public_path)], [crypt.FileDeviceKey(dev.private_path)],
                  cfg, np.linspace(-1, 1, SIZES[0]).reshape(1, -1).tolist())


# ---- mutations ------------------------------------------------------------------------------------

_INTERESTING = [0, 1, 0x7F, 0x80, 0xFF]
_INTERESTING_U32 = [0, 1, 3, 4, 99, 100, 104, 2**31 - 1, 2**31, 2**32 - 1]


def _pos(rng: np.random.Generator, it: Item, n: int) -> int:
    """A position: a third of the time in the envelope (header, manifest, signatures), else anywhere."""
    if rng.random() < 1 / 3:
        return int(rng.integers(0, it.envelope))
    return int(rng.integers(0, n))


def _boundaries(it: Item) -> list[int]:
    m = it.manifest_len
    return [0, 8, 12, 16, 16 + m, 20 + m, 24 + m, it.payload_offset, len(it.data)]


def m_bitflip(rng, it, corpus):
    b = bytearray(it.data)
    for _ in range(int(rng.integers(1, 9))):
        p = _pos(rng, it, len(b))
        b[p] ^= 1 << int(rng.integers(0, 8))
    return bytes(b)


def m_bytes(rng, it, corpus):
    b = bytearray(it.data)
    p = _pos(rng, it, len(b))
    for i in range(p, min(len(b), p + int(rng.integers(1, 17)))):
        b[i] = _INTERESTING[int(rng.integers(0, len(_INTERESTING)))] if rng.random() < 0.5 else int(rng.integers(256))
    return bytes(b)


def m_truncate(rng, it, corpus):
    if rng.random() < 0.5:
        cut = _boundaries(it)[int(rng.integers(0, 8))] + int(rng.integers(-3, 4))
    else:
        cut = int(rng.integers(0, len(it.data)))
    return it.data[:max(0, min(cut, len(it.data) - 1))]


def m_extend(rng, it, corpus):
    return it.data + rng.bytes(int(rng.integers(1, 4096)))


def m_splice(rng, it, corpus):
    other = corpus.items[int(rng.integers(0, len(corpus.items)))].data
    p = _pos(rng, it, len(it.data))
    q = int(rng.integers(0, len(other)))
    n = int(rng.integers(1, 4096))
    keep = rng.random() < 0.5
    if keep and p + n <= len(it.data) and q + n <= len(other):  # same length: offsets stay valid
        return it.data[:p] + other[q:q + n] + it.data[p + n:]
    return it.data[:p] + other[q:q + n] + it.data[p + int(rng.integers(0, n + 1)):]


def m_insert_delete(rng, it, corpus):
    p = _pos(rng, it, len(it.data))
    n = int(rng.integers(1, 257))
    if rng.random() < 0.5:
        return it.data[:p] + rng.bytes(n) + it.data[p:]
    return it.data[:p] + it.data[p + n:]


def m_duplicate(rng, it, corpus):
    p = _pos(rng, it, len(it.data))
    n = int(rng.integers(1, 1025))
    return it.data[:p + n] + it.data[p:p + n] + it.data[p + n:]


def m_length(rng, it, corpus):
    """Rewrite the header's manifest length, the signature block length or the signature count."""
    b = bytearray(it.data)
    m = it.manifest_len
    where = [12, 16 + m, 20 + m][int(rng.integers(0, 3))]
    old = struct.unpack_from("<I", b, where)[0]
    cands = _INTERESTING_U32 + [old - 1, old + 1, old * 2, old + 100, int(rng.integers(0, 2**32))]
    new = cands[int(rng.integers(0, len(cands)))] % 2**32
    if new == old:
        new = (old + 1) % 2**32
    struct.pack_into("<I", b, where, new)
    return bytes(b)


def m_signature(rng, it, corpus):
    """The signature entry: algorithm, reserved, key id or signature bytes."""
    b = bytearray(it.data)
    base = 24 + it.manifest_len  # first entry: u16 alg, u16 reserved, 32 key id, 64 signature
    off, width = [(0, 2), (2, 2), (4, 32), (36, 64)][int(rng.integers(0, 4))]
    p = base + off + int(rng.integers(0, width))
    b[p] ^= int(rng.integers(1, 256))
    return bytes(b)


def m_json(rng, it, corpus):
    """Same-length edits of the manifest JSON: a digit, a hex digit, a quote or a brace."""
    b = bytearray(it.data)
    lo, hi = 16, 16 + it.manifest_len
    for _ in range(int(rng.integers(1, 4))):
        p = int(rng.integers(lo, hi))
        c = b[p]
        if chr(c).isdigit():
            b[p] = ord(str((int(chr(c)) + int(rng.integers(1, 10))) % 10))
        elif chr(c) in "abcdef":
            b[p] = ord("abcdef"[(("abcdef".index(chr(c))) + 1) % 6])
        else:
            b[p] = ord('"{}[],:'[int(rng.integers(0, 7))]) if c != ord('"') else ord("'")
    return bytes(b)


MUTATIONS = {"bitflip": m_bitflip, "bytes": m_bytes, "truncate": m_truncate, "extend": m_extend,
             "splice": m_splice, "insert-delete": m_insert_delete, "duplicate": m_duplicate, "length": m_length,
             "signature": m_signature, "json": m_json}


def mutate(rng: np.random.Generator, corpus: Corpus) -> tuple[str, str, bytes]:
    """(corpus item, mutation kind, mutated bytes) — always different from the original."""
    it = corpus.items[int(rng.integers(0, len(corpus.items)))]
    kinds = list(MUTATIONS)
    while True:
        kind = kinds[int(rng.integers(0, len(kinds)))]
        out = MUTATIONS[kind](rng, it, corpus)
        if out != it.data:
            return it.name, kind, out


# ---- the run --------------------------------------------------------------------------------------

def _infer(agent, inputs) -> list:
    from bitnet_edge.agent.httpbase import UnixHTTPConnection

    w = agent.acquire_worker()
    try:
        conn = UnixHTTPConnection(w.socket, timeout=30)
        body = json.dumps({"inputs": inputs}).encode()
        conn.request("POST", "/v1/infer", body=body, headers={"Content-Type": "application/json",
                                                              "Content-Length": str(len(body))})
        resp = conn.getresponse()
        out = json.loads(resp.read())
        conn.close()
        assert resp.status == 200, out
        return out
    finally:
        agent.release_worker(w)


def _classify(corpus: Corpus, path: Path, base) -> str:
    """The typed error ``verify_bundle`` raises for the mutant (``Class:reason``); ``base``: the
    installed release (BaseContents) for the delta mutants."""
    from bitnet_edge.sdk.bundle.errors import BundleError
    from bitnet_edge.sdk.bundle.verify import verify_bundle

    try:
        verify_bundle(path, corpus.trusted, base=base, device_keys=corpus.device_keys)
    except BundleError as exc:
        return f"{type(exc).__name__}:{exc.reason}"
    except Exception as exc:  # noqa: BLE001 - what the fuzzer looks for
        return f"UNTYPED:{type(exc).__name__}:{exc}"
    return "ACCEPTED"


def run_fuzz(count: int, seed: int = 0, root: Path | None = None, probe_every: int = 500,
             log=lambda msg: None, mutator=None, control: bool = True) -> dict:
    """Mutate ``count`` bundles and feed each to an agent serving release 1; the report (dict).
    ``report["violations"]`` lists every mutant that broke an invariant (empty on success);
    ``report["control"]`` the unmutated release 2's install after them (``ok``: it verified,
    installed and changed the served output).  ``mutator(rng, corpus) -> (item, kind, bytes)``
    replaces :func:`mutate` (tests use it to check that an accepted bundle is caught)."""
    from bitnet_edge.agent.config import load_config
    from bitnet_edge.agent.daemon import Agent

    tmp = None
    if root is None:
        tmp = tempfile.TemporaryDirectory(prefix="bne-fuzz-")
        root = Path(tmp.name)
    t0 = time.perf_counter()
    corpus = build_corpus(root)
    agent = Agent(load_config(corpus.config))
    by_reason: Counter[str] = Counter()
    by_error: Counter[str] = Counter()
    by_kind: Counter[str] = Counter()
    by_item: Counter[str] = Counter()
    violations: list[dict] = []
    rng = np.random.default_rng(seed)
    try:
        first = agent.install_file(corpus.v1)
        assert first.result == "installed", first
        want = _infer(agent, corpus.probe_input)
        state0 = agent.store.load()
        worker0 = agent.acquire_worker()
        agent.release_worker(worker0)
        active_dir = agent.store.slot_dir(state0.active)
        from bitnet_edge.sdk.bundle.install import base_from_installed

        base = base_from_installed(active_dir, corpus.trusted)
        mutant = root / "mutant.bundle"
        t1 = time.perf_counter()
        for i in range(count):
            item, kind, data = (mutator or mutate)(rng, corpus)
            mutant.write_bytes(data)
            out = agent.install_file(mutant)
            err = _classify(corpus, mutant, base)
            by_reason[f"{out.result}:{out.reason}"] += 1
            by_error[err] += 1
            by_kind[kind] += 1
            by_item[item] += 1
            problems = []
            if out.result == "installed" or out.reason == "internal":
                problems.append(f"outcome {out.result}/{out.reason}: {out.message[:300]}")
            if err == "ACCEPTED" or err.startswith("UNTYPED"):
                problems.append(f"verify: {err[:300]}")
            st = agent.store.load()
            w = agent.acquire_worker()
            agent.release_worker(w)
            if st.active != state0.active or st.slots[st.active] != state0.slots[state0.active]:
                problems.append("the active slot changed")
            if w is not worker0 or not w.alive:
                problems.append("the serving worker changed or died")
            if any(active_dir.parent.glob(".*.installing-*")):
                problems.append("a staging directory was left behind")
            if (i + 1) % probe_every == 0 or i + 1 == count:
                if _infer(agent, corpus.probe_input) != want:
                    problems.append("inference output changed")
                log(f"{i + 1}/{count} mutants, {len(violations)} violations, "
                    f"{(i + 1) / (time.perf_counter() - t1):.0f}/s")
            if problems:
                violations.append({"index": i, "item": item, "kind": kind, "size": len(data),
                                   "sha256": hashlib.sha256(data).hexdigest(), "problems": problems})
                keep = root / f"violation-{i}.bundle"
                keep.write_bytes(data)
        elapsed = time.perf_counter() - t1
        control_report = None
        if control:
            full = next(it for it in corpus.items if it.name == "full")
            good = root / "control.bundle"
            good.write_bytes(full.data)
            err = _classify(corpus, good, base)
            out = agent.install_file(good)
            changed = out.result == "installed" and _infer(agent, corpus.probe_input) != want
            control_report = {"outcome": f"{out.result}:{out.reason}", "verify": err,
                              "ok": err == "ACCEPTED" and out.result == "installed" and changed}
    finally:
        agent.shutdown()
        if tmp is not None:
            tmp.cleanup()
    return {"count": count, "seed": seed, "refused": count - len(violations), "violations": violations,
            "control": control_report,
            "outcomes": dict(by_reason.most_common()), "errors": dict(by_error.most_common()),
            "mutations": dict(sorted(by_kind.items())), "bundles": dict(sorted(by_item.items())),
            "corpus_bytes": {it.name: len(it.data) for it in corpus.items},
            "seconds": round(elapsed, 2), "setup_seconds": round(t1 - t0, 2),
            "mutants_per_second": round(count / elapsed, 1) if elapsed else None}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--count", type=int, default=10000, help="mutated bundles to try")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--probe-every", type=int, default=500, help="inference check every N mutants")
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results",
                    help="directory for fuzz-bundles-<time>.json")
    args = ap.parse_args(argv)
    report = run_fuzz(args.count, args.seed, probe_every=args.probe_every, log=lambda m: print(m, flush=True))
    report["when"] = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"fuzz-bundles-{dt.datetime.now():%Y%m%d-%H%M%S}.json"
    path.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({k: v for k, v in report.items() if k != "violations"}, indent=2))
    print(f"{report['refused']}/{report['count']} refused with a typed error; {len(report['violations'])} "
          f"violations; control (unmutated release 2) {'installed' if report['control']['ok'] else 'FAILED'}; "
          f"{report['seconds']} s; report {path}")
    return 0 if not report["violations"] and report["control"]["ok"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
