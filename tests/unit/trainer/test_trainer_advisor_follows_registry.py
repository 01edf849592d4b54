"""The advisor follows the registry's production alias without a restart (the `registry` model provider)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from lineguard.model_registry import FileStore, Registry
from lineguard.plant import default_plant_path, load_plant
from services.advisor.models import create_provider, parse_aliases
from services.advisor.recommend import Advisor
from services.advisor.retrieval import Retriever
from services.advisor.window import LineHistory, LineWindow

ROOT = Path(__file__).resolve().parents[3]
GOOD = {"valid_share": 0.9, "category_accuracy": 0.9, "safety_violations": 0}
BETTER = {**GOOD, "valid_share": 1.0}


def window(name: str) -> tuple[LineWindow, LineHistory]:
    doc = json.loads((ROOT / "tests/unit/advisor/fixtures" / f"{name}.json").read_text())
    return LineWindow.from_dict(doc["window"]), LineHistory.from_dict(doc["history"])


def test_advisor_switches_on_promote_and_rollback_at_the_next_window(tmp_path: Path) -> None:
    path = tmp_path / "registry.json"
    registry = Registry(FileStore(path))
    registry.register("v1", "analysis", "deterministic-analysis", metrics={"test": GOOD})
    registry.promote()
    # v2: an OpenAI-compatible server that is not there, so its windows fall back (and say which model failed)
    registry.register(
        "v2",
        "openai",
        "cookie-advisor-v2",
        options={"endpoint": "http://127.0.0.1:9", "max_attempts": 1, "timeout_s": 2},
        metrics={"test": BETTER},
    )
    aliases = parse_aliases(
        json.dumps({"advisor-registry": {"provider": "registry", "model_id": str(path), "check_every_s": 0}})
    )
    provider = create_provider(aliases["advisor-registry"])
    advisor = Advisor(
        load_plant(default_plant_path()), Retriever.from_folder(ROOT / "examples/cookie-line/docs"), provider
    )

    def evaluate(fixture: str):
        win, history = window(fixture)
        return asyncio.run(advisor.recommend(win, history, "scheduled", now_ms=1_764_404_000_000))

    first = evaluate("oven_zone_overheat_900")
    assert advisor.provider_name == "analysis" and not first.fallback and first.attempts == 0

    assert registry.promote().promote  # the next window uses v2, no restart
    second = evaluate("mixer_torque_loss_900")
    assert provider.alias.ref() == {"provider": "openai", "model_id": "cookie-advisor-v2", "version": "v2"}
    assert second.attempts == 2 and second.fallback and "127.0.0.1:9" in second.errors[0]

    assert registry.rollback() == "v1"  # one command, and the next window is back on v1
    third = evaluate("humidity_rise_900")
    assert provider.alias.version == "v1" and third.attempts == 0 and not third.fallback

    path.write_text("{not json")  # a registry that cannot be read keeps the model in use
    assert provider.alias.version == "v1"
