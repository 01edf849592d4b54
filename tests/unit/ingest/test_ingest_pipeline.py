"""IngestPipeline's delivery bookkeeping: one outcome per submit, delivered ids remembered, failed ones retried.

Kafka's delivery reports are driven by hand here (a recording producer with the real Avro serde) so that a
single failed record among delivered ones can be staged; the live broker path is covered by the integration tests.
"""

from __future__ import annotations

from typing import Any

from confluent_kafka import KafkaError, Message

from lineguard.avro import AvroSerde
from lineguard.settings import Settings
from services.ingest.pipeline import DEAD_LETTERS, READINGS, DeadLetter, IngestPipeline, reading, source


class RecordingProducer:
    """Keeps every produce() with its delivery callback; the test decides each record's outcome."""

    def __init__(self) -> None:
        self.serde = AvroSerde()
        self.queued: list[tuple[str, bytes, Any]] = []

    def start_polling(self) -> None:
        pass

    def full_topic(self, topic: str) -> str:
        return topic

    def note_delivery_error(self, err: KafkaError) -> None:
        pass

    def produce(self, topic: str, key: Any, value: bytes, headers: Any = None, on_delivery: Any = None,
                trace: bool = True) -> None:
        self.queued.append((topic, value, on_delivery))

    def deliver_all(self, fail_payload_containing: bytes | None = None) -> None:
        queued, self.queued = self.queued, []
        for topic, value, on_delivery in queued:
            failed = fail_payload_containing is not None and fail_payload_containing in value
            on_delivery(KafkaError(KafkaError._MSG_TIMED_OUT) if failed else None, Message(topic=topic, value=value))


def readings(*ids: str) -> list:
    return [reading(id=rid, device="line1-mixer", metric="torque", value=1.0, unit="Nm", observed_at=1, received_at=2,
                    src=source("mqtt", "line1-mixer", "plant/line1/mixer/torque", rid, None)) for rid in ids]


def make_pipeline() -> tuple[IngestPipeline, RecordingProducer]:
    producer = RecordingProducer()
    settings = Settings.from_env(environ={}, service_name="ingest-test")
    return IngestPipeline(settings, producer=producer), producer  # type: ignore[arg-type]


def test_one_outcome_per_submit_after_the_last_delivery_report():
    pipeline, producer = make_pipeline()
    outcomes: list[list[str]] = []
    assert pipeline.submit("mqtt", readings("a", "b", "c"), outcomes.append) == 3
    assert outcomes == []  # nothing is acknowledged upstream before Kafka confirmed
    producer.deliver_all()
    assert outcomes == [[]]


def test_a_failed_record_fails_its_submit_and_only_it_is_produced_again():
    pipeline, producer = make_pipeline()
    outcomes: list[list[str]] = []
    pipeline.submit("mqtt", readings("a", "b", "c"), outcomes.append)
    producer.deliver_all(fail_payload_containing=b"\x02b")  # the Avro string "b"
    assert len(outcomes) == 1 and len(outcomes[0]) == 1
    assert READINGS in outcomes[0][0] and "timed out" in outcomes[0][0]
    # The adapter retries the whole submit: the delivered ids are duplicates now, only "b" goes to Kafka again.
    assert pipeline.submit("mqtt", readings("a", "b", "c"), outcomes.append) == 1
    assert [topic for topic, _, _ in producer.queued] == [READINGS]
    producer.deliver_all()
    assert outcomes[1] == []


def test_a_submit_of_records_already_in_flight_waits_for_their_delivery():
    pipeline, producer = make_pipeline()
    first: list[list[str]] = []
    second: list[list[str]] = []
    pipeline.submit("mqtt", readings("a", "b"), first.append)
    assert pipeline.submit("mqtt", readings("b"), second.append) == 0  # joined, not produced twice
    assert len(producer.queued) == 2 and second == []
    producer.deliver_all()
    assert first == [[]] and second == [[]]


def test_a_record_that_does_not_fit_its_schema_is_dead_lettered_and_the_rest_delivered():
    pipeline, producer = make_pipeline()
    outcomes: list[list[str]] = []
    bad = readings("bad")[0]
    bad.value["value"] = object()  # not an Avro value: a mapping bug
    assert pipeline.submit("mqtt", [*readings("a"), bad], outcomes.append) == 1
    assert sorted(topic for topic, _, _ in producer.queued) == [READINGS, DEAD_LETTERS]
    producer.deliver_all()
    assert outcomes == [[]]


def test_a_retried_submit_does_not_dead_letter_the_same_input_twice():
    pipeline, producer = make_pipeline()
    outcomes: list[list[str]] = []
    letters = [DeadLetter(b"not json", "payload is not JSON", "InputError", "mqtt", "plant/line1/mixer/torque", "7")]
    records = readings("a")
    pipeline.submit("mqtt", records, outcomes.append, letters)
    producer.deliver_all(fail_payload_containing=b"\x02a")  # the reading fails, the dead letter is delivered
    assert len(outcomes[0]) == 1
    pipeline.submit("mqtt", records, outcomes.append, letters)  # the adapter retries the whole message batch
    assert [topic for topic, _, _ in producer.queued] == [READINGS]
    producer.deliver_all()
    assert outcomes[1] == []
