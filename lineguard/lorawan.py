"""The hall environment sensor's LoRaWAN payload codec (device EUI a84041000181c061 on the reference line).

Uplinks arrive on fPort 2 as 8 bytes, big-endian:

    byte  0     payload version, 0x01
    bytes 1-2   air temperature, int16, 0.01 C            (-327.68 .. 327.67 C)
    bytes 3-4   relative humidity, uint16, 0.01 %RH       (0.00 .. 100.00 %RH; larger values are invalid)
    bytes 5-6   battery voltage, uint16, mV
    byte  7     status flags: bit 0 = temperature sensor fault, bit 1 = humidity sensor fault, others 0

Example: 01 08 66 11 94 0E 10 00 -> {"temperature": 21.5, "humidity": 45.0, "battery_mv": 3600, "status": 0}

The decoded object uses the metric names of the plant model (`temperature`, `humidity`), the same object a
network server's payload formatter would put in ChirpStack's `object` or The Things Stack's `decoded_payload`.
A reading whose fault flag is set decodes to None.
"""

from __future__ import annotations

import math
import struct
from typing import Any

ENVIRONMENT_FPORT = 2
PAYLOAD_VERSION = 0x01
PAYLOAD_LENGTH = 8
_LAYOUT = struct.Struct(">BhHHB")
TEMPERATURE_FAULT = 0x01
HUMIDITY_FAULT = 0x02


class PayloadError(ValueError):
    """Bytes that are not a valid environment sensor payload; the message says what is wrong."""


def encode_environment(temperature: float | None, humidity: float | None, battery_mv: int = 3600) -> bytes:
    """Encode one reading; None (a failed sensor) sets the matching fault flag."""
    status = 0
    if temperature is None or not math.isfinite(temperature):
        status |= TEMPERATURE_FAULT
        raw_temperature = 0
    else:
        raw_temperature = round(temperature * 100)
        if not -32768 <= raw_temperature <= 32767:
            raise PayloadError(f"temperature {temperature} C is outside the encodable range -327.68..327.67")
    if humidity is None or not math.isfinite(humidity):
        status |= HUMIDITY_FAULT
        raw_humidity = 0
    else:
        raw_humidity = round(min(max(humidity, 0.0), 100.0) * 100)
    if not 0 <= battery_mv <= 0xFFFF:
        raise PayloadError(f"battery {battery_mv} mV is outside 0..65535")
    return _LAYOUT.pack(PAYLOAD_VERSION, raw_temperature, raw_humidity, int(battery_mv), status)


def decode_environment(payload: bytes) -> dict[str, Any]:
    """Decode an uplink's bytes into {"temperature", "humidity", "battery_mv", "status"}."""
    if len(payload) != PAYLOAD_LENGTH:
        raise PayloadError(f"expected {PAYLOAD_LENGTH} bytes, got {len(payload)}: {payload.hex()}")
    version, raw_temperature, raw_humidity, battery_mv, status = _LAYOUT.unpack(payload)
    if version != PAYLOAD_VERSION:
        raise PayloadError(f"unknown payload version {version:#04x} (this codec reads {PAYLOAD_VERSION:#04x})")
    if raw_humidity > 10000:
        raise PayloadError(f"humidity {raw_humidity / 100} %RH is above 100")
    if status & ~(TEMPERATURE_FAULT | HUMIDITY_FAULT):
        raise PayloadError(f"unknown status bits {status:#04x}")
    return {
        "temperature": None if status & TEMPERATURE_FAULT else raw_temperature / 100,
        "humidity": None if status & HUMIDITY_FAULT else raw_humidity / 100,
        "battery_mv": battery_mv,
        "status": status,
    }
