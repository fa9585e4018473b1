"""Reading validated fields from parsed JSON, with messages that name the offending field."""

from __future__ import annotations

import json
from typing import Any, NoReturn


class FieldReader:
    """``Invalid {what} field {path}={value}: {why}`` and ``Invalid {what}: missing field {path}``."""

    def __init__(self, what: str, error: type[Exception]) -> None:
        self.what, self.error = what, error

    def fail(self, path: str, value: Any, why: str) -> NoReturn:
        raise self.error(f"Invalid {self.what} field {path}={json.dumps(value)}: {why}")

    def get(self, d: Any, key: str, path: str) -> Any:
        if not isinstance(d, dict):
            self.fail(path, d, "must be an object")
        if key not in d:
            raise self.error(f"Invalid {self.what}: missing field {f'{path}.' if path else ''}{key}")
        return d[key]

    def document(self, d: Any, schema_version: int) -> dict:
        """The parsed file as an object of the schema version this code reads."""
        if not isinstance(d, dict):
            raise self.error(f"Invalid {self.what}: the file must hold a JSON object")
        version = self.get(d, "schema_version", "")
        if version != schema_version:
            self.fail("schema_version", version, f"this version of thor-plan reads schema_version {schema_version}")
        return d
