"""``package``: a converted model + device profiles -> one signed bundle per distinct target.

Per model (once): the weights sections (base-3 ternary, raw dense), the golden vectors, the
tokenizer.  Per target: the native library (built here, or handed in prebuilt), its section, the
manifest, the signatures, the file.  With ``delta_from`` also a delta bundle per target whose base
is given.  Everything that goes into a bundle is a function of the inputs, the toolchain and
``SOURCE_DATE_EPOCH``, so a rebuild gives the same bytes.
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from bitnet_edge import __version__
from bitnet_edge.packagers import cuda as cuda_build
from bitnet_edge.packagers import golden_vectors, seal
from bitnet_edge.packagers.errors import PackagingError
from bitnet_edge.packagers.keys import sign
from bitnet_edge.packagers.targets import BASE_CFLAGS, build_library, get_target, toolchain_versions
from bitnet_edge.sdk.bundle import codec
from bitnet_edge.sdk.bundle.container import CONTAINER_VERSION, encode_envelope, signed_message
from bitnet_edge.sdk.bundle.devices import DeviceProfile, load_devices
from bitnet_edge.sdk.bundle.errors import UnknownDevice
from bitnet_edge.sdk.bundle.manifest import (
    BackendInfo,
    BuildInfo,
    BundleManifest,
    CudaInfo,
    DeltaInfo,
    EncryptionInfo,
    NativeLibrary,
    Section,
    Sizes,
    canonical_json,
)
from bitnet_edge.sdk.bundle.payload import TERNARY_SECTION, encode_weights
from bitnet_edge.sdk.bundle.signing import key_id
from bitnet_edge.sdk.bundle.verify import BaseContents, base_from_bundle
from bitnet_edge.sdk.modeldir import open_model_dir
from bitnet_edge.sdk.native.targets import BACKEND_FEATURES, binary_kind, library_filename

__all__ = ["DEFAULT_NATIVE_ROOT", "PackageOptions", "BundleResult", "package_model", "native_source_sha256",
           "source_date_epoch", "bundle_filename", "check_library_fits"]

DEFAULT_NATIVE_ROOT = Path(__file__).resolve().parents[1] / "native"
_SOURCE_GLOBS = ("include/*.h", "src/*.c", "src/*.h", "src/arch/*/*.c", "src/arch/*/*.h", "cuda/*.h", "cuda/*.cuh",
                 "cuda/*.cu")
_ORDER = {"library": 0, "cuda-fatbin": 1, "golden": 2, "tokenizer": 3, "weights-dense": 4, "weights-ternary": 5}
_CUDA_NOTE = ("the device runs the CUDA kernels when its GPU is covered (SASS for the archs listed, PTX for newer "
              "ones) and the driver loads the fatbin; otherwise the aarch64 CPU library, with the reason reported")
_NO_CUDA_NOTE = "packaged without the CUDA fatbin (cuda=False); the device runs the aarch64 CPU library"
_FATBINS: dict[tuple[str, str], bytes] = {}  # (native source sha256, nvcc path) -> fatbin: one build per process

Progress = Callable[[str, int, int], None]  # (what is starting, steps done, steps in all)


@dataclass(frozen=True)
class PackageOptions:
    zstd_level: int = codec.DEFAULT_LEVEL
    golden: bool = True  # compute golden vectors with bitnet_edge.sdk.load_model
    native_root: Path = DEFAULT_NATIVE_ROOT
    # Prebuilt libraries by CPU-library target (built by build_library from native_root with the
    # same toolchain); targets missing here are built.
    libraries: Mapping[str, Path] = field(default_factory=dict)
    devices_dir: Path | None = None
    cuda: bool = True  # put the CUDA fatbin into bundles of targets with a GPU (jetson); needs nvcc
    cuda_fatbin: Path | None = None  # a prebuilt fatbin (packagers.cuda.build_fatbin from native_root)
    # Encryption (ADR 0011): seal the payload of every bundle written to these device X25519 public
    # keys (empty: not encrypted); base_keys open encrypted --delta-from bases (a recipient's key).
    encrypt_to: tuple = ()  # X25519PublicKey, ...
    aead: str = "aes-256-gcm"  # or chacha20-poly1305
    base_keys: tuple = ()  # sdk.bundle.crypt.DeviceKey, ...


@dataclass(frozen=True)
class BundleResult:
    target: str
    path: Path
    size: int  # bytes of the full bundle
    manifest: BundleManifest
    delta_path: Path | None = None
    delta_size: int | None = None

    @property
    def delta_ratio(self) -> float | None:
        """Delta bundle size / full bundle size."""
        return None if self.delta_size is None else self.delta_size / self.size


def native_source_sha256(native_root: Path) -> str:
    """sha256 over (relative path, sha256 of bytes) of every native source, sorted by path."""
    root = Path(native_root)
    files = sorted({p for g in _SOURCE_GLOBS for p in root.glob(g)}, key=lambda p: p.relative_to(root).as_posix())
    h = hashlib.sha256()
    for p in files:
        h.update(p.relative_to(root).as_posix().encode() + b"\0" + hashlib.sha256(p.read_bytes()).digest())
    return h.hexdigest()


def source_date_epoch() -> int | None:
    raw = os.environ.get("SOURCE_DATE_EPOCH")
    if raw is None or raw == "":
        return None
    if not raw.isdigit():
        raise PackagingError("bad-source-date-epoch", f"SOURCE_DATE_EPOCH={raw!r} is not a non-negative integer")
    return int(raw)


def bundle_filename(name: str, version: str, target: str, base_release: int | None = None) -> str:
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", name)
    tail = "" if base_release is None else f".delta-from-r{base_release}"
    return f"{stem}-{version}-{target}{tail}.bundle"


def _write_bundle(path: Path, manifest: BundleManifest, stored: Mapping[str, bytes],
                  keys: Sequence[Ed25519PrivateKey]) -> int:
    mbytes = canonical_json(manifest)
    envelope = encode_envelope(mbytes, sign(signed_message(CONTAINER_VERSION, mbytes), keys))
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(envelope)
        for s in manifest.sections:
            f.write(stored[s.name])
    os.replace(tmp, path)
    return len(envelope) + manifest.payload_size


def _sections(contents: Mapping[str, tuple[str, bytes]], encoded: Mapping[str, tuple[str, bytes, str | None]]
              ) -> list[Section]:
    """contents: name -> (kind, content); encoded: name -> (encoding, stored, base sha) -> Sections in file order."""
    out, pos = [], 0
    for name in sorted(contents, key=lambda n: (_ORDER[contents[n][0]], n)):
        kind, content = contents[name]
        encoding, stored, base_sha = encoded[name]
        out.append(Section(name=name, kind=kind, offset=pos, stored_size=len(stored),
                           stored_sha256=hashlib.sha256(stored).hexdigest(), encoding=encoding, size=len(content),
                           sha256=hashlib.sha256(content).hexdigest(), base_sha256=base_sha))
        pos += len(stored)
    return out


def _seal(encoded: Mapping[str, tuple[str, bytes, str | None]], options: PackageOptions
          ) -> tuple[dict[str, tuple[str, bytes, str | None]], EncryptionInfo | None]:
    """The stored bytes as written: sealed to ``options.encrypt_to`` under a fresh content key (one
    per file), or unchanged when it is empty."""
    if not options.encrypt_to:
        return dict(encoded), None
    sealer = seal.Sealer(list(options.encrypt_to), options.aead)
    return {n: (enc, sealer.seal(n, data), base) for n, (enc, data, base) in encoded.items()}, sealer.info


def _load_bases(paths: Sequence[str | os.PathLike], trusted: list[Ed25519PublicKey], name: str,
                targets: Sequence[str], device_keys: Sequence = ()) -> dict[str, BaseContents]:
    bases: dict[str, BaseContents] = {}
    for p in paths:
        b = base_from_bundle(p, trusted, device_keys=device_keys)
        t = b.manifest.target
        if b.manifest.name != name:
            raise PackagingError("base-other-model", f"{p} is model {b.manifest.name!r}, not {name!r}")
        if t not in targets:
            raise PackagingError("base-target-unused", f"{p} is for target {t}, which none of the devices need")
        if t in bases:
            raise PackagingError("base-repeated", f"two --delta-from bundles for target {t}")
        bases[t] = b
    return bases


def check_library_fits(profile: DeviceProfile, target: str) -> list[str]:
    """CPU features the target's library needs that the device does not always have (empty: it fits)."""
    return sorted(set(get_target(target).requires) - set(profile.isa_required))


def package_model(model_dir: str | os.PathLike, devices: Sequence[str | DeviceProfile], version: str,
                  keys: Sequence[Ed25519PrivateKey], out_dir: str | os.PathLike, *, release: int | None = None,
                  delta_from: Sequence[str | os.PathLike] = (), trust: Sequence[Ed25519PublicKey] = (),
                  options: PackageOptions = PackageOptions(), progress: Progress | None = None) -> list[BundleResult]:
    """Build, sign and write one bundle per distinct target of ``devices`` into ``out_dir``.

    ``release`` defaults to one more than the newest ``delta_from`` base (or 1).  Delta bases
    are verified with the signing keys' public keys plus ``trust``.
    """
    if not keys:
        raise PackagingError("no-keys", "at least one signing key is needed")
    if not devices:
        raise PackagingError("no-devices", "at least one device profile is needed")
    if not re.fullmatch(r"[0-9A-Za-z][0-9A-Za-z.+-]*", version):
        raise PackagingError("bad-version", f"version {version!r} must match [0-9A-Za-z][0-9A-Za-z.+-]*")
    known = load_devices(options.devices_dir) if any(isinstance(d, str) for d in devices) else {}
    by_target: dict[str, list[DeviceProfile]] = {}
    for p in devices:
        if isinstance(p, str):
            if p not in known:
                raise UnknownDevice(p, sorted(known))
            p = known[p]
        if p not in by_target.setdefault(p.target, []):
            by_target[p.target].append(p)
    for t, ps in by_target.items():
        for p in ps:
            if missing := check_library_fits(p, t):
                raise PackagingError("device-unsupported", f"{p.name} lacks {', '.join(missing)}, which the {t} "
                                                           "library needs")
    epoch = source_date_epoch()
    created = epoch if epoch is not None else int(time.time())
    to_build = {get_target(t).cpu_library_target for t in by_target} - set(options.libraries)
    with_cuda = options.cuda and any(get_target(t).cuda_kernels for t in by_target)
    total = 1 + options.golden + 2 * len(by_target) + len(to_build) + len(delta_from) + with_cuda
    done = 0

    def step(what: str) -> None:
        nonlocal done
        if progress is not None:
            progress(what, done, total)
        done += 1

    step("reading the model")
    md = open_model_dir(model_dir)
    model = md.manifest
    weights = encode_weights(model, md.array)
    contents: dict[str, tuple[str, bytes]] = {
        name: ("weights-ternary" if name == TERNARY_SECTION else "weights-dense", data)
        for name, data in weights.contents.items()}
    if model.tokenizer:
        contents["tokenizer"] = ("tokenizer", (md.path / model.tokenizer).read_bytes())
    golden = None
    if options.golden:
        step("computing golden vectors")
        try:
            golden, gdata = golden_vectors.compute_golden(md.path, model)
        except Exception as exc:  # noqa: BLE001 - any runtime failure: say so, suggest --no-golden
            raise PackagingError("golden-failed", f"running the model on this host failed ({type(exc).__name__}: "
                                                  f"{exc}); package with --no-golden to skip") from exc
        contents[golden.section] = ("golden", gdata)

    signer_pubs = [k.public_key() for k in keys]
    bases = _load_bases(delta_from, signer_pubs + list(trust), model.name, list(by_target), options.base_keys)
    if release is None:
        release = max((b.manifest.release for b in bases.values()), default=0) + 1
    for b in bases.values():
        if b.manifest.release >= release:
            raise PackagingError("release-not-increasing", f"release {release} is not above the base's "
                                                           f"release {b.manifest.release} ({b.manifest.version})")
    signers = sorted(key_id(p).hex() for p in signer_pubs)
    source_sha = native_source_sha256(options.native_root)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    full_cache: dict[str, bytes] = {}

    def full(content: bytes) -> bytes:
        k = hashlib.sha256(content).hexdigest()
        if k not in full_cache:
            full_cache[k] = codec.encode_full(content, options.zstd_level)
        return full_cache[k]

    results = []
    with tempfile.TemporaryDirectory(prefix="bne-package-") as tmp:
        built: dict[str, Path] = dict(options.libraries)
        for target, profs in by_target.items():
            t = get_target(target)
            lib_target = t.cpu_library_target
            if lib_target not in built:
                step(f"building the {lib_target} library")
                built[lib_target] = build_library(lib_target, options.native_root, Path(tmp) / lib_target)
            lib_bytes = Path(built[lib_target]).read_bytes()
            fmt, machine = binary_kind(lib_bytes[:64])
            lib_section = f"lib.{lib_target}"
            library = NativeLibrary(
                target=lib_target, file=library_filename(lib_target), section=lib_section, size=len(lib_bytes),
                sha256=hashlib.sha256(lib_bytes).hexdigest(), binary=f"{fmt}/{machine}",
                requires=list(get_target(lib_target).requires),
                backends=[BackendInfo(name=b, requires=list(BACKEND_FEATURES[b]))
                          for b in get_target(lib_target).backends])
            tcontents = {lib_section: ("library", lib_bytes), **contents}
            cuda, toolchains = None, toolchain_versions(target)
            if t.cuda_kernels and options.cuda:
                fat, toolchains["nvcc"] = _fatbin(options, source_sha, step)
                cuda = CudaInfo(included=True, archs=list(cuda_build.FATBIN_ARCHS), ptx=True,
                                ptx_arch=cuda_build.FATBIN_PTX, note=_CUDA_NOTE, section=f"cuda.{target}",
                                file=cuda_build.FATBIN_NAME, size=len(fat), sha256=hashlib.sha256(fat).hexdigest(),
                                toolchain=toolchains["nvcc"])
                tcontents[cuda.section] = ("cuda-fatbin", fat)
            elif t.cuda_archs:
                cuda = CudaInfo(included=False, archs=list(cuda_build.FATBIN_ARCHS), ptx=True,
                                ptx_arch=cuda_build.FATBIN_PTX, note=_NO_CUDA_NOTE)

            step(f"compressing {target}")
            encoded = {n: ("zstd", full(c), None) for n, (_, c) in tcontents.items()}
            sealed, encryption = _seal(encoded, options)
            sections = _sections(tcontents, sealed)
            stored_total = sum(s.stored_size for s in sections)
            tern = next((s for s in sections if s.name == TERNARY_SECTION), None)
            sizes = Sizes(
                parameters=weights.parameters, ternary_weights=weights.ternary_weights,
                ternary_stored_bytes=tern.stored_size if tern else 0,
                ternary_bits_per_weight=(8 * tern.stored_size / weights.ternary_weights) if tern else 0.0,
                payload_content_bytes=sum(s.size for s in sections), payload_stored_bytes=stored_total,
                full_payload_stored_bytes=stored_total)
            manifest = BundleManifest(
                name=model.name, version=version, release=release, target=target, created=created, model=model,
                tensors=weights.tensors, sections=sections, libraries=[library], cuda=cuda, devices=profs,
                build=BuildInfo(bitnet_edge=__version__, source_sha256=source_sha,
                                toolchains=toolchains, cflags=list(BASE_CFLAGS) + list(t.cflags),
                                zstd=codec.zstd_version(), zstd_level=options.zstd_level,
                                source_date_epoch=epoch),
                golden=golden, sizes=sizes, signers=signers, encryption=encryption)
            step(f"signing and writing {target}")
            path = out / bundle_filename(model.name, version, target)
            size = _write_bundle(path, manifest, {n: e[1] for n, e in sealed.items()}, keys)
            result = BundleResult(target, path, size, manifest)

            base = bases.get(target)
            if base is not None:
                step(f"delta for {target} against release {base.manifest.release}")
                dencoded = {}
                for n, (_, c) in tcontents.items():
                    old = base.contents.get(n)
                    if old is None:
                        dencoded[n] = encoded[n]
                        continue
                    enc, data = codec.best_delta(c, old, options.zstd_level, ternary=n == TERNARY_SECTION)
                    dencoded[n] = ((enc, data, hashlib.sha256(old).hexdigest()) if len(data) < len(encoded[n][1])
                                   else encoded[n])
                dsealed, dencryption = _seal(dencoded, options)
                dsections = _sections(tcontents, dsealed)
                dmanifest = BundleManifest.model_validate({
                    **manifest.model_dump(),
                    "encryption": dencryption.model_dump() if dencryption else None,
                    "sections": [s.model_dump() for s in dsections],
                    "sizes": {**sizes.model_dump(), "payload_stored_bytes": sum(s.stored_size for s in dsections)},
                    "delta": DeltaInfo(base_release_sha256=base.release_sha256, base_version=base.manifest.version,
                                       base_release=base.manifest.release).model_dump(),
                })
                dpath = out / bundle_filename(model.name, version, target, base.manifest.release)
                dsize = _write_bundle(dpath, dmanifest, {n: e[1] for n, e in dsealed.items()}, keys)
                result = BundleResult(target, path, size, manifest, dpath, dsize)
            results.append(result)
    if progress is not None:
        progress("done", total, total)
    return results


def _fatbin(options: PackageOptions, source_sha: str, step: Callable[[str], None]) -> tuple[bytes, str]:
    """(the CUDA fatbin's bytes, the nvcc --version line): prebuilt, or built once per process."""
    step("building the CUDA fatbin")
    nvcc = cuda_build.find_nvcc()
    version = cuda_build.nvcc_version(nvcc)
    if options.cuda_fatbin is not None:
        return Path(options.cuda_fatbin).read_bytes(), version
    key = (source_sha, str(nvcc))
    if key not in _FATBINS:
        with tempfile.TemporaryDirectory(prefix="bne-fatbin-") as tmp:
            _FATBINS[key] = cuda_build.build_fatbin(options.native_root, Path(tmp), nvcc).read_bytes()
    return _FATBINS[key], version
