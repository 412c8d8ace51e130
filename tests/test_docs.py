"""The documentation that is generated from the code is what the code says."""

from __future__ import annotations

from pathlib import Path

from streams.config import Settings
from streams.config_doc import reference

ROOT = Path(__file__).resolve().parents[1]


def test_the_configuration_reference_is_the_settings() -> None:
    doc = (ROOT / "docs" / "CONFIGURATION.md").read_text(encoding="utf-8")
    assert doc == reference(), "docs/CONFIGURATION.md is stale: run `make docs`"


def test_the_reference_names_every_setting_with_its_meaning() -> None:
    doc = reference()
    for section, sfield in Settings.model_fields.items():
        assert f"## `{section}`" in doc
        for name, field in sfield.annotation.model_fields.items():  # type: ignore[union-attr]
            assert f"| `{name}` |" in doc
            assert field.description, f"{section}.{name} has no description"
