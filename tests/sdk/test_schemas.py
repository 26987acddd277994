"""Committed JSON schemas match the pydantic models (regenerate: make schemas)."""

import pytest

from bitnet_edge import schemas


@pytest.mark.parametrize("name", sorted(schemas.SCHEMAS))
def test_committed_schema_is_current(name):
    path = schemas.SCHEMA_DIR / f"{name}.json"
    assert path.is_file(), f"{path} missing: run `make schemas`"
    assert path.read_text() == schemas.schema_documents()[name], f"{path} is stale: run `make schemas`"


def test_models_forbid_extra_fields():
    import importlib

    for ref in schemas.SCHEMAS.values():
        mod, cls = ref.split(":")
        model = getattr(importlib.import_module(mod), cls)
        assert model.model_config.get("extra") == "forbid", ref
