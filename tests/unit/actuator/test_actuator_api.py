"""The approvals API over real HTTP (aiohttp test server): who may decide, 401/404/409, delegates naming the
operator, the listing the console and the notifier read."""

from __future__ import annotations

import pytest
from actuator_fakes import PLANT, Clock, PolicedLine
from aiohttp.test_utils import TestClient, TestServer

from lineguard.health import Health, create_app
from services.actuator.actions import Actuator
from services.actuator.api import Callers, add_approval_routes
from services.actuator.policy import load_policy
from services.actuator.settings import POLICY_FILE, ActuatorSettings

pytestmark = pytest.mark.anyio
POLICY = load_policy(POLICY_FILE, PLANT)
ALICE, BOB, CONSOLE = "alice-token-1", "bob-token-2", "console-token-3"
OVEN = "urn:ngsi-ld:Machine:line1-oven"


def recommendation(rec_id: str, value: float = 175.0) -> dict:
    return {"id": rec_id, "line_id": "line1", "title": "Oven zone 2 runs hot",
            "evidence": [{"description": "zone2_temperature 229.8 C"}],
            "proposed_actions": [{"machine_entity_id": OVEN, "parameter": "zone2_setpoint", "value": value,
                                  "unit_code": "CEL", "reason": "zone 2 runs 40 C hot"}]}


@pytest.fixture
async def api():
    clock = Clock()
    approved: set[str] = set()
    line = PolicedLine(clock, POLICY, approved)
    published: list[dict] = []

    async def publish(record: dict) -> None:
        published.append(dict(record))

    actuator = Actuator(PLANT, POLICY, line, publish, clock=clock)  # type: ignore[arg-type]
    settings = ActuatorSettings.from_env(environ={
        "LINEGUARD_ACTUATOR_OPERATOR_TOKENS": f"alice:{ALICE},bob:{BOB}",
        "LINEGUARD_ACTUATOR_DELEGATE_TOKENS": f"console:{CONSOLE}"})
    app = create_app(Health("actuator"))
    add_approval_routes(app, actuator, Callers(settings.operators(), settings.delegates()), approve_wait_s=5)
    client = TestClient(TestServer(app))
    await client.start_server()
    try:
        yield client, actuator, clock, approved, line
    finally:
        await client.close()


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def test_pending_actions_are_listed_with_evidence_and_policy_check(api) -> None:
    client, actuator, *_ = api
    await actuator.intake(recommendation("rec-1"))
    response = await client.get("/v1/actions?state=pending_approval&line_id=line1", headers=auth(BOB))
    assert response.status == 200
    (action,) = (await response.json())["actions"]
    assert action["action_id"] == "rec-1-a0" and action["recommendation_id"] == "rec-1"
    assert action["machine"] == "oven" and action["parameter"] == "zone2_setpoint"
    assert (action["current_value"], action["proposed_value"], action["unit"]) == (190.0, 175.0, "CEL")
    assert action["state"] == "pending_approval" and action["reason"] == "zone 2 runs 40 C hot"
    assert action["policy_check"]["allowed"] and action["policy_check"]["mode"] == "approve"
    assert action["evidence"] == ["zone2_temperature 229.8 C"] and action["expires_at"] > action["created_at"]
    other_line = await client.get("/v1/actions?line_id=line2", headers=auth(BOB))
    assert (await other_line.json())["actions"] == []
    one = await client.get("/v1/actions/rec-1-a0", headers=auth(CONSOLE))
    assert one.status == 200 and (await one.json())["action_id"] == "rec-1-a0"


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {ALICE}"},
                                     {"Authorization": "Bearer "}])
async def test_a_missing_or_wrong_token_is_refused_with_401(api, headers) -> None:
    client, actuator, *_ = api
    await actuator.intake(recommendation("rec-1"))
    for method, path in (("GET", "/v1/actions"), ("GET", "/v1/actions/rec-1-a0"),
                         ("POST", "/v1/actions/rec-1-a0/approve"), ("POST", "/v1/actions/rec-1-a0/reject")):
        response = await client.request(method, path, headers=headers, json={"comment": "x"})
        assert response.status == 401, (method, path)
        assert response.headers["WWW-Authenticate"].startswith("Bearer")
    assert actuator.ledger["rec-1-a0"]["status"] == "pending_approval"


async def test_unknown_action_is_404(api) -> None:
    client, *_ = api
    for method, path in (("GET", "/v1/actions/nope"), ("POST", "/v1/actions/nope/approve"),
                         ("POST", "/v1/actions/nope/reject")):
        response = await client.request(method, path, headers=auth(ALICE), json={})
        assert response.status == 404, (method, path)


async def test_approve_executes_and_a_second_decision_is_409(api) -> None:
    client, actuator, _, approved, line = api
    await actuator.intake(recommendation("rec-1"))
    approved.add("rec-1-a0")
    response = await client.post("/v1/actions/rec-1-a0/approve", headers=auth(ALICE), json={"comment": "go"})
    assert response.status == 200
    action = await response.json()
    assert action["state"] == "executed" and action["readback_value"] == 175.0 and action["actor"] == "alice"
    assert action["comment"] == "go" and line.setpoints[("oven", "zone2_setpoint")] == 175.0
    for verb in ("approve", "reject"):
        again = await client.post(f"/v1/actions/rec-1-a0/{verb}", headers=auth(BOB), json={})
        assert again.status == 409 and "already decided" in (await again.json())["reason"]
    assert len(line.writes) == 1


async def test_an_expired_action_is_409(api) -> None:
    client, actuator, clock, *_ = api
    await actuator.intake(recommendation("rec-1"))
    clock.now += 901
    response = await client.post("/v1/actions/rec-1-a0/approve", headers=auth(ALICE), json={})
    assert response.status == 409 and "expired" in (await response.json())["reason"]
    shown = await (await client.get("/v1/actions/rec-1-a0", headers=auth(ALICE))).json()
    assert shown["state"] == "expired" and shown["actor"] == "policy"
    listed = await (await client.get("/v1/actions", headers=auth(ALICE))).json()
    assert listed["actions"] == []


async def test_a_delegate_names_the_operator_and_the_audit_says_so(api) -> None:
    client, actuator, *_ = api
    await actuator.intake(recommendation("rec-1"))
    nameless = await client.post("/v1/actions/rec-1-a0/reject", headers=auth(CONSOLE), json={"comment": "no"})
    assert nameless.status == 400 and "must name the operator" in (await nameless.json())["reason"]
    response = await client.post("/v1/actions/rec-1-a0/reject", headers=auth(CONSOLE),
                                 json={"operator": "alice", "comment": "not during the shift change"})
    assert response.status == 200
    action = await response.json()
    assert action["state"] == "rejected" and action["actor"] == "alice via console"
    assert action["reason"] == "rejected by alice via console: not during the shift change"


@pytest.mark.parametrize("body", [b"{not json", b"[1, 2]", b'{"comment": 5}'])
async def test_a_malformed_body_is_400_and_decides_nothing(api, body) -> None:
    client, actuator, *_ = api
    await actuator.intake(recommendation("rec-1"))
    response = await client.post("/v1/actions/rec-1-a0/approve", headers={**auth(ALICE),
                                                                          "Content-Type": "application/json"},
                                 data=body)
    assert response.status == 400
    assert actuator.ledger["rec-1-a0"]["status"] == "pending_approval"


def test_token_settings_are_validated() -> None:
    from lineguard.settings import SettingsError

    with pytest.raises(SettingsError, match="LINEGUARD_ACTUATOR_OPERATOR_TOKENS: expected comma-separated"):
        ActuatorSettings.from_env(environ={"LINEGUARD_ACTUATOR_OPERATOR_TOKENS": "alice"})
    with pytest.raises(SettingsError, match="share a token"):
        ActuatorSettings.from_env(environ={"LINEGUARD_ACTUATOR_OPERATOR_TOKENS": "alice:t1",
                                           "LINEGUARD_ACTUATOR_DELEGATE_TOKENS": "console:t1"})
