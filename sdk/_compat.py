"""Standard-library names that moved between the Python versions bitnet-edge runs on (3.10 to 3.13)."""

from __future__ import annotations

import sys

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10: the same parser as the tomli distribution (a dependency there, pyproject.toml)
    import tomli as tomllib

__all__ = ["tomllib"]
