"""`lineguard up --workers N --lines N`: the processes it starts and the cap on workers."""

from __future__ import annotations

from lineguard.catalog import load_catalog
from lineguard.cli import build_parser
from lineguard.embedded import SERVICE_PORTS, service_children, worker_cap


def test_scalable_services_get_n_workers_in_one_group_each_on_its_own_port():
    advisors = service_children("advisor", {"LINEGUARD_KAFKA_BOOTSTRAP": "x"}, workers=3)
    assert [c.name for c in advisors] == ["advisor-1", "advisor-2", "advisor-3"]
    ports = [int(c.env["LINEGUARD_HTTP_PORT"]) for c in advisors]
    assert ports[0] == SERVICE_PORTS["advisor"] and len(set(ports)) == 3
    assert all(c.ready_url == f"http://127.0.0.1:{p}/readyz" for c, p in zip(advisors, ports, strict=True))
    # same service name (and so the same default consumer group) in every worker
    assert {c.env["LINEGUARD_SERVICE_NAME"] for c in advisors} == {"advisor"}
    assert all(c.argv[-1] == "services.advisor" and c.env["LINEGUARD_KAFKA_BOOTSTRAP"] == "x" for c in advisors)
    assert [c.name for c in service_children("ingest", {}, workers=3)] == ["ingest"]  # one MQTT session
    assert [c.name for c in service_children("normalizer", {}, workers=1)] == ["normalizer"]


def test_workers_are_capped_where_more_would_get_no_partition():
    catalog = load_catalog()
    assert worker_cap(catalog, "advisor") == max(
        catalog[t].partitions for t in ("line.observations.v1", "line.alarms.v1", "line.inspections.v1"))
    assert worker_cap(catalog, "normalizer") == catalog["raw.telemetry.v1"].partitions


def test_up_takes_lines_and_workers():
    args = build_parser().parse_args(["up", "--lines", "10", "--workers", "2"])
    assert (args.lines, args.workers) == (10, 2)
