"""Unit codes (UN/CEFACT common codes, as the plant model and the line topics carry them) as operators read them."""

from __future__ import annotations

SYMBOLS: dict[str, str] = {
    "CEL": "°C", "FAH": "°F", "KEL": "K", "NU": "N·m", "RPM": "rpm", "P1": "%", "2X": "m/min", "MTS": "m/s",
    "C62": "", "GRM": "g", "KGM": "kg", "AMP": "A", "VLT": "V", "WTT": "W", "KWT": "kW", "SEC": "s", "MIN": "min",
    "2Z": "mV", "PAL": "Pa", "KPA": "kPa", "BAR": "bar", "LTR": "l", "MTR": "m", "HTZ": "Hz",
}


def symbol(unit_code: str | None) -> str:
    """`CEL` -> `°C`; an unknown code stays as it is (better a code than nothing)."""
    if not unit_code:
        return ""
    return SYMBOLS.get(unit_code, unit_code)


def with_unit(value: float, unit_code: str | None) -> str:
    """`180 °C`, `52 %`, `3 items`: a value and its unit as one would write them."""
    sign = symbol(unit_code)
    if not sign:
        return f"{value:g}"
    return f"{value:g}{sign}" if sign == "%" else f"{value:g} {sign}"
