"""The worker zygote: one pre-imported process that forks a model worker per model (ADR 0021).

Every model runs in its own worker process, so a crash in one model's code (or in the C kernel
it ships) takes only that model down.  Started cold, each worker paid ~66 MB for its own
interpreter, numpy, cffi, pydantic and the SDK.  The zygote imports all that once, with no
thread running, freezes the garbage collector (``gc.freeze``: collections no longer write to the
imported objects' pages) and forks: the children share those pages copy-on-write, and what one
more model costs is its own heap, its activations and the pages of its mmap'd weights.

Where the agent can (a single thread running), the zygote is not a fresh interpreter but a fork
of the agent itself (``Zygote.prefork``, :func:`forked_main`): the agent's interpreter, imports
and heap (frozen with ``gc.freeze`` before the fork) are then shared by the agent, the zygote and
every worker, and the zygote imports what workers need on its first fork.

Threads: the zygote starts none before forking (BLAS pools are capped at one thread by the
environment before numpy is imported, and the native kernel's pool is started by the worker
after the fork, when it loads its slot's library).

Protocol on the control socket (AF_UNIX, SOCK_SEQPACKET, from the agent):
request ``{"argv": [...], "env": {...}, "features": [...]}`` with two file descriptors (the child's stdout and
stderr); answer ``{"pid": N}`` with a pidfd for the child (or ``{"error": "..."}``).  The zygote
exits when the agent closes its end (or dies); each child exits when the zygote is gone.
"""

from __future__ import annotations

import array
import json
import os
import signal
import socket
import sys

_BLAS_ENV = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "VECLIB_MAXIMUM_THREADS",
             "NUMEXPR_NUM_THREADS")
MAX_MSG = 64 * 1024


def _recv(sock: socket.socket, nfds: int) -> tuple[bytes, list[int]]:
    fds = array.array("i")
    msg, anc, _flags, _addr = sock.recvmsg(MAX_MSG, socket.CMSG_SPACE(nfds * fds.itemsize))
    for level, kind, data in anc:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(data[: len(data) - (len(data) % fds.itemsize)])
    return msg, list(fds)


def _child(ctl: socket.socket, req: dict, out_fd: int, err_fd: int) -> None:
    """In the forked child: become a worker (never returns)."""
    code = 70
    try:
        ctl.close()
        os.dup2(out_fd, 1)
        os.dup2(err_fd, 2)
        os.close(out_fd)
        os.close(err_fd)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        os.environ.update({str(k): str(v) for k, v in (req.get("env") or {}).items()})
        import gc

        gc.enable()
        from bitnet_edge.agent import worker

        code = worker.main([str(a) for a in req["argv"]])
    except BaseException as exc:  # noqa: BLE001 - report, never fall back into the zygote's loop
        try:
            os.write(2, f"zygote child: {type(exc).__name__}: {exc}\n".encode())
        except OSError:
            pass
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        except Exception:  # noqa: BLE001
            pass
        os._exit(code or 0)


#: imported once in the zygote: what a worker imports to load, check and serve any model (not the
#: bundle decoder: zstandard, the codec and the decryption primitives run in the agent's unpack child)
PRELOAD = ("numpy", "cffi", "cffi.cparser", "pycparser", "mmap", "subprocess", "unicodedata",
           "waitress.server", "waitress.channel", "waitress.task", "bitnet_edge.agent.worker", "bitnet_edge.sdk",
           "bitnet_edge.sdk.models.loader", "bitnet_edge.sdk.models.mlp", "bitnet_edge.sdk.models.bert",
           "bitnet_edge.sdk.models.decoder", "bitnet_edge.sdk.models.graph", "bitnet_edge.sdk.models.sampling",
           "bitnet_edge.sdk.modeldir", "bitnet_edge.sdk.safetensors_io", "bitnet_edge.sdk.native._loader",
           "bitnet_edge.sdk.native._binding", "bitnet_edge.sdk.bundle.golden", "bitnet_edge.sdk.bundle.container",
           "bitnet_edge.sdk.bundle.manifest", "bitnet_edge.sdk.chat", "bitnet_edge.sdk.cuda")

#: imported before the first fork of a worker whose model needs them (the request's ``features``):
#: a device serving only small models never maps tokenizers (~4 MB), its LLM workers share one copy
FEATURES = {"tokenizer": ("tokenizers", "bitnet_edge.sdk.tokenizer")}


def _preload() -> None:
    import importlib

    for name in PRELOAD:
        try:
            importlib.import_module(name)
        except Exception:  # noqa: BLE001 - an optional module missing here is imported (or not) by the worker
            pass
    try:  # every worker declares the kernel header's API with cffi: parse it here, once, and share it
        from bitnet_edge.sdk.native._loader import _header_candidates, ffi_for_header

        header = next((h for h in _header_candidates() if h.is_file()), None)
        if header is not None:
            ffi_for_header(header.read_text())
    except Exception:  # noqa: BLE001
        pass


def _import_features(names, loaded: set[str]) -> None:
    """Import what the request's features need (once each), then freeze the new objects too."""
    import gc
    import importlib

    new = [n for n in names if isinstance(n, str) and n in FEATURES and n not in loaded]
    if not new:
        return
    for name in new:
        loaded.add(name)
        for mod in FEATURES[name]:
            try:
                importlib.import_module(mod)
            except Exception:  # noqa: BLE001 - the worker imports it (or reports why not) itself
                pass
    gc.collect()
    gc.freeze()


def _ready_to_fork() -> None:
    """Import what workers need (once), then freeze: collections no longer walk (and write to)
    the imported objects, so their pages stay shared with every worker."""
    import gc

    _preload()
    gc.collect()
    gc.freeze()  # imported objects move to a generation no collection walks (their pages stay shared)
    gc.disable()
    threads = len(os.listdir("/proc/self/task")) if os.path.isdir("/proc/self/task") else 1
    if threads != 1:  # forking a process with threads can copy a lock some thread holds
        os.write(2, f"zygote: {threads} threads after the imports; workers are forked anyway\n".encode())


def serve(ctl: socket.socket, preloaded: bool) -> int:
    """Say ready, then fork a worker per request until the agent closes its end.  Not
    ``preloaded`` (a zygote forked from the agent): import what workers need on the first request,
    so a device without models never pays for numpy."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C goes to the agent, which stops its workers
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # children are reaped by the kernel; the agent holds pidfds
    try:
        ctl.sendmsg([json.dumps({"ready": True, "pid": os.getpid()}).encode()])
    except OSError:
        return 0
    features: set[str] = set()
    while True:
        try:
            msg, fds = _recv(ctl, 2)
        except (OSError, InterruptedError):
            return 0
        if not msg:
            return 0  # the agent closed its end (or died)
        try:
            req = json.loads(msg)
            if len(fds) != 2 or not isinstance(req, dict) or not isinstance(req.get("argv"), list):
                raise ValueError("a request is a JSON object with argv and two file descriptors")
        except ValueError as exc:
            for fd in fds:
                os.close(fd)
            ctl.sendmsg([json.dumps({"error": str(exc)}).encode()])
            continue
        if not preloaded:
            _ready_to_fork()
            preloaded = True
        _import_features(req.get("features") or (), features)
        pid = os.fork()
        if pid == 0:
            _child(ctl, req, fds[0], fds[1])
        for fd in fds:
            os.close(fd)
        try:
            pidfd = os.pidfd_open(pid)
        except OSError as exc:
            ctl.sendmsg([json.dumps({"pid": pid, "error": f"pidfd_open: {exc}"}).encode()])
            os.kill(pid, signal.SIGKILL)
            continue
        try:
            ctl.sendmsg([json.dumps({"pid": pid}).encode()],
                        [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [pidfd]))])
        finally:
            os.close(pidfd)


def forked_main(ctl: socket.socket) -> int:
    """In a child the agent forked (before it started any thread): become the zygote.  The agent's
    interpreter, its imports and their heap are shared with it copy-on-write (frozen by the agent
    before the fork), so the zygote adds only what workers import on top.  File descriptors the
    agent opened close-on-exec are closed here as an exec would have."""
    try:
        with open("/proc/self/comm", "w") as f:  # `ps` tells it from the agent
            f.write("bne-zygote")
    except OSError:
        pass
    keep = {0, 1, 2, ctl.fileno()}
    try:
        fds = [int(x) for x in os.listdir("/proc/self/fd")]
    except OSError:
        fds = []
    for fd in fds:
        if fd in keep:
            continue
        try:
            if not os.get_inheritable(fd):
                os.close(fd)
        except OSError:
            pass
    devnull = os.open(os.devnull, os.O_RDWR)
    os.dup2(devnull, 0)
    os.dup2(devnull, 1)
    os.close(devnull)
    for name in _BLAS_ENV:
        os.environ.setdefault(name, "1")
    os.environ.pop("BITNET_EDGE_LIBRARY", None)
    import gc

    gc.disable()  # the agent froze its objects before forking; nothing here needs collecting yet
    return serve(ctl, preloaded=False)


def main(argv=None) -> int:
    ctl = socket.socket(fileno=int((argv or sys.argv[1:])[0]))
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _ready_to_fork()
    return serve(ctl, preloaded=True)


if __name__ == "__main__":
    for _name in _BLAS_ENV:
        os.environ.setdefault(_name, "1")
    sys.exit(main())
