"""The native kernel library, loaded with cffi in ABI mode.

:func:`load` finds, opens and checks the library once; :mod:`._binding` wraps
each C function 1:1 with type and status checks.
"""

from bitnet_edge.sdk.native._loader import Library, library_candidates, load

__all__ = ["Library", "library_candidates", "load"]
