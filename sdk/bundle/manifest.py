"""The bundle manifest (docs/adr/0005-bundle-format.md): what a signed bundle holds.

The manifest is canonical JSON (:func:`canonical_json`) signed with Ed25519; it records the
sha256 of every other byte of the bundle (each payload section, as stored and as content), so
the signature authenticates the whole file.  Schema: ``docs/schemas/bundle-manifest.json``.
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import Literal

from pydantic import Field, model_validator

from bitnet_edge.sdk.bundle.devices import DeviceProfile
from bitnet_edge.sdk.bundle.errors import BundleFormatError, UnsupportedVersion
from bitnet_edge.sdk.errors import FormatError
from bitnet_edge.sdk.manifest import FILE_NAME, MODEL_NAME, ModelManifest
from bitnet_edge.sdk.schemas import Strict, parse_model

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "SHA256",
    "RELEASE_VERSION",
    "Section",
    "WireTensor",
    "NativeLibrary",
    "BackendInfo",
    "ToolchainInfo",
    "CudaInfo",
    "BuildInfo",
    "GoldenArray",
    "Tolerance",
    "GoldenSet",
    "Sizes",
    "DeltaInfo",
    "Recipient",
    "EncryptionInfo",
    "BundleManifest",
    "canonical_json",
    "release_digest",
    "parse_manifest",
]

FORMAT = "bitnet-edge-bundle"
FORMAT_VERSION = 1
SHA256 = r"^[0-9a-f]{64}$"
#: A release version: 1 to 4 dot-separated numbers, an optional -PRERELEASE and +BUILD of dot-separated
#: [0-9A-Za-z-] identifiers (semver 2.0's shape with 1 to 4 numbers): 1, 1.2.0, 2.0.0-rc.1, 1.4.2+jetson.
RELEASE_VERSION = r"^[0-9]+(\.[0-9]+){0,3}(-[0-9A-Za-z-]+(\.[0-9A-Za-z-]+)*)?(\+[0-9A-Za-z-]+(\.[0-9A-Za-z-]+)*)?$"

SectionKind = Literal["library", "cuda-fatbin", "golden", "tokenizer", "weights-dense", "weights-ternary"]
Encoding = Literal["zstd", "zstd-patch", "trit-delta"]


class Section(Strict):
    """One payload section: stored bytes at ``offset`` (from the payload start), ``stored_size`` long."""

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9._-]*$", description="unique name, e.g. weights.ternary")
    kind: SectionKind = Field(description="what the content is")
    offset: int = Field(ge=0, description="byte offset of the stored bytes from the start of the payload")
    stored_size: int = Field(ge=0, description="bytes in the file")
    stored_sha256: str = Field(pattern=SHA256, description="sha256 of the bytes in the file")
    encoding: Encoding = Field(
        description="zstd: a zstd frame of the content; zstd-patch: a zstd frame made with the base "
                    "section's content as raw dictionary (patch-from); trit-delta: a zstd frame of the "
                    "base-3 packed trit-wise difference (new - base mod 3) to the base section")
    size: int = Field(ge=0, description="bytes of the content (after decoding)")
    sha256: str = Field(pattern=SHA256, description="sha256 of the content")
    base_sha256: str | None = Field(default=None, pattern=SHA256,
                                    description="delta encodings: sha256 of the base section's content")

    @model_validator(mode="after")
    def _base_iff_delta(self):
        if (self.encoding != "zstd") != (self.base_sha256 is not None):
            raise ValueError("base_sha256 is required for delta encodings and not allowed for zstd")
        return self


class WireTensor(Strict):
    """Where one tensor of the model travels: a byte range of a weights section's content."""

    name: str = Field(description="tensor name (as in the model's tensor table)")
    format: Literal["ternary-base3", "int8", "f32", "f16"] = Field(
        description="ternary-base3: 5 trits per byte (ADR 0002), unpacked to the 2-bit compute layout at "
                    "install; others: the raw little-endian array in C order")
    shape: list[int] = Field(description="logical shape (out, in) for linear weights")
    section: str = Field(description="the section whose content holds it")
    offset: int = Field(ge=0, description="byte offset in the section's content")
    length: int = Field(ge=0, description="bytes")
    sha256: str = Field(pattern=SHA256, description="sha256 of those bytes")


class BackendInfo(Strict):
    name: str = Field(description="kernel backend compiled into the library, e.g. neon-dotprod")
    requires: list[str] = Field(description="CPU features the backend needs; the library picks it at run time")


class NativeLibrary(Strict):
    target: str = Field(description="build target the library was compiled for, e.g. linux-aarch64")
    file: str = Field(pattern=FILE_NAME, description="file name to install it under, e.g. libbitnet_edge.so (one "
                                                      "path component)")
    section: str = Field(description="the section that holds it")
    size: int = Field(ge=0, description="bytes")
    sha256: str = Field(pattern=SHA256, description="sha256 of the library file")
    binary: str = Field(description="binary format and machine, e.g. elf/aarch64 or mach-o/arm64")
    requires: list[str] = Field(description="CPU features the library needs to load at all")
    backends: list[BackendInfo] = Field(description="kernel variants inside, chosen at run time by CPU features")


class CudaInfo(Strict):
    included: bool = Field(description="whether a CUDA fatbin is in the bundle")
    archs: list[str] = Field(description="GPU architectures the fatbin holds machine code (SASS) for")
    ptx: bool = Field(description="whether PTX is embedded for newer GPUs")
    note: str = Field(description="what the device runs: the GPU kernels, or why the CPU library")
    ptx_arch: str | None = Field(default=None, pattern=r"^compute_[0-9]{2,3}$",
                                 description="virtual architecture of the embedded PTX (the driver JIT-compiles it "
                                             "for GPUs without SASS here)")
    section: str | None = Field(default=None, description="the section that holds the fatbin (when included)")
    file: str | None = Field(default=None, pattern=FILE_NAME,
                             description="file name to install it under, beside the library (one path component)")
    size: int | None = Field(default=None, ge=0, description="bytes of the fatbin")
    sha256: str | None = Field(default=None, pattern=SHA256, description="sha256 of the fatbin")
    toolchain: str | None = Field(default=None, description="the nvcc that built it (--version)")

    @model_validator(mode="after")
    def _fatbin_iff_included(self):
        present = [f is not None for f in (self.section, self.file, self.size, self.sha256)]
        if (self.included and not all(present)) or (not self.included and any(present)):
            raise ValueError("section, file, size and sha256 are required when included and not allowed otherwise")
        return self


class ToolchainInfo(Strict):
    """The toolchain that compiled the CPU library (packagers/targets.py): the same inputs and the same
    toolchain name + version give the same library bytes."""

    name: Literal["zig", "system"] = Field(description="zig (the ziglang wheel, the default) or system (apt compilers)")
    version: str = Field(min_length=1, description="zig's version (e.g. 0.17.1), or the system compiler's "
                                                   "--version line")
    target: str | None = Field(default=None, description="zig only: the -target triple with its libc floor, "
                                                         "e.g. aarch64-linux-gnu.2.17")


class BuildInfo(Strict):
    bitnet_edge: str = Field(description="version of the packager")
    source_sha256: str = Field(pattern=SHA256, description="sha256 over the native sources (paths and bytes)")
    toolchain: ToolchainInfo | None = Field(default=None, description="what compiled the CPU library (absent in "
                                                                      "bundles from before it was recorded)")
    toolchains: dict[str, str] = Field(description="role -> tool and its --version line")
    cflags: list[str] = Field(description="flags every library source was compiled with (before per-ISA flags)")
    zstd: str = Field(description="zstd library version that compressed the payload")
    zstd_level: int = Field(description="compression level")
    source_date_epoch: int | None = Field(description="SOURCE_DATE_EPOCH if it was set (reproducible build)")


class GoldenArray(Strict):
    name: str = Field(description="array name: input, input.N, output")
    role: Literal["input", "output"] = Field(description="fed to the model, or expected from it")
    dtype: Literal["float32", "int64"] = Field(description="element type, little-endian")
    shape: list[int] = Field(description="array shape")
    offset: int = Field(ge=0, description="byte offset in the golden section's content")


class Tolerance(Strict):
    """The health check passes when |got - want| <= atol + rtol*|want| everywhere and cosine >= min_cosine."""

    atol: float = Field(ge=0, description="absolute tolerance")
    rtol: float = Field(ge=0, description="relative tolerance")
    min_cosine: float = Field(ge=-1, le=1, description="lowest cosine similarity of got and want (flattened)")


class GoldenSet(Strict):
    """Inputs and the outputs the build host computed, for the agent's post-install health check."""

    method: Literal["predict", "embed", "logits"] = Field(
        description="model call: mlp predict(input), bert embed([input.0, input.1, ...]), bitnet logits(input)")
    section: str = Field(description="the section that holds the arrays")
    arrays: list[GoldenArray] = Field(description="inputs then the output")
    tolerance: Tolerance = Field(description="how close a device's output must be")
    backend: str = Field(description="kernel backend that computed the outputs on the build host")


class Sizes(Strict):
    parameters: int = Field(ge=0, description="elements in all tensors")
    ternary_weights: int = Field(ge=0, description="ternary weights (elements of ternary-base3 tensors)")
    ternary_stored_bytes: int = Field(ge=0, description="stored bytes of weights.ternary in a full bundle")
    ternary_bits_per_weight: float = Field(ge=0, description="8 * ternary_stored_bytes / ternary_weights")
    payload_content_bytes: int = Field(ge=0, description="bytes of all section contents")
    payload_stored_bytes: int = Field(ge=0, description="bytes of all sections in this bundle")
    full_payload_stored_bytes: int = Field(ge=0, description="bytes of all sections in the full bundle")


class DeltaInfo(Strict):
    base_release_sha256: str = Field(pattern=SHA256, description="release digest (release_digest()) of the base: "
                                                                 "the same for its full bundle and any delta of it")
    base_version: str = Field(pattern=RELEASE_VERSION, max_length=64, description="version of the base release")
    base_release: int = Field(ge=1, description="release counter of the base")


class Recipient(Strict):
    """One device a bundle is encrypted to (docs/adr/0011-encrypted-bundles.md)."""

    key_id: str = Field(pattern=SHA256, description="sha256 of the device's raw 32-byte X25519 public key, hex")
    ephemeral: str = Field(pattern=r"^[0-9a-f]{64}$", description="raw X25519 public key of the one-time "
                                                                  "ephemeral key used for this recipient, hex")
    wrapped_key: str = Field(pattern=r"^[0-9a-f]{96}$", description="the bundle's content key sealed with the "
                                                                    "AEAD under HKDF(X25519(ephemeral, device)), hex")


class EncryptionInfo(Strict):
    """Set when the payload sections are encrypted: every section's stored bytes are sealed chunks
    (stored_size / stored_sha256 describe the ciphertext; size / sha256 the decoded content)."""

    scheme: Literal["x25519-hkdf-sha256"] = Field(description="key agreement and key derivation")
    aead: Literal["aes-256-gcm", "chacha20-poly1305"] = Field(description="cipher of the key wrap and the chunks")
    chunk_bytes: int = Field(ge=1024, le=16 * 2**20, description="plaintext bytes per sealed chunk (each chunk "
                                                                 "grows by a 16-byte tag)")
    salt: str = Field(pattern=SHA256, description="32 random bytes of this file, hex: mixed into every section key")
    recipients: list[Recipient] = Field(min_length=1, max_length=100_000,
                                        description="devices that can decrypt, sorted by key id")

    @model_validator(mode="after")
    def _sorted_recipients(self):
        ids = [r.key_id for r in self.recipients]
        if ids != sorted(set(ids)):
            raise ValueError("recipients must be sorted by key id and distinct")
        return self


class BundleManifest(Strict):
    format: Literal["bitnet-edge-bundle"] = Field(default=FORMAT, description="file kind")
    format_version: Literal[1] = Field(default=FORMAT_VERSION, description="bumped on incompatible change")
    name: str = Field(pattern=MODEL_NAME, description="model name (one topic level and directory name on devices)")
    version: str = Field(pattern=RELEASE_VERSION, max_length=64,
                         description="release version: 1 to 4 dot-separated numbers, then an optional -PRERELEASE "
                                     "and +BUILD (semver style), e.g. 1.2.0, 2.0.0-rc.1, 1.4.2+jetson")
    release: int = Field(ge=1, description="release counter; strictly increases from one release to the next "
                                           "(agents refuse a lower one: rollback protection)")
    target: str = Field(description="build target, e.g. linux-aarch64, macos-arm64, jetson")
    created: int = Field(ge=0, description="unix time of the build (SOURCE_DATE_EPOCH when set)")
    model: ModelManifest = Field(description="the converted model's manifest: architecture, config, precision "
                                             "plan, tensor table of the 2-bit compute layout, provenance")
    tensors: list[WireTensor] = Field(description="every tensor as it travels")
    sections: list[Section] = Field(description="payload sections, in file order")
    libraries: list[NativeLibrary] = Field(description="native kernel libraries")
    cuda: CudaInfo | None = Field(default=None, description="CUDA kernels (targets with a GPU)")
    devices: list[DeviceProfile] = Field(description="device profiles this bundle is for")
    build: BuildInfo = Field(description="how it was built")
    golden: GoldenSet | None = Field(default=None, description="health-check vectors")
    sizes: Sizes = Field(description="sizes and bits per weight")
    delta: DeltaInfo | None = Field(default=None, description="set when sections are encoded against a base bundle")
    encryption: EncryptionInfo | None = Field(default=None, description="set when the payload is encrypted to "
                                                                        "device keys (left out of the JSON when "
                                                                        "not: readers older than it stay able to "
                                                                        "read unencrypted bundles)")
    signers: list[str] = Field(min_length=1, description="key ids (sha256 of the raw Ed25519 public key, hex) of "
                                                         "every signature in the signature block, sorted")

    def section(self, name: str) -> Section:
        for s in self.sections:
            if s.name == name:
                return s
        raise KeyError(name)

    @property
    def payload_size(self) -> int:
        return sum(s.stored_size for s in self.sections)

    @model_validator(mode="after")
    def _consistent(self):
        names = [s.name for s in self.sections]
        if len(set(names)) != len(names):
            raise ValueError("section names repeat")
        pos = 0
        for s in self.sections:
            if s.offset != pos:
                raise ValueError(f"section {s.name!r} starts at {s.offset}, expected {pos} (sections are contiguous)")
            pos += s.stored_size
        known = set(names)
        refs = [t.section for t in self.tensors] + [lib.section for lib in self.libraries]
        refs += [self.cuda.section] if self.cuda and self.cuda.section else []
        refs += [self.golden.section] if self.golden else []
        missing = sorted({r for r in refs if r not in known})
        if missing:
            raise ValueError(f"references to missing sections: {', '.join(missing)}")
        if self.signers != sorted(set(self.signers)) or any(len(k) != 64 for k in self.signers):
            raise ValueError("signers must be sorted, distinct, 64 hex digits each")
        if self.delta is None and any(s.encoding != "zstd" for s in self.sections):
            raise ValueError("sections with a delta encoding need delta (the base bundle)")
        content, stored = sum(s.size for s in self.sections), sum(s.stored_size for s in self.sections)
        if (self.sizes.payload_content_bytes, self.sizes.payload_stored_bytes) != (content, stored):
            raise ValueError(f"sizes say {self.sizes.payload_content_bytes} content and "
                             f"{self.sizes.payload_stored_bytes} stored bytes, the sections {content} and {stored}")
        from bitnet_edge.sdk.native.targets import TARGETS

        want = TARGETS[self.target].cpu_library_target if self.target in TARGETS else self.target
        if not self.libraries or any(lib.target != want for lib in self.libraries):
            raise ValueError(f"a {self.target} bundle carries one {want} library, not "
                             f"{[lib.target for lib in self.libraries]}")
        files = [lib.file for lib in self.libraries] + ([self.cuda.file] if self.cuda and self.cuda.file else [])
        if len(set(files)) != len(files):
            raise ValueError(f"native files repeat: {files}")
        return self


def canonical_json(model: Strict) -> bytes:
    """The signed byte form: sorted keys, no whitespace, ASCII only."""
    d = model.model_dump(mode="json")
    if isinstance(model, BundleManifest) and model.encryption is None:
        d.pop("encryption")  # unencrypted bundles keep the bytes they had before the field existed
    return json.dumps(d, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False).encode("ascii")


def release_digest(m: BundleManifest) -> str:
    """sha256 naming a release's content, not how its sections are encoded: the full bundle and a
    delta bundle of one release share it, so a delta can name its base whichever way the base was
    delivered.  Canonical JSON of the manifest with each section reduced to (name, kind, size,
    sha256) and without ``delta``, ``encryption`` and ``sizes.payload_stored_bytes``."""
    d = m.model_dump(mode="json")
    d["sections"] = [{k: s[k] for k in ("name", "kind", "size", "sha256")} for s in d["sections"]]
    d["sizes"].pop("payload_stored_bytes")
    d.pop("delta")
    d.pop("encryption")  # each bundle file has its own content key: the full and delta bundles still share it
    return hashlib.sha256(json.dumps(d, sort_keys=True, separators=(",", ":"), ensure_ascii=True,
                                     allow_nan=False).encode("ascii")).hexdigest()


#: manifest bounds checked before the JSON parser runs (a signed manifest is read by `inspect`
#: before any signature check, and a trusted signer can still make mistakes)
MAX_MANIFEST_BYTES = 64 * 2**20  # bytes (the container's own cap, Limits.max_manifest_bytes)
MAX_MANIFEST_DEPTH = 32  # nesting of objects and arrays (bundle manifests use about 8)
_JSON_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"')
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")


_OPEN_CLOSE = bytes.maketrans(b"{}", b"[]")


def json_depth(data: bytes, limit: int | None = None) -> int:
    """Deepest nesting of ``[`` / ``{`` in JSON text, strings skipped, never with the recursive
    parser and without numpy (the agent checks manifests and must not keep it imported: ADR 0021):
    each pass of a C-speed ``bytes.replace`` removes the innermost pairs, so the passes count the
    depth.  Counting stops after ``limit`` + 1 passes (returns ``limit + 1``).  Unbalanced text
    (not JSON anyway) may read deeper than it is."""
    s = _JSON_STRING.sub(b"", data).translate(_OPEN_CLOSE, _NOT_BRACKETS)
    depth = 0
    while True:
        if limit is not None and b"[" * (limit + 1 - depth) in s:  # that many opens in a row nest
            return limit + 1
        t = s.replace(b"[]", b"")
        if len(t) == len(s):
            break
        depth += 1
        s = t
        if limit is not None and depth > limit:
            return limit + 1
    return depth + s.count(b"[")  # unbalanced: opens never closed


def _no_duplicates(pairs: list[tuple[str, object]]) -> dict:
    d = dict(pairs)
    if len(d) != len(pairs):
        seen, dup = set(), None
        for k, _ in pairs:
            if k in seen:
                dup = k
                break
            seen.add(k)
        raise BundleFormatError("manifest", "manifest-duplicate-key", f"key {dup!r} appears twice in one object")
    return d


def parse_manifest(data: bytes) -> BundleManifest:
    """Manifest bytes -> :class:`BundleManifest`.  Before the JSON parser runs: size, ASCII and
    nesting depth are bounded; duplicate keys are refused; the format version is checked before the
    model; and the bytes must be the manifest's canonical JSON (the one byte form that is signed)."""
    if len(data) > MAX_MANIFEST_BYTES:
        raise BundleFormatError("manifest", "manifest-too-large", f"{len(data)} bytes, over {MAX_MANIFEST_BYTES}")
    if not data.isascii():
        raise BundleFormatError("manifest", "manifest-not-canonical", "canonical JSON is ASCII only")
    depth = json_depth(data, limit=MAX_MANIFEST_DEPTH)
    if depth > MAX_MANIFEST_DEPTH:
        raise BundleFormatError("manifest", "manifest-too-deep", f"nested deeper than {MAX_MANIFEST_DEPTH}")
    try:
        raw = json.loads(data, object_pairs_hook=_no_duplicates)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise BundleFormatError("manifest", "manifest-json", f"not JSON ({str(exc).splitlines()[0][:200]})") from None
    if not isinstance(raw, dict) or raw.get("format") != FORMAT:
        raise BundleFormatError("manifest", "manifest-invalid", f"not a bitnet-edge bundle manifest "
                                                                f"(format != {FORMAT!r})")
    if raw.get("format_version") != FORMAT_VERSION:
        raise UnsupportedVersion("manifest", raw.get("format_version"), FORMAT_VERSION)
    try:
        m = parse_model(BundleManifest, raw, source="bundle manifest")
    except FormatError as exc:
        raise BundleFormatError("manifest", "manifest-invalid", str(exc)) from None
    if canonical_json(m) != data:
        raise BundleFormatError("manifest", "manifest-not-canonical", "the manifest bytes are not its canonical JSON "
                                                                      "(sorted keys, no whitespace, no defaults "
                                                                      "left out or added)")
    return m
