"""The configuration reference (``docs/CONFIGURATION.md``), generated from the settings.

Every section and field of :class:`streams.config.Settings`, with its type, its
default, its bounds and its description, as the code has them: the document is
written by this module (``make docs``, or ``python -m streams.config_doc >
docs/CONFIGURATION.md``) and a test fails when the two differ, so the reference
never goes stale.
"""

from __future__ import annotations

import sys
from typing import Any, get_args, get_origin

import yaml
from pydantic import BaseModel
from pydantic.fields import FieldInfo

from streams.config import Settings

__all__ = ["reference"]

HEADER = """# Configuration reference

<!-- Generated from streams/config.py by `make docs`; tests/test_docs.py fails when it is
stale. Do not edit by hand. -->

One YAML file (`sentinelle worker --config F`), validated on load; every setting
has a default, so no file is needed. Environment variables override the file:
`SENTINELLE_<SECTION>__<FIELD>` (for example `SENTINELLE_WINDOWS__SIZE_S=30`), and
`KAFKA_BOOTSTRAP_SERVERS` for `kafka.bootstrap_servers`. A bad file stops start-up
with a message naming the field:

```
sentinelle: bad configuration
config file 'bad.yaml': field 'windows.size_s': Input should be greater than 0 (got -5)
config file 'bad.yaml': field 'latency.p99_treshold_ms': unknown field
```
"""


def _type(annotation: Any) -> str:
    """A field's type, as a reader writes it in YAML terms."""
    origin = get_origin(annotation)
    if origin is None:
        return getattr(annotation, "__name__", str(annotation)).replace("NoneType", "null")
    args = get_args(annotation)
    name = getattr(origin, "__name__", str(origin))
    if name == "Literal":
        return " \\| ".join(f"`{a}`" for a in args)
    if name in ("Union", "UnionType"):
        return " or ".join(_type(a) for a in args)
    if name in ("list", "tuple"):
        return f"list of {_type(args[0])}" if args else "list"
    return name


def _bounds(field: FieldInfo) -> str:
    out = []
    for m in field.metadata:
        for attr, sign in (("ge", "≥"), ("gt", ">"), ("le", "≤"), ("lt", "<"),
                           ("min_length", "length ≥")):
            value = getattr(m, attr, None)
            if value is not None:
                out.append(f"{sign} {value:g}" if isinstance(value, float) else f"{sign} {value}")
    return ", ".join(out)


def _default(field: FieldInfo) -> Any:
    value = field.get_default(call_default_factory=True)
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, list):
        return [v.model_dump(mode="json") if isinstance(v, BaseModel) else v for v in value]
    if isinstance(value, tuple):
        return list(value)
    return value


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def reference() -> str:
    """The whole document."""
    parts = [HEADER]
    defaults: dict[str, Any] = {}
    for section, sfield in Settings.model_fields.items():
        model = sfield.annotation
        assert isinstance(model, type) and issubclass(model, BaseModel)
        doc = (model.__doc__ or "").strip().split("\n\n")[0].replace("\n", " ")
        parts.append(f"\n## `{section}`\n")
        if doc and not doc.startswith(("Usage docs", "!!! abstract")):
            parts.append(f"{doc}\n")
        parts.append("\n| field | type | default | bounds | meaning |\n|---|---|---|---|---|\n")
        values: dict[str, Any] = {}
        for name, field in model.model_fields.items():
            default = _default(field)
            values[name] = default
            shown = yaml.safe_dump(default, default_flow_style=True, width=10_000).strip()
            shown = shown.removesuffix("...").strip()
            parts.append(f"| `{name}` | {_type(field.annotation)} | `{_cell(shown)}` | "
                         f"{_bounds(field)} | {_cell(field.description or '')} |\n")
        defaults[section] = values
    parts.append("\n## Every default, as one file\n\n```yaml\n")
    parts.append(yaml.safe_dump(defaults, sort_keys=False, default_flow_style=False))
    parts.append("```\n")
    return "".join(parts)


if __name__ == "__main__":
    sys.stdout.write(reference())
