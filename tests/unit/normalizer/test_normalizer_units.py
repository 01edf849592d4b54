"""Unit conversion to canonical UN/CEFACT codes, physical limits and clamping."""

from __future__ import annotations

import math

import pytest

from services.normalizer.units import ImpossibleValueError, UnitError, conversion, convert, lookup


@pytest.mark.parametrize(("value", "unit", "target", "expected"), [
    (212.0, "degF", "CEL", 100.0),
    (32.0, "°F", "CEL", 0.0),
    (-40.0, "FAH", "CEL", -40.0),
    (373.15, "K", "CEL", 100.0),
    (0.0, "KEL", "CEL", -273.15),
    (25.0, "Cel", "CEL", 25.0),
    (25.0, None, "CEL", 25.0),
    (2.0, "bar", "KPA", 200.0),
    (150.0, "kPa", "BAR", 1.5),
    (1.0, "psi", "KPA", 6.894757293168),
    (1013.25, "hPa", "BAR", 1.01325),
    (1.5, "Hz", "RPM", 90.0),
    (120.0, "rpm", "HTZ", 2.0),
    (2.0, "kNm", "NU", 2000.0),
    (45.0, "Nm", "NU", 45.0),
    (45.0, "%", "P1", 45.0),
    (0.25, "kg", "GRM", 250.0),
    (1.0, "lb", "GRM", 453.59237),
    (0.05, "m/s", "2X", 3.0),
    (3.0, "m/min", "2X", 3.0),
    (1.5, "kW", "KWT", 1.5),
    (1500.0, "W", "KWT", 1.5),
    (12.0, "pcs", "C62", 12.0),
    (3.6, "V", "2Z", 3600.0),  # the LoRaWAN sensor battery, millivolt
])
def test_converts_to_the_canonical_unit(value: float, unit: str | None, target: str, expected: float) -> None:
    converted, clamped = convert(value, unit, target)
    assert converted == pytest.approx(expected)
    assert clamped is False


def test_lookup_is_case_insensitive_as_a_fallback() -> None:
    assert lookup("DEGF").code == "FAH"
    assert lookup(" kpa ").code == "KPA"


def test_unknown_unit_is_an_error_naming_it() -> None:
    with pytest.raises(UnitError, match="unknown unit 'furlongs'"):
        convert(1.0, "furlongs", "CEL")


def test_units_of_different_quantities_do_not_convert() -> None:
    with pytest.raises(UnitError, match=r"cannot convert 'bar' \(pressure\) to CEL \(temperature\)"):
        convert(1.0, "bar", "CEL")


def test_below_absolute_zero_is_impossible() -> None:
    with pytest.raises(ImpossibleValueError, match="physical minimum"):
        convert(-10.0, "K", "CEL")
    with pytest.raises(ImpossibleValueError):
        convert(-300.0, "CEL", "CEL")


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_non_finite_values_are_impossible(value: float) -> None:
    with pytest.raises(ImpossibleValueError, match="not a finite number"):
        convert(value, None, "CEL")


def test_percentages_slightly_out_of_bounds_are_clamped_far_out_are_impossible() -> None:
    assert convert(102.0, "%", "P1") == (100.0, True)
    assert convert(-3.0, "%", "P1") == (0.0, True)
    with pytest.raises(ImpossibleValueError, match="physical maximum"):
        convert(130.0, "%", "P1")


def test_negative_counts_are_impossible_and_small_negative_speeds_clamp() -> None:
    with pytest.raises(ImpossibleValueError):
        convert(-1.0, None, "C62")
    assert convert(-0.01, None, "2X") == (0.0, True)
    assert convert(-0.3, "rpm", "RPM") == (0.0, True)  # within the 0.5 rpm tolerance
    with pytest.raises(ImpossibleValueError):
        convert(-0.1, "Hz", "RPM")  # -6 rpm: beyond it


def test_conversions_are_cached_per_unit_pair() -> None:
    assert conversion("degF", "CEL") is conversion("degF", "CEL")
