"""The strict pydantic base every manifest, config and protocol message derives from.

Every such model derives from :class:`Strict` (``extra="forbid"``, frozen).  Its JSON schema is
generated into ``docs/schemas/<name>.json`` by ``bitnet-edge schemas --write`` (``make schemas``)
from the registry in :mod:`bitnet_edge.schemas` (the CLI root: it names models of every role);
a test fails when a committed schema is stale.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, ValidationError

from bitnet_edge.sdk.errors import FormatError

__all__ = ["Strict", "parse_model"]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def parse_model(cls: type[BaseModel], data, *, source: str):
    """Validate ``data`` (dict or JSON text/bytes) as ``cls``; errors name ``source`` and dotted fields."""
    try:
        if isinstance(data, (str, bytes, bytearray)):
            return cls.model_validate_json(data)
        return cls.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or '<root>'}: {e['msg']}" for e in exc.errors()
        )
        raise FormatError(f"{source}: invalid {cls.__name__}: {problems}") from None
