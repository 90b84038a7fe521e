"""The ``afs.event/1`` schema: its name, sent in every body, and its JSON Schema file.

The file ships inside the package so a receiver can validate against exactly the
version it was written for: ``afs_webhook.schema.load_schema()``, or copy
``afs_webhook/schemas/afs.event.1.json`` into a receiver in another language.
Within ``afs.event/1`` fields are only ever added; a change that removes or
redefines one is ``afs.event/2``.
"""

from __future__ import annotations

import json
from typing import Any

#: The value of every body's ``schema`` field.
SCHEMA = "afs.event/1"
#: The schema file's name inside the package.
SCHEMA_FILE = "schemas/afs.event.1.json"


def load_schema() -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of ``afs.event/1`` bodies."""
    from importlib import resources  # here: a sender never reads the file, and loading this costs it ~3 ms

    text = resources.files("afs_webhook").joinpath(SCHEMA_FILE).read_text(encoding="utf-8")
    schema: dict[str, Any] = json.loads(text)
    return schema
