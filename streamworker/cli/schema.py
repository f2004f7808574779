"""``streamworker schema export [--out DIR]``: the JSON Schema of every task contract.

Without ``--out`` one JSON document (task type -> schema) goes to stdout; with it, one file
``<task_type>.schema.json`` per task type is written to DIR, beside an ``index.json``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import msgspec
import typer

from ..registry import Registry, default_registry, load_handler_modules
from . import app, fail, load_settings

schema_app = typer.Typer(help="Task contract schemas.", no_args_is_help=True)
app.add_typer(schema_app, name="schema")

_DRAFT = "https://json-schema.org/draft/2020-12/schema"


def contract_schemas(registry: Registry) -> dict[str, dict[str, Any]]:
    """Task type -> JSON Schema of its payload (any JSON object for a type without one)."""
    schemas: dict[str, dict[str, Any]] = {}
    for spec in registry:
        if spec.contract is None:
            schema: dict[str, Any] = {"type": "object"}
        else:
            schema = msgspec.json.schema(spec.contract)
        schemas[spec.task_type] = {"$schema": _DRAFT, "title": spec.task_type, **schema}
    return schemas


@schema_app.command("export")
def export(
    out: Annotated[
        Path | None, typer.Option("--out", help="Directory for one file per task type.")
    ] = None,
) -> None:
    """Write the JSON Schema of every task contract."""
    settings = load_settings()
    try:
        load_handler_modules(settings.handler_modules)
    except ImportError as exc:
        fail(str(exc))
    schemas = contract_schemas(default_registry)
    if out is None:
        print(json.dumps(schemas, indent=2, sort_keys=True))
        return
    try:
        out.mkdir(parents=True, exist_ok=True)
        for task_type, schema in schemas.items():
            (out / f"{task_type}.schema.json").write_text(
                json.dumps(schema, indent=2, sort_keys=True) + "\n"
            )
        index = {t: f"{t}.schema.json" for t in schemas}
        (out / "index.json").write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
    except OSError as exc:
        fail(f"cannot write schemas to {out}: {exc.strerror or type(exc).__name__}")
    print(f"wrote {len(schemas)} schemas to {out}", flush=True)
