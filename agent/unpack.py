"""Decode, verify and unpack a bundle in a short-lived child process (ADR 0021, memory).

    python -m bitnet_edge.agent.unpack        (the agent writes one JSON request line on stdin)

Installing a bundle needs the decoder: numpy, zstandard, cffi, the payload codec (~12 MB of heap
and the pages of their libraries).  Done in the agent, all of that stays imported for the
agent's whole life after its first install.  The agent therefore has a child do it: the child
runs :func:`bitnet_edge.sdk.bundle.install.install_bundle` into the staging slot and exits, and
the agent keeps only what it had at idle.

Request (one JSON line on stdin): ``bundle``, ``dest``, ``trusted`` (the release signers' raw
Ed25519 public keys, hex: exactly the keys the agent trusts, not re-read from files), ``base``
(a delta's base: a bundle file or an installed directory, or null), ``device_key`` (the
configured device key's spec, only for an encrypted bundle: a file or a ``python:`` hook, loaded
by the child), ``max_content_bytes``.
Answer (one JSON line on stdout): ``{"ok": true}``, or ``{"error": {...}}`` with the
:class:`~bitnet_edge.sdk.errors.BitnetEdgeError` the decoder raised (module, class, reason,
detail, attributes), which :func:`unpack_bundle` raises again in the agent as the same class
with the same reason and detail; or ``{"crash": "..."}`` for anything else.

The child exits when its stdin reaches its end (the agent died, or gave up on it), so an
orphaned unpacker never writes into a slot after its agent is gone.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from bitnet_edge.agent.errors import InstallRejected
from bitnet_edge.sdk.errors import BitnetEdgeError

__all__ = ["unpack_bundle", "main", "error_to_dict", "error_from_dict"]

#: modules whose BitnetEdgeError subclasses cross from the child to the agent as themselves
ERROR_MODULES = ("bitnet_edge.sdk.errors", "bitnet_edge.sdk.bundle.errors", "bitnet_edge.agent.errors")
MAX_REQUEST = 1 << 20


def error_to_dict(exc: BitnetEdgeError) -> dict:
    attrs = {}
    for k, v in vars(exc).items():
        if k in ("reason", "detail") or k.startswith("_"):
            continue
        try:
            json.dumps(v)
        except (TypeError, ValueError):
            continue
        attrs[k] = v
    return {"module": type(exc).__module__, "type": type(exc).__name__, "reason": exc.reason,
            "detail": exc.detail, "attrs": attrs}


def error_from_dict(d: dict) -> BitnetEdgeError:
    """The child's error, as the same class (from :data:`ERROR_MODULES` only) with the same
    reason, detail and attributes; a plain BitnetEdgeError for a class it does not know."""
    import importlib

    cls = None
    if d.get("module") in ERROR_MODULES and isinstance(d.get("type"), str):
        cls = getattr(importlib.import_module(d["module"]), d["type"], None)
    if not (isinstance(cls, type) and issubclass(cls, BitnetEdgeError)):
        cls = BitnetEdgeError
    exc = cls.__new__(cls)
    BitnetEdgeError.__init__(exc, str(d.get("reason") or "internal"), str(d.get("detail") or ""))
    for k, v in (d.get("attrs") or {}).items():
        if isinstance(k, str) and k not in ("reason", "detail") and not k.startswith("_"):
            setattr(exc, k, v)
    return exc


def unpack_bundle(bundle: str | os.PathLike, dest: str | os.PathLike, trusted: list, *,
                  base: str | os.PathLike | None = None, device_key: str | None = None,
                  max_content_bytes: int | None = None, timeout: float = 3600.0, in_child: bool = True) -> None:
    """Verify and unpack ``bundle`` into ``dest`` in a child process.  Raises what the decoder
    raised (a BundleError, InstallError ...: the same class, reason and detail), or
    InstallRejected(``internal``, stage ``unpack``) if the child died or answered nothing.
    ``in_child=False``: the same request run in this process (an agent embedded in a program that
    has the decoder imported anyway, or a one-shot command: no memory to keep down, no interpreter
    to start)."""
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    req = {"bundle": str(bundle), "dest": str(dest), "base": None if base is None else str(base),
           "trusted": [k.public_bytes(Encoding.Raw, PublicFormat.Raw).hex() for k in trusted],
           "device_key": device_key, "max_content_bytes": max_content_bytes}
    if not in_child:
        _run(req)
        return
    env = dict(os.environ)
    for name in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        env.setdefault(name, "1")
    with tempfile.TemporaryFile() as err:
        proc = subprocess.Popen([sys.executable, "-m", "bitnet_edge.agent.unpack"], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=err, env=env)
        try:
            try:
                proc.stdin.write(json.dumps(req).encode() + b"\n")
                proc.stdin.flush()
            except BrokenPipeError:
                pass
            out = _read_answer(proc, timeout)
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
            for pipe in (proc.stdin, proc.stdout):
                try:
                    pipe.close()
                except OSError:
                    pass
        err.seek(0)
        tail = err.read()[-2000:].decode(errors="replace").strip()
    try:
        answer = json.loads(out.strip().splitlines()[-1]) if out.strip() else {}
    except (ValueError, IndexError):
        answer = {}
    if answer.get("ok") is True:
        return
    if isinstance(answer.get("error"), dict):
        raise error_from_dict(answer["error"])
    why = answer.get("crash") or (f"exited with status {proc.returncode}" if proc.returncode is not None else "")
    raise InstallRejected("internal", f"the bundle unpacker failed: {why}" + (f" ({tail.splitlines()[-1]})"
                                                                              if tail and not answer else ""),
                          "unpack")


def _read_answer(proc: subprocess.Popen, timeout: float) -> bytes:
    """stdout to its end (the child closes it when it exits), within ``timeout`` seconds."""
    import threading

    box: list[bytes] = []
    t = threading.Thread(target=lambda: box.append(proc.stdout.read(MAX_REQUEST)), daemon=True,
                         name="bne-unpack-out")
    t.start()
    t.join(timeout)
    if t.is_alive():
        proc.kill()
        t.join(10)
        raise InstallRejected("internal", f"the bundle unpacker took longer than {timeout:.0f} s", "unpack")
    return box[0] if box else b""


def _watch_parent() -> None:
    """Exit as soon as stdin ends: the agent died (or gave up on this child)."""
    import threading

    def watch():
        try:
            while sys.stdin.buffer.read(4096):
                pass
        except (OSError, ValueError):
            pass
        os._exit(3)

    threading.Thread(target=watch, daemon=True, name="bne-unpack-parent").start()


def _run(req: dict) -> None:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    from bitnet_edge.sdk.bundle.container import Limits
    from bitnet_edge.sdk.bundle.crypt import load_device_key
    from bitnet_edge.sdk.bundle.install import install_bundle

    trusted = [Ed25519PublicKey.from_public_bytes(bytes.fromhex(k)) for k in req["trusted"]]
    device_keys = [load_device_key(req["device_key"])] if req.get("device_key") else []
    install_bundle(Path(req["bundle"]), Path(req["dest"]), trusted, base=req.get("base"), check_host=True,
                   overwrite=True, device_keys=device_keys,
                   limits=Limits(max_content_bytes=req.get("max_content_bytes")))


def main() -> int:
    line = sys.stdin.buffer.readline(MAX_REQUEST)
    _watch_parent()
    try:
        req = json.loads(line)
        if not isinstance(req, dict):
            raise ValueError("the request is not a JSON object")
    except ValueError as exc:
        answer = {"crash": f"bad request: {exc}"}
    else:
        try:
            _run(req)
            answer = {"ok": True}
        except BitnetEdgeError as exc:
            answer = {"error": error_to_dict(exc)}
        except Exception as exc:  # noqa: BLE001 - the agent turns it into an `internal` outcome
            answer = {"crash": f"{type(exc).__name__}: {exc}"}
    sys.stdout.write(json.dumps(answer) + "\n")
    sys.stdout.flush()
    return 0 if "crash" not in answer else 1


if __name__ == "__main__":
    sys.exit(main())
