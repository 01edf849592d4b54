"""The notifier as a Faust app inside the shared service runtime.

Faust gives the agents (one over the line-keyed sources, one over the notifier's own ledger topics), the tables
with changelog topics that survive restarts, and the timers. The shared runtime gives what Faust's defaults do
differently: settings, JSON logs, the HTTP port with /livez /readyz /metrics, tracing, dead letters with Kafka
Connect headers, SIGTERM handling. Records are read and written with a Faust codec over `lineguard.avro`.

Agents and tables
  decide  over line.alarms.v1, recommendations.v1, actions.v1 -> table `state` (alarm states, dedup, caps,
          digests, escalations, delivery intents); starts deliveries; audit records to notifications.v1.
  ledger  over notifications.v1, feedback.v1 -> the same table under its own keys (deliveries done, escalation
          steps taken, acknowledgements, feedback given, links used). Deliveries wait until it has caught up after a start,
          so a restart does not send again what was sent before it.
  tick    a timer: escalation steps and reminders that are due, digests of periods that ended.
Tables are written only from agents (Faust's rule); the timer and the HTTP handlers write records that the ledger
agent applies.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import tempfile
import time
from collections import deque
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import aiohttp
import faust
from faust.serializers.codecs import Codec

from lineguard import telemetry, topics
from lineguard.avro import AvroSerde, SerdeError
from lineguard.catalog import load_catalog
from lineguard.kafka import error_headers
from lineguard.kafka.clients import read_topic
from lineguard.logs import Throttle, event, get_logger, throttled_event
from lineguard.service import Runtime, Service, StartupError
from services.notifier import render
from services.notifier.channels import Delivery, Dispatcher, EmailSender, build_senders
from services.notifier.engine import (
    Engine,
    Item,
    action_item,
    alarm_item,
    digest_id,
    due_digests,
    due_escalations,
    recommendation_item,
    short_hash,
    step_recipients,
)
from services.notifier.faust_patches import keep_queued_on_resume, rewind_uncommitted, tune_fetch_wait
from services.notifier.kafka_auth import MskIamTokenProvider, broker_credentials
from services.notifier.links import Claims, LinkSigner
from services.notifier.rules import Rules, RulesError, load_rules
from services.notifier.settings import NotifierSettings
from services.notifier.web import FeedHub, Outcome, add_routes

log = get_logger("services.notifier")

JTI_HEADER = "lineguard.link.jti"
INTENT_RETENTION_S = 86400.0


class AvroCodec(Codec):
    """A Faust codec over `lineguard.avro`: the same wire formats (single-object or Confluent) as every service."""

    def __init__(self, serde: AvroSerde, topic: str) -> None:
        super().__init__(topic=topic)
        self.serde = serde
        self.topic = topic

    def _dumps(self, obj: Any) -> bytes:
        return self.serde.encode(self.topic, obj)

    def _loads(self, s: bytes) -> Any:
        return self.serde.decode(self.topic, s)


def _headers(message: Any) -> list[tuple[str, bytes]]:
    raw = message.headers or []
    items = raw.items() if isinstance(raw, Mapping) else raw
    return [(k, v) for k, v in items]


def _header(headers: list[tuple[str, bytes]], name: str) -> str | None:
    for k, v in headers:
        if k == name and v is not None:
            return v.decode() if isinstance(v, bytes) else str(v)
    return None


class Notifier:
    def __init__(self, settings: NotifierSettings, rules: Rules, clock: Callable[[], float] = time.time,
                 sns_client: Callable[[], Any] | None = None) -> None:
        self.settings = settings
        self.rules = rules
        self.clock = clock
        self.serde = AvroSerde(settings.schemas_dir, settings.schema_registry_url, settings.schema_registry_auth,
                               settings.topic_prefix)
        self.catalog = load_catalog(settings.schemas_dir)
        self.engine = Engine(rules, clock())
        self.signer = LinkSigner(settings.notifier_link_key, settings.notifier_public_url,
                                 settings.notifier_link_ttl_s)
        self.hub = FeedHub(settings.notifier_feed_size)
        self.codecs = {t: AvroCodec(self.serde, t) for t in (topics.LINE_ALARMS, topics.RECOMMENDATIONS,
                                                             topics.ACTIONS, topics.NOTIFICATIONS, topics.FEEDBACK)}
        service = settings.service_name
        self._m_consumed = telemetry.counter(service, "messages_consumed", "Records consumed.", ["topic"])
        self._m_dlq = telemetry.counter(service, "dead_letters", "Records sent to a dead-letter topic.",
                                        ["topic", "stage"])
        self._m_notifications = telemetry.counter(service, "notifications", "Notifications decided, by kind.",
                                                  ["kind"])
        self._m_suppressed = telemetry.counter(service, "suppressed", "Items not notified at once, by reason "
                                               "(digest-held reasons included).", ["reason"])
        self._m_escalations = telemetry.counter(service, "escalations", "Escalation steps and reminders sent.")
        self._m_ack = telemetry.histogram(service, "time_to_acknowledge_seconds",
                                          "From a notification that escalates to its acknowledgement.",
                                          buckets=(5, 15, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200, 14400))
        self._dlq_throttle = Throttle()
        self._session: aiohttp.ClientSession | None = None
        self._sns = None
        self._sns_factory = sns_client
        self._esc_local: dict[str, int] = {}  # steps sent by this process, before the ledger shows them
        self._acked_local: set[str] = set()
        self._used_local: set[str] = set()
        self._feedback_local: set[str] = set()
        self._ledger_pos: dict[tuple[str, int], int] = {}
        self._started = False
        self._source_count = 0
        self._ledger_last_at = 0.0
        self.app = self._make_app()
        self.off = {name for name, ch in rules.channels.items()
                    if (ch.type == "sns" and not settings.notifier_sns_enabled)
                    or (ch.type == "email" and not settings.notifier_smtp_host)}
        if self.off:
            event(log, "channels_off", channels=sorted(self.off),
                  why="SNS disabled (LINEGUARD_NOTIFIER_SNS_ENABLED) or no SMTP server (LINEGUARD_NOTIFIER_SMTP_HOST)")
        self.dispatcher = Dispatcher(
            service, build_senders(rules.channels, publish=self.hub.publish, session=self._http,
                                   webhook_urls=settings.notifier_webhook_urls, sns_client=self._sns_client,
                                   email=EmailSender(settings.notifier_smtp_host, settings.notifier_smtp_port,
                                                     settings.notifier_smtp_from, settings.notifier_smtp_user,
                                                     settings.notifier_smtp_password,
                                                     settings.notifier_smtp_starttls,
                                                     settings.notifier_send_timeout_s),
                                   timeout_s=settings.notifier_send_timeout_s),
            self.links_for, self._on_attempt, self.delivered, retry_max=settings.notifier_retry_max,
            retry_base_s=settings.notifier_retry_base_s, retry_cap_s=settings.notifier_retry_cap_s,
            timeout_s=settings.notifier_send_timeout_s)

    # --- the Faust app --------------------------------------------------------------------------------------

    def _make_app(self) -> faust.App:
        s = self.settings
        hosts = [h.strip() for h in s.kafka_bootstrap.split(",") if h.strip()]
        session_s = s.kafka_session_timeout_ms / 1000.0
        partitions = self.catalog[topics.LINE_ALARMS].partitions
        for name in (topics.RECOMMENDATIONS, topics.ACTIONS, topics.NOTIFICATIONS, topics.FEEDBACK):
            if self.catalog[name].partitions != partitions:  # Faust tables need co-partitioned sources
                raise StartupError(f"the notifier's sources must have one partition count: {name} has "
                                   f"{self.catalog[name].partitions}, {topics.LINE_ALARMS} {partitions}")
        tune_fetch_wait(s.notifier_fetch_max_wait_ms)
        rewind_uncommitted()
        keep_queued_on_resume()
        # Faust keeps a data folder (version stamp; table files with RocksDB) at ./<app id>-data by default: in the
        # repository, or on a read-only root filesystem in a pod. The tables live in memory: a temporary folder.
        self.datadir = Path(tempfile.mkdtemp(prefix=f"lineguard-{s.service_name}-faust-"))
        app = faust.App(
            s.group_id,
            datadir=str(self.datadir),
            broker=[f"kafka://{h}" for h in hosts],
            broker_credentials=broker_credentials(s),
            broker_client_id=f"lineguard-{s.service_name}",
            broker_session_timeout=session_s,
            broker_heartbeat_interval=max(0.5, session_s / 3),
            broker_commit_interval=s.notifier_commit_interval_s,
            consumer_auto_offset_reset="earliest",
            producer_acks=-1,
            store="memory://",
            topic_partitions=partitions,
            topic_allow_declare=True,
            web_enabled=False,  # health, metrics and the API are on the service's own port
            autodiscover=False,
            stream_wait_empty=False,  # shutdown must not wait for a stuck stream (seen on Tansu)
            table_standby_replicas=0,
            logging_config=None,
        )
        full = s.topic
        raw = {"key_serializer": "raw", "value_serializer": "raw"}
        self.t_sources = app.topic(full(topics.LINE_ALARMS), full(topics.RECOMMENDATIONS), full(topics.ACTIONS),
                                   **raw)
        self.t_answers = app.topic(full(topics.NOTIFICATIONS), full(topics.FEEDBACK), **raw)
        self.t_notifications = app.topic(full(topics.NOTIFICATIONS), key_serializer="raw",
                                         value_serializer=self.codecs[topics.NOTIFICATIONS])
        self.t_feedback = app.topic(full(topics.FEEDBACK), key_serializer="raw",
                                    value_serializer=self.codecs[topics.FEEDBACK])
        state = {"partitions": partitions, "key_serializer": "json", "value_serializer": "json", "compacting": True,
                 "deleting": False, "internal": True}
        # One table, one changelog: the decide agent's keys (engine.py) and the ledger agent's (done:, steps:,
        # ack:, used:, fb:) never overlap, and each key is always written from the same source partition.
        self.state = app.Table("state", partitions=partitions, on_recover=self._complete_recovery,
                               changelog_topic=app.topic(full(topics.NOTIFIER_STATE_CHANGELOG), **state))
        self.decisions = self.ledger = self.state
        app.agent(self.t_sources, name="decide")(self._decide_agent)
        app.agent(self.t_answers, name="ledger")(self._ledger_agent)
        app.timer(s.notifier_tick_s, name="tick")(self._tick)
        app.task(self._after_recovery)
        return app

    async def _decide_agent(self, stream: Any) -> None:
        async for ev in stream.events():
            await self._consume(ev, self._on_source)

    async def _ledger_agent(self, stream: Any) -> None:
        async for ev in stream.events():
            await self._consume(ev, self._on_answer)
            msg = ev.message
            tp = (msg.topic, msg.partition)
            self._ledger_pos[tp] = max(self._ledger_pos.get(tp, 0), msg.offset + 1)
            self._ledger_last_at = time.monotonic()

    async def _consume(self, ev: Any, handle: Callable) -> None:
        """Decode with the topic's codec, handle inside a `process` span; bad input goes to the dead letters."""
        msg = ev.message
        topic = msg.topic[len(self.settings.topic_prefix):]
        self._m_consumed.labels(topic).inc()
        headers = _headers(msg)
        try:
            value = self.codecs[topic].loads(msg.value)
        except SerdeError as exc:
            await self._dead_letter(msg, topic, "deserialize", exc, headers)
            return
        with telemetry.process_span(msg.topic, headers, msg.partition, msg.offset, self.settings.group_id):
            try:
                await handle(topic, value, headers)
            except Exception as exc:  # noqa: BLE001 - one bad record never stops the notifier
                await self._dead_letter(msg, topic, "process", exc, headers)

    async def _dead_letter(self, msg: Any, topic: str, stage: str, exc: BaseException,
                           headers: list[tuple[str, bytes]]) -> None:
        out = headers + error_headers(topic=msg.topic, partition=msg.partition, offset=msg.offset, stage=stage,
                                      error_class=type(exc).__name__, message=str(exc),
                                      service=self.settings.service_name, group=self.settings.group_id)
        await self.app.producer.send_and_wait(self.settings.topic(topics.dlq(topic)), msg.key, msg.value,
                                              None, None, out)
        self._m_dlq.labels(topic, stage).inc()
        throttled_event(log, self._dlq_throttle, (topic, stage, type(exc).__name__), "dead_lettered", level=30,
                        topic=msg.topic, partition=msg.partition, offset=msg.offset, stage=stage,
                        error=f"{type(exc).__name__}: {exc}"[:500])

    # --- decisions --------------------------------------------------------------------------------------------

    async def _on_source(self, topic: str, rec: dict, headers: list[tuple[str, bytes]]) -> None:
        now = self.clock()
        self._source_count += 1
        if self._source_count % 5000 == 0:
            self._prune(now)
        why: str | None = None
        if topic == topics.LINE_ALARMS:
            item, why = alarm_item(self.decisions, rec)
        elif topic == topics.RECOMMENDATIONS:
            item = recommendation_item(rec)
        else:
            item, why = action_item(rec)
        if item is None:
            self._m_suppressed.labels(why or "unknown").inc()
            return
        decision = self.engine.decide(self.decisions, item, now)
        if decision.status != "notify":
            self._m_suppressed.labels(decision.reason or "unknown").inc()
            # The audit record rides on the event: Faust publishes it before the offset is committed.
            await self.t_notifications.send(key=item.notification_id.encode(), value=self._record(
                item.notification_id, item, "-", "-", 1, "suppressed", decision.reason, now))
            return
        n = self._notification(item, decision.groups, now)
        targets = self._targets(decision.groups)
        self.decisions[f"intent:{n['notification_id']}"] = {"n": n, "targets": targets, "at": now}
        self._m_notifications.labels(n["kind"]).inc()
        self.dispatcher.submit([Delivery(n, ch, target, op) for ch, target, op in targets])

    def _notification(self, item: Item, groups: list[str], now: float, **extra: Any) -> dict:
        return {"notification_id": item.notification_id, "kind": item.kind, "line_id": item.line_id,
                "severity": item.severity, "title": item.title, "summary": item.summary,
                "category": item.category, "recommendation_id": item.recommendation_id,
                "action_id": item.action_id, "alarm_id": item.alarm_id, "root_id": item.notification_id,
                "subject": item.subject, "steps": item.steps, "expires_at_ms": item.expires_at_ms,
                "actionable": item.kind == "action" and item.transition == "pending_approval",
                "created_at": int(now * 1000), "event_ms": item.event_ms, "groups": groups, **extra}

    def _prune(self, now: float) -> None:
        """Forget intents, dedup marks and digests older than a day (the decide agent owns the table)."""
        horizon = now - INTENT_RETENTION_S
        for key in [k for k in self.decisions if k.startswith(("intent:", "seen:", "fp:", "digest:"))]:
            value = self.decisions.get(key)
            at = value.get("at", now) if isinstance(value, dict) and "at" in value else value
            if key.startswith("digest:"):
                at = value["period"] * self.rules.limits.digest_interval_s if isinstance(value, dict) else now
            if isinstance(at, (int, float)) and at < horizon:
                del self.decisions[key]

    # --- ledger -----------------------------------------------------------------------------------------------

    async def _on_answer(self, topic: str, rec: dict, headers: list[tuple[str, bytes]]) -> None:
        jti = _header(headers, JTI_HEADER)
        if jti:
            self.ledger[f"used:{jti}"] = rec["created_at"]
        if topic == topics.FEEDBACK:
            self.ledger[f"fb:{rec['feedback_id']}"] = rec["created_at"]
            return
        status, nid = rec["status"], rec["notification_id"]
        if status in ("sent", "failed"):
            final = status == "sent" or (rec.get("error") or "").startswith("final:")
            if final:
                self.ledger[f"done:{nid}|{rec['channel']}|{rec['target']}"] = status
        elif status == "escalated":
            step = int(rec["target"].split(":", 1)[0].removeprefix("step "))
            if step > self.ledger.get(f"steps:{nid}", 0):
                self.ledger[f"steps:{nid}"] = step
        elif status == "acknowledged" and self.ledger.get(f"ack:{nid}") is None:
            self.ledger[f"ack:{nid}"] = {"by": rec["target"], "at": rec["created_at"]}
            entry = self.decisions.get(f"esc:{nid}")
            if entry is not None and self._started:
                self._m_ack.observe(max(0.0, rec["created_at"] / 1000.0 - entry["created_at"]))

    def _targets(self, groups: list[str]) -> list[tuple[str, str, str]]:
        return [t for t in self.rules.targets(groups) if t[0] not in self.off]

    def delivered(self, delivery_id: str) -> bool:
        return self.ledger.get(f"done:{delivery_id}") is not None

    def link_used(self, jti: str) -> bool:
        return jti in self._used_local or self.ledger.get(f"used:{jti}") is not None

    def _record(self, nid: str, item: Item | dict, channel: str, target: str, attempt: int, status: str,
                error: str | None, now: float) -> dict:
        get = item.get if isinstance(item, dict) else (lambda k, d=None: getattr(item, k, d))
        return {"notification_id": nid, "recommendation_id": get("recommendation_id"), "alarm_id": get("alarm_id"),
                "action_id": get("action_id"), "line_id": get("line_id"), "channel": channel, "target": target,
                "attempt": attempt, "status": status, "error": error, "severity": get("severity"),
                "title": get("title"), "created_at": int(now * 1000)}

    async def _on_attempt(self, d: Delivery, attempt: int, status: str, error: str | None) -> None:
        """Every attempt and its result on notifications.v1, keyed by the notification id (acknowledged before
        the delivery counts as done: the ledger agent reads it back)."""
        n = d.notification
        last = status == "failed" and (attempt >= self.settings.notifier_retry_max or
                                       not self._retryable(error))
        if last:
            error = f"final: {error}"
        target = d.target if self.rules.channels[d.channel].type != "webhook" else d.channel  # URLs are secrets
        fut = await self.t_notifications.send(key=n["notification_id"].encode(), value=self._record(
            n["notification_id"], n, d.channel, target, attempt, status, error, self.clock()),
            headers=telemetry.inject_headers(None), force=True)
        await fut

    @staticmethod
    def _retryable(error: str | None) -> bool:
        return not (error or "").startswith(("no URL", "no SMTP", "HTTP 4")) or (error or "").startswith(
            ("HTTP 408", "HTTP 429"))

    # --- timers -----------------------------------------------------------------------------------------------

    async def _tick(self) -> None:
        if not self.dispatcher.ready.is_set():
            return
        try:
            await self._tick_once(self.clock())
        except Exception as exc:  # noqa: BLE001 - a failing tick is logged and tried again next time
            event(log, "tick_failed", level=40, error=f"{type(exc).__name__}: {exc}")

    async def _tick_once(self, now: float) -> None:
        entries = [v for k, v in list(self.decisions.items()) if k.startswith("esc:")]
        for entry, step in due_escalations(entries, self._steps_done, self._acked, now):
            await self._escalate(entry, step, now)
        for entry in entries:  # what a crash interrupted: the last step's deliveries, if not done
            done = self._steps_done(entry["root"])
            if done and not entry.get("closed") and not self._acked(entry["root"]):
                self._submit_step(entry, done - 1, now)
        period = self.engine.period(now)
        digests = [v for k, v in list(self.decisions.items()) if k.startswith("digest:")]
        for entry in due_digests(digests, period, self._digest_done):
            self._send_digest(entry, now)

    def _steps_done(self, root: str) -> int:
        return max(self.ledger.get(f"steps:{root}", 0), self._esc_local.get(root, 0))

    def _acked(self, root: str) -> bool:
        return root in self._acked_local or self.ledger.get(f"ack:{root}") is not None

    def _step_notification(self, entry: dict, step: int, now: float) -> tuple[dict, list[str]]:
        item = Item(**entry["item"])
        names = step_recipients(entry, step)
        groups = [g.name for g in self.rules.resolve(names, now)]
        stages = len(entry["stages"])
        label = f"Escalation {step + 1}" if step < stages else f"Reminder {step - stages + 1}"
        open_min = int((now - entry["created_at"]) // 60)
        n = self._notification(item, groups, now)
        n.update(notification_id=f"{entry['root']}-s{step + 1}", kind="escalation", root_id=entry["root"],
                 title=f"{label}: {item.title}",
                 summary=f"Not acknowledged after {open_min} min. {item.summary}",
                 created_at=int((entry["created_at"] + (now - entry["created_at"])) * 1000))
        return n, groups

    def _submit_step(self, entry: dict, step: int, now: float) -> None:
        n, groups = self._step_notification(entry, step, now)
        n["notification_id"] = f"{entry['root']}-s{step + 1}"
        self.dispatcher.submit([Delivery(n, ch, t, op) for ch, t, op in self._targets(groups)])

    async def _escalate(self, entry: dict, step: int, now: float) -> None:
        root = entry["root"]
        n, groups = self._step_notification(entry, step, now)
        self._esc_local[root] = step + 1
        fut = await self.t_notifications.send(key=root.encode(), value=self._record(
            root, n, "-", f"step {step + 1}: {','.join(groups)}", 1, "escalated", None, now), force=True)
        await fut
        self._m_escalations.inc()
        self._m_notifications.labels("escalation").inc()
        event(log, "escalated", root=root, step=step + 1, groups=groups)
        self.dispatcher.submit([Delivery(n, ch, t, op) for ch, t, op in self._targets(groups)])

    def _digest_done(self, nid: str) -> bool:
        return False  # the dispatcher skips deliveries already done or in flight

    def _send_digest(self, entry: dict, now: float) -> None:
        nid = digest_id(entry["line_id"], entry["period"])
        groups = [g.name for g in self.rules.resolve(entry["groups"], now)]
        targets = self._targets(groups)
        if not targets or all(self.delivered(f"{nid}|{ch}|{t}") for ch, t, _ in targets):
            return
        reasons = ", ".join(f"{k} {v}" for k, v in sorted(entry["by_reason"].items()))
        lines = [f"- [{i['severity']}] {i['title']}" for i in entry["items"]]
        more = entry["count"] - len(entry["items"])
        summary = "\n".join([f"{entry['count']} item(s) held back ({reasons}).", *lines] +
                            ([f"... and {more} more"] if more > 0 else []))
        n = {"notification_id": nid, "kind": "digest", "line_id": entry["line_id"], "severity": "info",
             "title": f"Digest for {entry['line_id']}: {entry['count']} item(s)", "summary": summary,
             "category": "digest", "recommendation_id": None, "action_id": None, "alarm_id": None,
             "root_id": nid, "subject": f"digest:{nid}", "steps": [], "expires_at_ms": None, "actionable": False,
             "created_at": int(now * 1000), "event_ms": int(now * 1000), "groups": groups}
        submitted = self.dispatcher.submit([Delivery(n, ch, t, op) for ch, t, op in targets])
        if submitted:
            self._m_notifications.labels("digest").inc()

    # --- start-up ---------------------------------------------------------------------------------------------

    async def _complete_recovery(self) -> None:
        """Faust's recovery reads a changelog up to its high watermark, and Tansu 0.6 reports that at the first
        offset of the last batch + 1 (measured: 5 records in one batch, end offset 1), so the writes after the
        first one of the last batch would be lost. Faust awaits this callback before the agents resume: re-read
        the changelog to its true end (`read_topic`) and put back what Faust's recovery missed."""
        mine = {tp.partition for tp in self.app.consumer.assignment()
                if tp.topic == self.settings.topic(topics.LINE_ALARMS)}
        latest: dict[bytes, tuple[int, bytes | None]] = {}

        def read() -> None:
            for r in read_topic(self.settings, topics.NOTIFIER_STATE_CHANGELOG, decode=False, timeout_s=120,
                                quiet_s=0.3):
                if r.partition in mine and r.key is not None:
                    latest[r.key] = (r.partition, r.raw_value)

        started = time.monotonic()
        await asyncio.to_thread(read)
        store = self.state.data
        fixed = 0
        for raw_key, (partition, raw_value) in latest.items():
            key = json.loads(raw_key)
            if raw_value is None:
                if store.data.pop(key, None) is not None:
                    fixed += 1
                continue
            value = json.loads(raw_value)
            if store.data.get(key) != value:
                store.data[key] = value
                store._key_partition[key] = partition
                fixed += 1
        event(log, "state_recovered", keys=len(store.data), changelog_keys=len(latest), put_back=fixed,
              seconds=round(time.monotonic() - started, 3))

    async def _after_recovery(self) -> None:
        """Runs once tables are recovered (Faust starts app tasks then): wait until the ledger agent has read
        its topics to their end as of now, then let deliveries go, re-starting intents a crash left open."""
        assignment = [tp for tp in self.app.consumer.assignment()
                      if tp.topic in (self.settings.topic(topics.NOTIFICATIONS), self.settings.topic(topics.FEEDBACK))]
        highwaters = await self.app.consumer.highwaters(*assignment) if assignment else {}
        targets = {(tp.topic, tp.partition): off for tp, off in highwaters.items() if off}
        committed = getattr(self.app.consumer, "_committed_offset", {})  # next offset to read, per partition
        for tp in assignment:
            self._ledger_pos.setdefault((tp.topic, tp.partition), committed.get(tp) or 0)
        started = time.monotonic()
        while any(self._ledger_pos.get(tp, 0) < off for tp, off in targets.items()):
            await asyncio.sleep(0.02)
            if time.monotonic() - started > 120:
                event(log, "ledger_catch_up_slow", level=30, behind={f"{t}[{p}]": off - self._ledger_pos.get((t, p), 0)
                                                                    for (t, p), off in targets.items()})
                started = time.monotonic()
        # Tansu reports a high watermark at the first offset of the last batch: also wait until the ledger has
        # been quiet for a moment, as lineguard.kafka.read_topic does.
        while time.monotonic() - self._ledger_last_at < 0.5:
            await asyncio.sleep(0.05)
        self._started = True
        resumed = 0
        intents = sorted((v for k, v in list(self.decisions.items()) if k.startswith("intent:")),
                         key=lambda v: v["at"])
        for intent in intents:
            n = intent["n"]
            for ch, target, op in intent["targets"]:
                if self.rules.channels.get(ch) and self.rules.channels[ch].type == "console" and \
                        self.delivered(f"{n['notification_id']}|{ch}|{target}"):
                    self.hub.publish(render.feed_event(n, self.links_for(Delivery(n, ch, target, op))))
            resumed += self.dispatcher.submit([Delivery(n, ch, t, op) for ch, t, op in intent["targets"]])
        self.dispatcher.ready.set()
        event(log, "notifier_ready", ledger_entries=len(self.ledger), decisions=len(self.decisions),
              intents_resumed=resumed, seconds=round(time.monotonic() - started, 3))

    def ready(self) -> tuple[bool, str]:
        if not self.dispatcher.ready.is_set():
            return False, "recovering tables and the delivery ledger"
        return True, ""

    async def run(self, stopping: asyncio.Event) -> None:
        # Faust's start returns once the tables are recovered: a stop asked for meanwhile must not wait for that.
        start = asyncio.ensure_future(self.app.start())
        stop = asyncio.ensure_future(stopping.wait())
        await asyncio.wait({start, stop}, return_when=asyncio.FIRST_COMPLETED)
        if not start.done():
            start.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await start
        await stop
        self.hub.close()
        await self.dispatcher.drain(5.0)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.app.stop(), 20.0)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
        shutil.rmtree(self.datadir, ignore_errors=True)

    # --- channels' helpers ------------------------------------------------------------------------------------

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession()
        return self._session

    def _sns_client(self) -> Any:
        if self._sns is None:
            if self._sns_factory is not None:
                self._sns = self._sns_factory()
            else:
                import boto3

                self._sns = boto3.client("sns", region_name=self.settings.notifier_aws_region,
                                         endpoint_url=self.settings.notifier_sns_endpoint_url)
        return self._sns

    def links_for(self, d: Delivery) -> dict[str, str]:
        """Signed links for this delivery's recipient: acknowledge (the root notification that escalates), vote,
        and approve/reject for an action waiting for approval."""
        n = d.notification
        now = self.clock()
        if n["kind"] == "digest":
            return {}
        make = self.signer.make
        args = (n["subject"], n["line_id"], d.operator, now)
        links = {"ack": make("ack", n["root_id"], *args), "vote_up": make("up", n["root_id"], *args),
                 "vote_down": make("down", n["root_id"], *args)}
        if n.get("actionable") and n.get("action_id"):
            expires = n["expires_at_ms"] / 1000.0 if n.get("expires_at_ms") else None
            links["approve"] = make("approve", n["root_id"], *args, action_id=n["action_id"], expires_at=expires)
            links["reject"] = make("reject", n["root_id"], *args, action_id=n["action_id"], expires_at=expires)
        return links

    # --- answers ----------------------------------------------------------------------------------------------

    async def answer(self, claims: Claims, operator: str, comment: str | None) -> Outcome:
        if self.link_used(claims.jti):
            return Outcome(410, "Link refused: it was already used", "Each link works once.")
        now = self.clock()
        jti = [(JTI_HEADER, claims.jti.encode())]
        if claims.action == "ack":
            root = claims.notification_id
            if self._acked(root):
                self._used_local.add(claims.jti)
                return Outcome(200, "Already acknowledged", "Someone acknowledged this notification already.")
            self._used_local.add(claims.jti)
            self._acked_local.add(root)
            fut = await self.t_notifications.send(key=root.encode(), value={
                "notification_id": root, "recommendation_id": None, "alarm_id": None, "action_id": claims.action_id,
                "line_id": claims.line_id, "channel": "link", "target": operator, "attempt": 1,
                "status": "acknowledged", "error": comment, "severity": "info", "title": "acknowledged",
                "created_at": int(now * 1000)}, headers=jti, force=True)
            await fut
            event(log, "acknowledged", notification_id=root, operator=operator)
            return Outcome(200, "Acknowledged", f"Thank you, {operator}: escalation of this notification stops.")
        if claims.action in ("up", "down"):
            fid = f"vote-{short_hash(claims.subject, operator)}"
            if fid in self._feedback_local or self.ledger.get(f"fb:{fid}") is not None:
                self._used_local.add(claims.jti)
                return Outcome(409, "Already voted", f"{operator} has voted on this already; one vote each.")
            self._feedback_local.add(fid)
            self._used_local.add(claims.jti)
            await self._feedback(fid, claims, operator, "vote", 1 if claims.action == "up" else -1, comment, now, jti)
            return Outcome(200, "Vote recorded", f"Thank you, {operator}: your vote was recorded.")
        return await self._decide_action(claims, operator, comment, now, jti)

    async def _feedback(self, fid: str, claims: Claims, operator: str, kind: str, vote: int | None,
                        comment: str | None, now: float, headers: list) -> None:
        fut = await self.t_feedback.send(key=claims.subject.encode(), value={
            "feedback_id": fid, "recommendation_id": claims.subject, "line_id": claims.line_id, "kind": kind,
            "action_id": claims.action_id, "vote": vote, "comment": comment, "operator": operator,
            "created_at": int(now * 1000)}, headers=headers, force=True)
        await fut

    async def _decide_action(self, claims: Claims, operator: str, comment: str | None, now: float,
                             jti: list) -> Outcome:
        verb = claims.action  # approve or reject
        url = f"{self.settings.notifier_actuator_url.rstrip('/')}/v1/actions/{claims.action_id}/{verb}"
        self._used_local.add(claims.jti)
        try:
            async with self._http().post(url, json={"operator": operator, "comment": comment or ""},
                                         headers={"Authorization": f"Bearer {self.settings.notifier_actuator_token}"},
                                         timeout=aiohttp.ClientTimeout(total=10)) as resp:
                body = (await resp.text())[:300]
                status = resp.status
        except (aiohttp.ClientError, TimeoutError) as exc:
            self._used_local.discard(claims.jti)
            return Outcome(502, "The actuator did not answer", f"Nothing was decided; try again ({exc}).")
        if status >= 300:
            self._used_local.discard(claims.jti)
            return Outcome(409 if status == 409 else 502, f"The actuator refused ({status})", body)
        kind = "approval" if verb == "approve" else "rejection"
        await self._feedback(f"{kind}-{short_hash(claims.action_id, operator)}", claims, operator, kind, None,
                             comment, now, jti)
        done = "approved" if verb == "approve" else "rejected"
        return Outcome(200, f"Action {done}", f"{operator} {done} action {claims.action_id}.")


async def build(rt: Runtime[NotifierSettings]) -> Service:
    settings = rt.settings
    try:
        rules = load_rules(settings.notifier_rules_file)
    except RulesError as exc:
        raise StartupError(str(exc)) from None
    notifier = Notifier(settings, rules)

    sink = deque(maxlen=500) if settings.notifier_webhook_sink else None

    def routes(app: Any) -> None:
        add_routes(app, notifier.hub, notifier.signer, settings.notifier_feed_token, notifier.answer,
                   notifier.link_used, lambda: notifier.dispatcher.ready.is_set(), notifier.clock, sink)

    async def run() -> None:
        await notifier.run(rt.stopping)

    def describe() -> dict[str, Any]:
        # Check mode's summary (--check-config): the Faust/aiokafka client does not come from lineguard.kafka.
        creds = notifier.app.conf.broker_credentials
        protocol, mechanism = getattr(creds, "protocol", None), getattr(creds, "mechanism", None)
        return {"kafka": {"bootstrap": settings.kafka_bootstrap, "clients": {"faust": 1},
                          "security_protocol": getattr(protocol, "value", "PLAINTEXT"),
                          "sasl_mechanism": getattr(mechanism, "value", None),
                          "ssl_ca_location": settings.kafka_security.get("ssl.ca.location"),
                          "msk_iam": isinstance(getattr(creds, "oauth_cb", None), MskIamTokenProvider) or None}}

    return Service(routes=routes, tasks=[run], ready=notifier.ready, on_stop=notifier.close, stop_timeout_s=30.0,
                   describe=describe)
