"""Native builds per target, and (with [bundles]) signed device bundles."""

from bitnet_edge.packagers.targets import TARGETS, Target, build_library, host_target

__all__ = ["TARGETS", "Target", "build_library", "host_target"]
