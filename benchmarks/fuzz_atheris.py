"""Coverage-guided fuzzing (atheris / libFuzzer) of the bundle reader, the manifest parser, delta
apply and the MQTT message parsers.  Optional: ``pip install -e '.[fuzz]'`` (x86-64 Linux wheels).

    python -m benchmarks.fuzz_atheris [TARGET] [-atheris_runs=N] [-max_total_time=S] [libFuzzer flags]

TARGET: ``bundle`` (default; seeds are real signed bundles, plain, delta and encrypted),
``manifest``, ``delta`` or ``messages``.  Anything but the package's typed errors is a crash
that libFuzzer reports and saves (``crash-<sha1>``).  The hypothesis tests in tests/test_fuzz.py
cover the same functions on every CI run; this is the long, coverage-guided search.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path


def _seed_dir(seeds: dict[str, bytes]) -> Path:
    d = Path(tempfile.mkdtemp(prefix="bne-atheris-seeds-"))
    for name, data in seeds.items():
        (d / f"{name}.seed").write_bytes(data)
    return d


def _message_seeds() -> dict[str, bytes]:
    import hashlib

    from bitnet_edge.sdk.wire.protocol import ChunkRequest, DesiredState, Progress, ReleaseRef, pack_chunk

    sha = hashlib.sha256(b"x").hexdigest()
    ref = ReleaseRef(model="m", version="1", release=1, target="linux-x86_64", bundle_sha256=sha, bundle_size=10,
                     chunk_size=4096)
    msgs = {"desired": DesiredState(device_id="d1", rollout_id=None, release=ref, issued_at=1.0),
            "req": ChunkRequest(device_id="d1", file_sha256=sha, chunk_size=4096, chunks=[0]),
            "events": Progress(device_id="d1", file_sha256=sha, stage="done", received_bytes=1, total_bytes=1, ts=1.0)}
    return {**{k: m.model_dump_json().encode() for k, m in msgs.items()}, "chunk": pack_chunk(sha, 0, b"0123456789")}


def main(argv: list[str] | None = None) -> None:
    import atheris

    args = list(sys.argv if argv is None else argv)
    target = args.pop(1) if len(args) > 1 and not args[1].startswith("-") else "bundle"
    from bitnet_edge.sdk.bundle import codec
    from bitnet_edge.sdk.bundle.errors import BundleError, BundleFormatError
    from bitnet_edge.sdk.bundle.manifest import parse_manifest
    from bitnet_edge.sdk.bundle.verify import read_unverified, verify_bundle
    from bitnet_edge.sdk.errors import FormatError
    from bitnet_edge.sdk.wire.protocol import LEAVES, parse_message, unpack_chunk

    from benchmarks.fuzz_bundles import build_corpus

    corpus = build_corpus(Path(tempfile.mkdtemp(prefix="bne-atheris-")))
    base = __import__("bitnet_edge.sdk.bundle.verify", fromlist=["base_from_bundle"]).base_from_bundle(
        corpus.v1, corpus.trusted)

    def bundle(data: bytes) -> None:
        try:
            verify_bundle(data, corpus.trusted, base=base, device_keys=corpus.device_keys)
        except BundleError:
            pass
        try:
            read_unverified(data)
        except BundleError:
            pass

    def manifest(data: bytes) -> None:
        try:
            parse_manifest(data)
        except BundleFormatError:
            pass

    env, m = read_unverified(next(it.data for it in corpus.items if it.name == "delta"))
    tern = m.section("weights.ternary")
    delta_item = next(it.data for it in corpus.items if it.name == "delta")
    delta_stored = delta_item[env.payload_offset + tern.offset: env.payload_offset + tern.offset + tern.stored_size]
    ternary = base.contents["weights.ternary"]

    def delta(data: bytes) -> None:  # the stored bytes of the trit-delta section, against the real base
        try:
            codec.decode("weights.ternary", tern.encoding, data, tern.size, ternary)
        except BundleFormatError:
            pass

    def messages(data: bytes) -> None:  # every leaf's parser on the same bytes
        for leaf in LEAVES:
            try:
                unpack_chunk(data) if leaf.endswith("/data") else parse_message(leaf, data)
            except FormatError:
                pass

    seeds = {"bundle": {it.name: it.data for it in corpus.items},
             "manifest": {it.name: it.data[16:16 + it.manifest_len] for it in corpus.items},
             "delta": {"trit-delta": delta_stored}, "messages": _message_seeds()}[target]
    atheris.instrument_all()  # the editable install's import hook hides modules from instrument_imports()
    fn = {"bundle": bundle, "manifest": manifest, "delta": delta, "messages": messages}[target]
    if not any(not a.startswith("-") for a in args[1:]):  # no corpus directory given: start from real inputs
        args.append(str(_seed_dir(seeds)))
    atheris.Setup(args, fn)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
