"""The hall environment sensor as LoRaWAN network-server webhooks: ChirpStack v4 and The Things Stack v3.

Every `interval_s` simulated seconds the sensor "sends" one uplink (payload codec: lineguard.lorawan, fPort 2),
and the simulator POSTs it as each configured network server would:

- ChirpStack v4 HTTP integration: POST <url>?event=up, protobuf-JSON (camelCase, bytes in base64):
  deduplicationId, time, deviceInfo{..., devEui}, devAddr, adr, dr, fCnt, fPort, confirmed, data, object,
  rxInfo[{gatewayId, uplinkId, nsTime, rssi, snr, channel, location, context, metadata, crcStatus}],
  txInfo{frequency, modulation{lora{bandwidth, spreadingFactor, codeRate}}}.
- The Things Stack v3 webhook, uplink message: POST <url>, snake_case JSON with "", 0 and false left out:
  end_device_ids{device_id, application_ids{application_id}, dev_eui, join_eui, dev_addr}, correlation_ids,
  received_at, uplink_message{session_key_id, f_port, f_cnt, frm_payload, decoded_payload, rx_metadata[...],
  settings{data_rate{lora{bandwidth, spreading_factor, coding_rate}}, frequency}, received_at,
  consumed_airtime, network_ids{net_id, tenant_id}}; headers X-Downlink-Apikey, X-Downlink-Push,
  X-Downlink-Replace.

Like The Things Stack, a delivery is tried once: a failure is logged and counted, never retried.
"""

from __future__ import annotations

import base64
import logging
import uuid
from collections import Counter
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import aiohttp
import numpy as np

from lineguard.logs import event
from lineguard.lorawan import ENVIRONMENT_FPORT, decode_environment, encode_environment
from simulator.model import CookieLine, StepEvents

log = logging.getLogger("simulator.lorawan")

TENANT_ID = "52f14cd4-c6f1-4fbd-8f87-4025e1d49242"
APPLICATION_ID = "e2ab5b0a-4a41-4e33-a0b6-3c2a05a1a2f5"
DEVICE_PROFILE_ID = "0c9ca8d4-5a37-4bd8-9f5f-2d8bbf6fa3f1"
DEV_ADDR = "260b1c61"
JOIN_EUI = "a840410000000101"
GATEWAY_ID = "0016c001f153a14c"


def with_event_up(url: str) -> str:
    """ChirpStack names the event in the query string: add event=up, keeping any query the user configured."""
    parts = urlsplit(url)
    query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k != "event"]
    query.append(("event", "up"))
    return urlunsplit((parts.scheme, parts.netloc, parts.path, urlencode(query), parts.fragment))


def drop_zero_values(value: Any) -> Any:
    """The Things Stack leaves out fields whose value is "", 0 or false."""
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            cleaned = drop_zero_values(item)
            is_zero_number = isinstance(cleaned, int | float) and not isinstance(cleaned, bool) and cleaned == 0
            if cleaned is None or cleaned is False or cleaned == "" or is_zero_number:
                continue
            out[key] = cleaned
        return out
    if isinstance(value, list):
        return [drop_zero_values(v) for v in value]
    return value


class LoRaWANWebhookEmitter:
    name = "lorawan-webhooks"

    def __init__(self, chirpstack_url: str | None = None, tts_url: str | None = None, interval_s: float = 60.0,
                 headers: dict[str, str] | None = None, timeout_s: float = 10.0, machine_id: str = "environment",
                 application: str = "cookie-line-env", device_name: str = "hall-env-1",
                 chirpstack_headers: dict[str, str] | None = None, tts_headers: dict[str, str] | None = None) -> None:
        """`headers` go with every request; `chirpstack_headers` / `tts_headers` only to that target (both network
        servers let an operator configure extra headers, e.g. a shared secret or an Authorization)."""
        self.chirpstack_url = with_event_up(chirpstack_url) if chirpstack_url else None
        self.tts_url = tts_url
        self.interval_s, self.headers, self.timeout_s = interval_s, headers or {}, timeout_s
        self.chirpstack_headers, self.tts_headers = chirpstack_headers or {}, tts_headers or {}
        self.machine_id, self.application, self.device_name = machine_id, application, device_name
        self.dev_eui = ""
        self.line_id = "line1"
        self.f_cnt = 0
        self.session: aiohttp.ClientSession | None = None
        self.rng = np.random.default_rng(0)
        self.stats: Counter[str] = Counter()
        self._next_s = 0.0

    async def start(self, sim: CookieLine) -> None:
        machine = sim.line.machines[self.machine_id]
        devices = {s.device for s in machine.sensors}
        if len(devices) != 1:
            raise ValueError(f"{self.machine_id}: expected one LoRaWAN device for its sensors, got {sorted(devices)}")
        self.dev_eui = devices.pop().lower()
        self.line_id = sim.line.id
        self.rng = np.random.default_rng((sim.seed, 0x10))
        self.session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.timeout_s))
        self._next_s = sim.now_s + self.interval_s

    def _uplink(self, sim: CookieLine) -> tuple[bytes, dict[str, Any], dict[str, Any]]:
        """One uplink: payload bytes, the decoded object, and the radio metadata both formats share."""
        readings = {r.metric: r.value for r in sim.readings([self.machine_id], rng=self.rng)}
        battery = int(3600 - sim.now_s / 3600.0)  # a slow drain, one millivolt an hour
        payload = encode_environment(float(readings["temperature"]), float(readings["humidity"]), battery)
        radio = {
            "id": str(uuid.UUID(bytes=self.rng.bytes(16), version=4)),
            "uplink_id": int(self.rng.integers(1, 2**31)),
            "rssi": int(self.rng.integers(-105, -60)),
            "snr": round(float(self.rng.uniform(-2.0, 11.0)), 2),
            "channel": int(self.rng.integers(0, 8)),
            "time": sim.clock.iso(),
            "session_key_id": base64.b64encode(self.rng.bytes(16)).decode(),
        }
        return payload, decode_environment(payload), radio

    def chirpstack_body(self, payload: bytes, decoded: dict[str, Any], radio: dict[str, Any]) -> dict[str, Any]:
        return {
            "deduplicationId": radio["id"],
            "time": radio["time"],
            "deviceInfo": {
                "tenantId": TENANT_ID, "tenantName": "Springfield Bakery",
                "applicationId": APPLICATION_ID, "applicationName": self.application,
                "deviceProfileId": DEVICE_PROFILE_ID, "deviceProfileName": "hall-environment-v1",
                "deviceName": self.device_name, "devEui": self.dev_eui, "deviceClassEnabled": "CLASS_A",
                "tags": {"line": self.line_id},
            },
            "devAddr": DEV_ADDR,
            "adr": True,
            "dr": 5,
            "fCnt": self.f_cnt,
            "fPort": ENVIRONMENT_FPORT,
            "confirmed": False,
            "data": base64.b64encode(payload).decode(),
            "object": decoded,
            "rxInfo": [{
                "gatewayId": GATEWAY_ID, "uplinkId": radio["uplink_id"], "nsTime": radio["time"],
                "rssi": radio["rssi"], "snr": radio["snr"], "channel": radio["channel"],
                "location": {}, "context": base64.b64encode(radio["uplink_id"].to_bytes(4, "big")).decode(),
                "metadata": {"region_config_id": "eu868", "region_common_name": "EU868"}, "crcStatus": "CRC_OK",
            }],
            "txInfo": {"frequency": 868100000 + 200000 * (radio["channel"] % 3),
                       "modulation": {"lora": {"bandwidth": 125000, "spreadingFactor": 7, "codeRate": "CR_4_5"}}},
            "regionConfigId": "eu868",
        }

    def tts_body(self, payload: bytes, decoded: dict[str, Any], radio: dict[str, Any]) -> dict[str, Any]:
        correlation = f"as:up:{radio['id'].replace('-', '').upper()[:26]}"
        body = {
            "end_device_ids": {
                "device_id": self.device_name, "application_ids": {"application_id": self.application},
                "dev_eui": self.dev_eui.upper(), "join_eui": JOIN_EUI.upper(), "dev_addr": DEV_ADDR.upper(),
            },
            "correlation_ids": [correlation, f"gs:uplink:{radio['uplink_id']}"],
            "received_at": radio["time"],
            "uplink_message": {
                "session_key_id": radio["session_key_id"],
                "f_port": ENVIRONMENT_FPORT,
                "f_cnt": self.f_cnt,
                "frm_payload": base64.b64encode(payload).decode(),
                "decoded_payload": decoded,
                "rx_metadata": [{
                    "gateway_ids": {"gateway_id": "hall-gw-1", "eui": GATEWAY_ID.upper()},
                    "time": radio["time"], "rssi": radio["rssi"], "channel_rssi": radio["rssi"],
                    "snr": radio["snr"], "channel_index": radio["channel"], "received_at": radio["time"],
                }],
                "settings": {
                    "data_rate": {"lora": {"bandwidth": 125000, "spreading_factor": 7, "coding_rate": "4/5"}},
                    "frequency": str(868100000 + 200000 * (radio["channel"] % 3)),
                },
                "received_at": radio["time"],
                "consumed_airtime": "0.061696s",
                "network_ids": {"net_id": "000013", "tenant_id": "ttn"},
            },
        }
        cleaned = drop_zero_values(body)
        cleaned["uplink_message"]["decoded_payload"] = decoded  # a Struct: its values are kept as they are
        return cleaned

    async def _post(self, kind: str, url: str, body: dict[str, Any], headers: dict[str, str]) -> None:
        assert self.session is not None
        try:
            async with self.session.post(url, json=body, headers={**self.headers, **headers}) as response:
                if response.status >= 300:
                    self.stats[f"{kind}_failed"] += 1
                    event(log, "webhook_refused", logging.WARNING, target=kind, status=response.status,
                          f_cnt=self.f_cnt)
                else:
                    self.stats[f"{kind}_sent"] += 1
        except (aiohttp.ClientError, TimeoutError) as exc:
            self.stats[f"{kind}_failed"] += 1
            if self.stats[f"{kind}_failed"] <= 5 or self.stats[f"{kind}_failed"] % 50 == 0:
                event(log, "webhook_unreachable", logging.WARNING, target=kind, error=repr(exc),
                      failures=self.stats[f"{kind}_failed"])

    async def on_tick(self, sim: CookieLine, events: StepEvents) -> None:
        if sim.now_s + 1e-9 < self._next_s:
            return
        self._next_s += self.interval_s
        payload, decoded, radio = self._uplink(sim)
        if self.chirpstack_url:
            await self._post("chirpstack", self.chirpstack_url, self.chirpstack_body(payload, decoded, radio),
                             self.chirpstack_headers)
        if self.tts_url:
            base = "https://eu1.cloud.thethings.network/api/v3/as/applications"
            down = f"{base}/{self.application}/webhooks/lineguard/devices/{self.device_name}/down"
            headers = {"X-Downlink-Apikey": "NNSXS.SIMULATED-DOWNLINK-KEY", "X-Downlink-Push": f"{down}/push",
                       "X-Downlink-Replace": f"{down}/replace", "User-Agent": "TheThingsStack/3 (simulated)",
                       **self.tts_headers}
            await self._post("tts", self.tts_url, self.tts_body(payload, decoded, radio), headers)
        self.f_cnt += 1

    async def stop(self, sim: CookieLine) -> None:
        if self.session is not None:
            await self.session.close()
