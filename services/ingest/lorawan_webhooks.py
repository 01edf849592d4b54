"""LoRaWAN network-server webhooks -> readings: ChirpStack v4 HTTP integration and The Things Stack v3 webhooks.

ChirpStack posts every event to one URL with `?event=up|join|ack|txack|log|status|location|integration`, as
protobuf-JSON (camelCase, bytes in base64, zero values may be left out). The Things Stack posts snake_case JSON and
leaves out "", 0 and false; its message type is the key present (`uplink_message`, `join_accept`, ...).

An uplink becomes one reading per scalar field of its decoded object (ChirpStack `object`, TTS
`decoded_payload`): nested objects as `a.b`, list elements as `a[0]` (one reading each, attribute `index`);
what cannot be mapped (deeper than 4 levels, more than 1024 values) dead-letters the uplink, nothing is dropped.
When there is no decoded object, the frame payload is decoded with the device's codec (`lineguard.lorawan`).
The device is the DevEUI in lower case, as the plant model names it; a TTS ABP device registered without a
DevEUI is its `device_id` (with its `dev_addr` as an attribute). TTS `observed_at` is the network server's
`received_at` (a gateway's `gps_time` when present and within 30 s of it; gateway clocks can be years off).
Ids: `chirpstack:<deduplicationId>:<metric>` and `tts:<uplink correlation id>:<metric>`, so a network server's
retry is dropped as a duplicate.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass, field
from typing import Any

from lineguard.lorawan import PayloadError, decode_environment
from services.ingest.parsing import InputError, check_value, optional_str, parse_timestamp, required_str
from services.ingest.pipeline import Emit, reading, source

CODECS = {"environment": decode_environment}
# Units of the values each codec yields (also applied when the network server decoded with the same codec).
CODEC_UNITS = {"environment": {"temperature": "Cel", "humidity": "%RH", "battery_mv": "mV"}}
CHIRPSTACK_PATH = "/lorawan/chirpstack"
TTS_PATH = "/lorawan/tts"
TTS_MESSAGE_TYPES = ("uplink_message", "join_accept", "downlink_ack", "downlink_nack", "downlink_sent",
                     "downlink_failed", "downlink_queued", "downlink_queue_invalidated", "location_solved",
                     "service_data", "uplink_normalized")


class UndecodablePayload(Exception):
    """The uplink is well formed but its payload cannot be decoded: dead-letter it, do not ask for a retry."""


@dataclass
class Uplink:
    """What the adapter needs from one uplink, whichever network server sent it."""

    protocol: str
    dedup_id: str  # ChirpStack deduplicationId / TTS uplink correlation id
    dev_eui: str  # the device id of the readings: the DevEUI in lower case, or a TTS ABP device's device_id
    f_cnt: int
    f_port: int
    decoded: dict | None
    frm_payload: bytes | None
    observed_at: int
    attributes: dict[str, str] = field(default_factory=dict)


def _loads(body: bytes) -> dict:
    try:
        data = json.loads(body)
    except (UnicodeDecodeError, ValueError) as exc:
        raise InputError("body", f"not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise InputError("body", f"expected a JSON object, got {type(data).__name__}")
    return data


def _obj(data: dict, key: str, path: str, required: bool = False) -> dict:
    value = data.get(key)
    if value is None:
        if required:
            raise InputError(f"{path}{key}", "required")
        return {}
    if not isinstance(value, dict):
        raise InputError(f"{path}{key}", f"expected an object, got {type(value).__name__}")
    return value


def _int(data: dict, key: str, path: str) -> int:
    value = data.get(key, 0)
    if isinstance(value, str) and value.isdigit():  # protobuf-JSON writes 64-bit integers as strings
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise InputError(f"{path}{key}", f"expected a non-negative integer, got {value!r}")
    return value


def _base64(data: dict, key: str, path: str) -> bytes | None:
    value = data.get(key)
    if value in (None, ""):
        return None
    if not isinstance(value, str):
        raise InputError(f"{path}{key}", "expected base64 text")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise InputError(f"{path}{key}", "not valid base64") from None


def _dev_eui(raw: Any, field_name: str) -> str:
    eui = required_str(raw, field_name, 32).lower()
    if len(eui) != 16 or any(c not in "0123456789abcdef" for c in eui):
        raise InputError(field_name, f"expected 16 hex digits, got {str(raw)[:40]!r}")
    return eui


def _radio(rx: Any, gateway_key: str, path: str) -> dict[str, str]:
    """Gateway id, RSSI and SNR of the first gateway that heard the uplink."""
    if not isinstance(rx, list) or not rx or not isinstance(rx[0], dict):
        return {}
    first = rx[0]
    out: dict[str, str] = {}
    gateway = first.get(gateway_key)
    if isinstance(gateway, dict):
        gateway = gateway.get("gateway_id") or gateway.get("eui")
    if isinstance(gateway, str):
        out["gateway_id"] = gateway[:64]
    for key in ("rssi", "snr"):
        value = first.get(key)
        if isinstance(value, int | float) and not isinstance(value, bool):
            out[key] = str(value)
    out["gateways"] = str(len(rx))
    return out


def chirpstack_event(query_event: str | None) -> str:
    return (query_event or "").strip().lower()


def parse_chirpstack_up(body: bytes, received_at: int) -> Uplink:
    data = _loads(body)
    dedup_id = required_str(data.get("deduplicationId"), "deduplicationId", 64)
    info = _obj(data, "deviceInfo", "", required=True)
    dev_eui = _dev_eui(info.get("devEui"), "deviceInfo.devEui")
    decoded = data.get("object")
    if decoded is not None and not isinstance(decoded, dict):
        raise InputError("object", f"expected an object, got {type(decoded).__name__}")
    observed_at = received_at
    if data.get("time") is not None:
        observed_at = parse_timestamp(data["time"], "time")
    attributes = _radio(data.get("rxInfo"), "gatewayId", "rxInfo")
    for key in ("deviceName", "applicationName", "tenantName"):
        value = info.get(key)
        if isinstance(value, str) and value:
            attributes[key] = value[:128]
    if isinstance(data.get("dr"), int):
        attributes["dr"] = str(data["dr"])
    return Uplink("chirpstack", dedup_id, dev_eui, _int(data, "fCnt", ""), _int(data, "fPort", ""),
                  decoded, _base64(data, "data", ""), observed_at, attributes)


def tts_message_type(data: dict) -> str | None:
    return next((key for key in TTS_MESSAGE_TYPES if key in data), None)


def parse_tts(body: bytes) -> tuple[str | None, dict]:
    """(message type, body) of a TTS webhook; raises InputError for a body that is not a TTS message."""
    data = _loads(body)
    _obj(data, "end_device_ids", "", required=True)
    return tts_message_type(data), data


# A gateway time is used only when GPS-synchronised and within this distance of the network server's receive time.
GATEWAY_TIME_PLAUSIBLE_MS = 30_000


def _tts_device(ids: dict) -> tuple[str, dict[str, str]]:
    """(device, attributes): the DevEUI; for an ABP device registered without one, its device_id (with dev_addr,
    which an ABP device keeps for life)."""
    if ids.get("dev_eui") not in (None, ""):
        return _dev_eui(ids.get("dev_eui"), "end_device_ids.dev_eui"), {}
    device_id = optional_str(ids.get("device_id"), "end_device_ids.device_id", 128)
    dev_addr = optional_str(ids.get("dev_addr"), "end_device_ids.dev_addr", 16)
    if not device_id or not device_id.strip() or not dev_addr:
        raise InputError("end_device_ids.dev_eui", "required (or, for an ABP device without one, device_id and "
                                                   "dev_addr)")
    if len(dev_addr) != 8 or any(c not in "0123456789abcdef" for c in dev_addr.lower()):
        raise InputError("end_device_ids.dev_addr", f"expected 8 hex digits, got {dev_addr[:40]!r}")
    return device_id.strip(), {"dev_addr": dev_addr.lower(), "activation": "abp"}


def _tts_observed_at(data: dict, up: dict, rx: Any, received_at: int) -> tuple[int, str]:
    """(observed_at, which field): the network server's received_at; a gateway's GPS time when it is there and
    plausible (a gateway's own clock can be years off); our receive time when neither is there."""
    server = None
    for stamp, where in ((up.get("received_at"), "uplink_message.received_at"), (data.get("received_at"),
                                                                                  "received_at")):
        if stamp:
            server = parse_timestamp(stamp, where), where
            break
    reference = server[0] if server else received_at
    if isinstance(rx, list):
        for index, meta in enumerate(rx):
            if isinstance(meta, dict) and meta.get("gps_time"):
                try:
                    gps = parse_timestamp(meta["gps_time"], f"uplink_message.rx_metadata[{index}].gps_time")
                except InputError:
                    continue
                if abs(gps - reference) <= GATEWAY_TIME_PLAUSIBLE_MS:
                    return gps, f"rx_metadata[{index}].gps_time"
    return server if server else (received_at, "ingest")


def parse_tts_uplink(data: dict, received_at: int) -> Uplink:
    ids = _obj(data, "end_device_ids", "", required=True)
    dev_eui, device_attributes = _tts_device(ids)
    up = _obj(data, "uplink_message", "", required=True)
    correlation = data.get("correlation_ids") or []
    if not isinstance(correlation, list) or not all(isinstance(c, str) for c in correlation):
        raise InputError("correlation_ids", "expected an array of strings")
    uplink_ids = [c for c in correlation if c.startswith("as:up:")] or correlation
    f_cnt = _int(up, "f_cnt", "uplink_message.")
    if uplink_ids:
        dedup_id = uplink_ids[0][:200]
    else:  # no correlation id: the frame counter and the server's receive time still identify the uplink
        stamp = optional_str(up.get("received_at") or data.get("received_at"), "received_at", 64)
        if stamp is None:
            raise InputError("correlation_ids", "required (or uplink_message.received_at) to identify the uplink")
        dedup_id = f"{dev_eui}:{f_cnt}:{stamp}"
    decoded = up.get("decoded_payload")
    if decoded is not None and not isinstance(decoded, dict):
        raise InputError("uplink_message.decoded_payload", f"expected an object, got {type(decoded).__name__}")
    rx = up.get("rx_metadata")
    observed_at, time_source = _tts_observed_at(data, up, rx, received_at)
    attributes = _radio(rx, "gateway_ids", "uplink_message.rx_metadata")
    attributes.update(device_attributes)
    attributes["time_source"] = time_source
    if isinstance(ids.get("device_id"), str):
        attributes["device_id"] = ids["device_id"][:128]
    app = ids.get("application_ids")
    if isinstance(app, dict) and isinstance(app.get("application_id"), str):
        attributes["application_id"] = app["application_id"][:128]
    return Uplink("tts", dedup_id, dev_eui, f_cnt, _int(up, "f_port", "uplink_message."), decoded,
                  _base64(up, "frm_payload", "uplink_message."), observed_at, attributes)


MAX_DEPTH = 4
MAX_VALUES = 1024


def _flatten(value: Any, name: str, index: tuple[int, ...], depth: int,
             out: list[tuple[str, Any, tuple[int, ...]]]) -> None:
    """(metric, value, list indexes) of every scalar: objects nest as `a.b`, list elements as `a[0]` (each
    becomes its own reading with an `index` attribute). Anything else raises: dead-lettered, never dropped."""
    if value is None or isinstance(value, bool | int | float | str):
        out.append((name, value, index))
    elif depth >= MAX_DEPTH and isinstance(value, dict | list):
        raise UndecodablePayload(f"decoded field {name}: nested deeper than {MAX_DEPTH} levels")
    elif isinstance(value, dict):
        for key, inner in value.items():
            _flatten(inner, f"{name}.{key}" if name else str(key), index, depth + 1, out)
    elif isinstance(value, list):
        for position, inner in enumerate(value):
            _flatten(inner, f"{name}[{position}]", (*index, position), depth + 1, out)
    else:
        raise UndecodablePayload(f"decoded field {name}: {type(value).__name__} is not a value")
    if len(out) > MAX_VALUES:
        raise UndecodablePayload(f"the decoded object holds more than {MAX_VALUES} values")


def uplink_readings(uplink: Uplink, codecs: dict[str, str], address: str, received_at: int,
                    received_by: str | None) -> list[Emit]:
    """One reading per scalar in the decoded object; decodes with the device's codec when there is none."""
    decoded = uplink.decoded
    attributes = dict(uplink.attributes)
    attributes["f_port"] = str(uplink.f_port)
    codec_name = codecs.get(uplink.dev_eui)
    units = CODEC_UNITS.get(codec_name or "", {})
    if decoded is None:
        if uplink.frm_payload is None:
            raise UndecodablePayload(f"uplink {uplink.dedup_id} carries neither a decoded object nor a payload")
        if codec_name is None:
            raise UndecodablePayload(f"no codec configured for device {uplink.dev_eui} "
                                     f"(LINEGUARD_LORAWAN_CODECS) and the uplink carries no decoded object")
        try:
            decoded = CODECS[codec_name](uplink.frm_payload)
        except PayloadError as exc:
            raise UndecodablePayload(f"codec {codec_name} cannot decode {uplink.frm_payload.hex()}: {exc}") from None
        attributes["codec"] = codec_name
    values: list[tuple[str, Any, tuple[int, ...]]] = []
    _flatten(decoded, "", (), 0, values)
    if not values:
        raise UndecodablePayload(f"uplink {uplink.dedup_id}: the decoded object holds no values")
    src = source(uplink.protocol, uplink.dev_eui, address, str(uplink.f_cnt), received_by)
    out = []
    for metric, raw, index in values:
        try:
            value = check_value(raw, metric)
        except InputError as exc:
            raise UndecodablePayload(f"decoded field {exc}") from None
        attrs = attributes if not index else {**attributes, "index": ",".join(map(str, index))}
        out.append(reading(id=f"{uplink.protocol}:{uplink.dedup_id}:{metric}", device=uplink.dev_eui,
                           metric=metric, value=value, unit=units.get(metric), observed_at=uplink.observed_at,
                           received_at=received_at, src=src, attributes=attrs))
    return out
