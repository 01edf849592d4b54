import json
import urllib.request

from lineguard import telemetry
from lineguard.health import BackgroundHttpServer, Health, create_app
from lineguard.logs import JsonFormatter, event, get_logger


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


def test_livez_readyz_and_metrics_over_http():
    health = Health("demo", liveness_timeout_s=0.5)
    telemetry.counter("demo", "widgets", "Widgets seen.", ["kind"]).labels("round").inc(3)
    server = BackgroundHttpServer(lambda: create_app(health), "127.0.0.1", 0)
    server.start()
    base = f"http://127.0.0.1:{server.port}"
    try:
        assert get(f"{base}/livez")[0] == 200
        status, body = get(f"{base}/readyz")
        assert status == 503 and json.loads(body)["why_not_ready"] == "starting"
        health.set_ready(True)
        assert get(f"{base}/readyz")[0] == 200
        status, metrics = get(f"{base}/metrics")
        assert 'lineguard_demo_widgets_total{kind="round"} 3.0' in metrics
        # No progress for longer than the liveness timeout: /livez fails (the loop is stuck).
        health._last_progress -= 1.0
        assert get(f"{base}/livez")[0] == 503
        health.beat()
        assert get(f"{base}/livez")[0] == 200
    finally:
        server.stop()


def test_json_log_lines_carry_fields():
    import logging

    record = logging.LogRecord("x", logging.INFO, __file__, 1, "thing_happened", None, None)
    record.fields = {"count": 3}
    line = json.loads(JsonFormatter().format(record))
    assert line["event"] == "thing_happened" and line["count"] == 3 and line["level"] == "info"
    event(get_logger("x"), "still_works", answer=42)  # no exception without handlers
