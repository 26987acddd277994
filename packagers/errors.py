"""The build host's errors (toolchains, targets, packaging); the root and the bundle contract's
errors are in :mod:`bitnet_edge.sdk.bundle.errors`.

Standard library only: ``setup.py`` loads ``targets.py`` (which raises the build errors) from the
source tree before any dependency is importable.

    PackagerError (sdk.bundle.errors)
    ├── ToolchainMissing        target, tool, package       (also RuntimeError)
    ├── BuildFailed             target, command, output     (also RuntimeError)
    ├── UnknownTarget           target, known               (also KeyError)
    └── PackagingError          reason, detail
"""

from __future__ import annotations

from bitnet_edge.sdk.bundle.errors import PackagerError

__all__ = ["ToolchainMissing", "BuildFailed", "UnknownTarget", "PackagingError"]


class ToolchainMissing(PackagerError, RuntimeError):
    """A compiler or linker for a target is not installed."""

    def __init__(self, target: str, tool: str, package: str):
        super().__init__(
            f"target {target!r} needs {tool!r}, which is not on PATH; "
            f"install it with: apt-get install {package}"
        )
        self.target, self.tool, self.package = target, tool, package


class BuildFailed(PackagerError, RuntimeError):
    """The compiler or linker ran and failed."""

    def __init__(self, target: str, command: list[str], output: str):
        super().__init__(f"building {target!r} failed:\n$ {' '.join(command)}\n{output}")
        self.target, self.command, self.output = target, command, output


class UnknownTarget(PackagerError, KeyError):
    """A target name that is not in the target table."""

    def __init__(self, target: str, known: list[str]):
        self.target, self.known = target, list(known)
        super().__init__(f"unknown target {target!r}; known: {', '.join(self.known)}")

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0])


class PackagingError(PackagerError):
    """Inputs to ``package`` that cannot make a bundle.

    ``reason``: ``no-devices`` | ``no-keys`` | ``release-not-increasing`` | ``base-is-delta`` |
    ``base-other-model`` | ``golden-failed`` | ``bad-version``.
    """

    def __init__(self, reason: str, detail: str):
        self.reason, self.detail = reason, detail
        super().__init__(f"{reason}: {detail}")
