"""Learning without a GPU: worked examples from the train split (SOP examples and upvoted recommendations) put
in front of the question, chosen by BM25 similarity (the advisor's retriever), for any provider.

The small local model copies structure and wording far better than it follows instructions, so the nearest
solved examples teach it the answer's shape, its category and what to cite. The exemplars come from the train
split only, so an evaluation on the test split measures the effect honestly.
"""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

from services.advisor.models import ModelProvider, ModelRequest, ModelResponse
from services.advisor.recommend import Exemplars
from services.trainer.dataset import user_prompt


class ExemplarProvider:
    def __init__(
        self, inner: ModelProvider, train: list[dict[str, Any]], k: int = 2, answer_chars: int = 900
    ) -> None:
        self.inner = inner
        self.alias = replace(inner.alias, version=f"{inner.alias.version or ''}+exemplars{k}")
        self.k = k
        self.train = train
        self.answer_chars = answer_chars
        # the advisor's exemplar retrieval (BM25), keyed by each example's prompt as published
        self.nearest = Exemplars(
            [{"id": e.get("id"), "question": user_prompt(e), "answer": e["answer"], "example": e} for e in train]
        )

    def exemplars(self, prompt: str) -> list[dict[str, Any]]:
        return [item["example"] for item in self.nearest.nearest(prompt, self.k)]

    def prompt_with_exemplars(self, prompt: str) -> str:
        parts = []
        for number, example in enumerate(self.exemplars(prompt), start=1):
            answer = json.dumps(example["answer"], sort_keys=True)[: self.answer_chars]
            parts.append(f"Example {number}.\nQuestion: {example['question']}\nAnswer: {answer}")
        if not parts:
            return prompt
        return "Solved examples:\n" + "\n\n".join(parts) + "\n\nNow answer this one.\nQuestion: " + prompt

    async def generate(self, request: ModelRequest) -> ModelResponse:
        return await self.inner.generate(replace(request, prompt=self.prompt_with_exemplars(request.prompt)))
