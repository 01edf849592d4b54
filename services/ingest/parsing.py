"""Small, strict parsers shared by the adapters: timestamps, values, field access with a path for errors."""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Any


class InputError(ValueError):
    """Input that cannot become a record; `field` names the offending field (a JSON path, a CSV column)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}" if field else message)
        self.field = field
        self.message = message


# Epoch numbers are told apart by size: seconds until ~5138 AD are below 1e11, milliseconds below 1e14, etc.
def epoch_to_ms(number: float, field: str) -> int:
    if isinstance(number, bool) or not math.isfinite(number) or number < 0:
        raise InputError(field, f"expected a timestamp, got {number!r}")
    if number < 1e11:
        return int(round(number * 1000))
    if number < 1e14:
        return int(number)
    if number < 1e17:
        return int(number // 1000)
    if number < 1e20:
        return int(number // 1_000_000)
    raise InputError(field, f"timestamp {number!r} is out of range")


def parse_timestamp(raw: Any, field: str) -> int:
    """Epoch seconds/ms/µs/ns (number or digit string) or ISO 8601 (naive = UTC) -> epoch milliseconds."""
    if isinstance(raw, bool) or raw is None:
        raise InputError(field, f"expected a timestamp (ISO 8601 or epoch), got {raw!r}")
    if isinstance(raw, int | float):
        return epoch_to_ms(float(raw), field)
    if isinstance(raw, str):
        text = raw.strip()
        if not text:
            raise InputError(field, "expected a timestamp, got an empty string")
        try:
            return epoch_to_ms(float(text), field)
        except ValueError:
            pass
        try:
            moment = datetime.fromisoformat(text)
        except ValueError:
            raise InputError(field, f"expected a timestamp (ISO 8601 or epoch), got {raw[:64]!r}") from None
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
        try:
            return int(moment.timestamp() * 1000)
        except (OverflowError, OSError, ValueError):
            raise InputError(field, f"timestamp {raw[:64]!r} is out of range") from None
    raise InputError(field, f"expected a timestamp (ISO 8601 or epoch), got {type(raw).__name__}")


def check_value(raw: Any, field: str) -> float | str | bool | None:
    """A reading's value as the schema takes it: finite number, string, boolean or null."""
    if raw is None or isinstance(raw, bool | str):
        if isinstance(raw, str) and len(raw) > 1024:
            raise InputError(field, "string value longer than 1024 characters")
        return raw
    if isinstance(raw, int | float):
        try:
            number = float(raw)
        except OverflowError:
            raise InputError(field, "number too large") from None
        if not math.isfinite(number):
            raise InputError(field, f"expected a finite number, got {raw!r}")
        return number
    raise InputError(field, f"expected a number, string, boolean or null, got {type(raw).__name__}")


def optional_str(raw: Any, field: str, max_len: int = 256) -> str | None:
    if raw is None:
        return None
    if isinstance(raw, bool) or not isinstance(raw, str | int | float):
        raise InputError(field, f"expected a string, got {type(raw).__name__}")
    text = str(raw)
    if len(text) > max_len:
        raise InputError(field, f"longer than {max_len} characters")
    return text


def required_str(raw: Any, field: str, max_len: int = 256) -> str:
    text = optional_str(raw, field, max_len)
    if text is None or not text.strip():
        raise InputError(field, "required, and must be a non-empty string")
    return text


def first_present(data: dict, names: tuple[str, ...]) -> tuple[str | None, Any]:
    for name in names:
        if name in data:
            return name, data[name]
    return None, None
