"""Unit conversion to the canonical UN/CEFACT common codes the plant model declares.

Every unit the sources write (`degF`, `°C`, `kPa`, `rpm`, `Hz`, ...) resolves to a `Unit`: its UN/CEFACT code,
its quantity (temperature, pressure, ...) and a linear map to that quantity's base unit (`base = value * scale +
offset`). Converting between two units of one quantity goes through the base unit; converting across quantities
(bar to CEL) is an error, never a guess.

Each quantity also has physical limits (nothing is colder than absolute zero, a count is never negative, a
percentage is 0..100). A value a little outside them is sensor noise and is clamped (flag `clamped`); a value far
outside is impossible and the reading is rejected.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


class UnitError(ValueError):
    """A unit is unknown or cannot be converted to the sensor's canonical unit."""


class ImpossibleValueError(ValueError):
    """A value no real sensor can report (NaN, below absolute zero, a negative count...)."""


@dataclass(frozen=True, slots=True)
class Unit:
    code: str  # UN/CEFACT common code
    quantity: str
    scale: float = 1.0  # base = value * scale + offset
    offset: float = 0.0


@dataclass(frozen=True, slots=True)
class Limits:
    """Physical limits of a quantity in its base unit, and how far outside them a value is still clamped."""

    low: float = -math.inf
    high: float = math.inf
    tolerance: float = 0.0


# Base units: CEL, PAL, RPM, NU, P1, C62, GRM, WTT, MTS, MTR, SEC, LTR, VLT, AMP.
_UNITS: dict[str, Unit] = {}
_LOWER: dict[str, Unit] = {}


def _define(code: str, quantity: str, scale: float = 1.0, offset: float = 0.0, aliases: tuple[str, ...] = ()) -> None:
    unit = Unit(code, quantity, scale, offset)
    for name in (code, *aliases):
        _UNITS[name] = unit
        _LOWER.setdefault(name.lower(), unit)


_define("CEL", "temperature", aliases=("Cel", "°C", "degC", "deg C", "C", "celsius", "Celsius"))
_define("FAH", "temperature", 5 / 9, -32 * 5 / 9, aliases=("°F", "degF", "deg F", "F", "fahrenheit", "Fahrenheit"))
_define("KEL", "temperature", 1.0, -273.15, aliases=("K", "kelvin", "Kelvin"))
_define("PAL", "pressure", aliases=("Pa", "pascal"))
_define("KPA", "pressure", 1e3, aliases=("kPa",))
_define("MBR", "pressure", 1e2, aliases=("mbar", "hPa", "A97"))
_define("BAR", "pressure", 1e5, aliases=("bar",))
_define("PS", "pressure", 6894.757293168, aliases=("psi", "PSI", "lbf/in2"))
_define("RPM", "rotation", aliases=("rpm", "r/min", "1/min", "rev/min"))
_define("HTZ", "rotation", 60.0, aliases=("Hz", "hz", "hertz", "rps", "r/s", "1/s"))
_define("NU", "torque", aliases=("Nm", "N.m", "N·m", "N m", "newton metre"))
_define("B12", "torque", 1e3, aliases=("kNm", "kN.m", "kN·m"))
_define("P1", "fraction", aliases=("%", "percent", "pct", "%RH", "RH"))
_define("C62", "count", aliases=("1", "count", "pcs", "pieces", "items"))
_define("GRM", "mass", aliases=("g", "gram"))
_define("KGM", "mass", 1e3, aliases=("kg",))
_define("LBR", "mass", 453.59237, aliases=("lb", "lbs"))
_define("ONZ", "mass", 28.349523125, aliases=("oz",))
_define("WTT", "power", aliases=("W",))
_define("KWT", "power", 1e3, aliases=("kW",))
_define("2X", "speed", 1.0, aliases=("m/min",))
_define("MTS", "speed", 60.0, aliases=("m/s",))
_define("KMH", "speed", 1000 / 60, aliases=("km/h",))
_define("MTR", "length", aliases=("m",))
_define("CMT", "length", 1e-2, aliases=("cm",))
_define("MMT", "length", 1e-3, aliases=("mm",))
_define("SEC", "time", aliases=("s", "sec"))
_define("MIN", "time", 60.0, aliases=("min",))
_define("MSEC", "time", 1e-3, aliases=("ms", "C26"))
_define("LTR", "volume", aliases=("l", "L"))
_define("VLT", "voltage", aliases=("V",))
_define("2Z", "voltage", 1e-3, aliases=("mV",))
_define("AMP", "current", aliases=("A",))

# Physical limits in each quantity's base unit (the first unit defined above).
_LIMITS: dict[str, Limits] = {
    "temperature": Limits(low=-273.15, high=5000.0),
    "pressure": Limits(low=0.0, tolerance=100.0),
    "rotation": Limits(low=0.0, tolerance=0.5),
    "fraction": Limits(low=0.0, high=100.0, tolerance=5.0),
    "count": Limits(low=0.0, tolerance=0.0),
    "mass": Limits(low=0.0, tolerance=1.0),
    "power": Limits(low=0.0, tolerance=0.5),
    "speed": Limits(low=0.0, tolerance=0.05),
    "length": Limits(low=0.0),
    "time": Limits(low=0.0),
    "volume": Limits(low=0.0),
}


def lookup(name: str) -> Unit:
    """The unit a source wrote, by UN/CEFACT code or common spelling (case-insensitive as a fallback)."""
    unit = _UNITS.get(name)
    if unit is None:
        unit = _LOWER.get(name.strip().lower())
    if unit is None:
        raise UnitError(f"unknown unit {name!r}")
    return unit


@dataclass(frozen=True, slots=True)
class Conversion:
    """A ready-made conversion from one source unit into one canonical unit (cached per pair)."""

    target: str
    scale: float
    offset: float
    low: float  # physical limits in the target unit
    high: float
    tolerance: float

    def apply(self, value: float) -> tuple[float, bool]:
        """Convert and check against physical limits: (value, clamped). Raises ImpossibleValueError."""
        if not math.isfinite(value):
            raise ImpossibleValueError(f"{value} is not a finite number")
        out = value * self.scale + self.offset
        if out < self.low:
            if out < self.low - self.tolerance:
                raise ImpossibleValueError(f"{out:g} {self.target} is below the physical minimum {self.low:g}")
            return self.low, True
        if out > self.high:
            if out > self.high + self.tolerance:
                raise ImpossibleValueError(f"{out:g} {self.target} is above the physical maximum {self.high:g}")
            return self.high, True
        return out, False


_CONVERSIONS: dict[tuple[str | None, str], Conversion] = {}


def conversion(source: str | None, target: str) -> Conversion:
    """How to bring a value written in `source` (None = already canonical) into the canonical `target` code."""
    key = (source, target)
    found = _CONVERSIONS.get(key)
    if found is not None:
        return found
    to_unit = lookup(target)
    from_unit = to_unit if source is None or source == "" else lookup(source)
    if from_unit.quantity != to_unit.quantity:
        raise UnitError(f"cannot convert {source!r} ({from_unit.quantity}) to {target} ({to_unit.quantity})")
    # value -> base -> target:  base = v*s1 + o1;  target = (base - o2) / s2
    scale = from_unit.scale / to_unit.scale
    offset = (from_unit.offset - to_unit.offset) / to_unit.scale
    limits = _LIMITS.get(to_unit.quantity, Limits())

    def to_target(base: float) -> float:
        return (base - to_unit.offset) / to_unit.scale

    found = Conversion(target, scale, offset, to_target(limits.low), to_target(limits.high),
                       limits.tolerance / to_unit.scale)
    if len(_CONVERSIONS) < 4096:  # bounded: unit spellings come from the outside world
        _CONVERSIONS[key] = found
    return found


def convert(value: float, source: str | None, target: str) -> tuple[float, bool]:
    """Convert `value` from `source` to `target`: (converted value, clamped)."""
    return conversion(source, target).apply(value)
