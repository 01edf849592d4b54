from lineguard.units import symbol, with_unit


def test_unit_codes_read_as_symbols_and_unknown_codes_stay() -> None:
    assert symbol("CEL") == "°C" and symbol("NU") == "N·m" and symbol("AMP") == "A"
    assert symbol(None) == "" and symbol("XYZ") == "XYZ"
    assert with_unit(180.0, "CEL") == "180 °C"
    assert with_unit(52.5, "P1") == "52.5%"
    assert with_unit(3, "C62") == "3"
