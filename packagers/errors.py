"""The build host's errors (toolchains, targets, packaging), under the distribution's one root
:class:`~bitnet_edge.sdk.errors.BitnetEdgeError` (``reason``, ``detail``); the bundle contract's
errors are in :mod:`bitnet_edge.sdk.bundle.errors`.

Standard library only: ``setup.py`` loads ``targets.py`` (which raises the build errors) from the
source tree before any dependency is importable.

    BitnetEdgeError (sdk.errors)
    └── PackagerError
        ├── ToolchainMissing        target, tool, package, install  (also RuntimeError)   toolchain-missing
        ├── UnknownToolchain        toolchain, known            (also ValueError)     unknown-toolchain
        ├── BuildFailed             target, command, output     (also RuntimeError)   build-failed
        ├── UnknownTarget           target, known               (also KeyError)       unknown-target
        └── PackagingError          no-devices, no-keys, release-not-increasing, ...
"""

from __future__ import annotations

from bitnet_edge.sdk.errors import BitnetEdgeError

__all__ = ["PackagerError", "ToolchainMissing", "UnknownToolchain", "BuildFailed", "UnknownTarget", "PackagingError"]


class PackagerError(BitnetEdgeError):
    """Base of the errors only the build host raises."""


class ToolchainMissing(PackagerError, RuntimeError):
    """A compiler or linker for a target is not installed.  ``install`` is the command that
    installs it (``apt-get install PACKAGE`` for the system toolchain, a pip command for zig)."""

    fields = ("target", "tool", "package", "install")

    def __init__(self, target: str, tool: str, package: str, install: str | None = None):
        self.target, self.tool, self.package = target, tool, package
        self.install = install or f"apt-get install {package}"
        super().__init__("toolchain-missing", f"target {target!r} needs {tool!r}, which is not installed; "
                                              f"install it with: {self.install}")


class UnknownToolchain(PackagerError, ValueError):
    """A toolchain name other than the ones targets.py knows (zig, system)."""

    fields = ("toolchain", "known")

    def __init__(self, toolchain: str, known: list[str]):
        self.toolchain, self.known = toolchain, list(known)
        super().__init__("unknown-toolchain", f"unknown toolchain {toolchain!r}; known: {', '.join(self.known)}")


class BuildFailed(PackagerError, RuntimeError):
    """The compiler or linker ran and failed (``detail`` holds the command and its output)."""

    fields = ("target",)

    def __init__(self, target: str, command: list[str], output: str):
        self.target, self.command, self.output = target, command, output
        super().__init__("build-failed", f"building {target!r} failed:\n$ {' '.join(command)}\n{output}")


class UnknownTarget(PackagerError, KeyError):
    """A target name that is not in the target table."""

    fields = ("target", "known")

    def __init__(self, target: str, known: list[str]):
        self.target, self.known = target, list(known)
        super().__init__("unknown-target", f"unknown target {target!r}; known: {', '.join(self.known)}")


class PackagingError(PackagerError):
    """Inputs to ``package`` that cannot make a bundle.

    ``reason``: ``no-devices`` | ``no-keys`` | ``release-not-increasing`` | ``base-is-delta`` |
    ``base-other-model`` | ``golden-failed`` | ``bad-version``.
    """
