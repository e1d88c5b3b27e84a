"""ScriptedBackend: an in-process test double at the InferenceBackend seam.

It stands in for the Kafka pipeline (billing, scheduler, worker) so the HTTP surface can be
tested alone; the real pipeline replaces it. Behaviour is chosen per model by a plan: a list
of steps, each a `ChatChunk`/`Usage` to yield, an exception to raise, or a float to sleep.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

from cocoon.gateway.api import ChatChunk, InferenceRequest, ModelInfo, UnknownModel, Usage

Step = ChatChunk | Usage | BaseException | float
Plan = Callable[[InferenceRequest], list[Step]]


def reply(text: str, *, prompt_tokens: int = 7, pieces: int = 3) -> list[Step]:
    """A normal answer: `text` in `pieces` chunks, finish_reason stop, then usage."""
    size = max(1, -(-len(text) // pieces))
    parts = [text[i : i + size] for i in range(0, len(text), size)]
    steps: list[Step] = [ChatChunk(text=p) for p in parts[:-1]]
    steps.append(ChatChunk(text=parts[-1], finish_reason="stop"))
    steps.append(Usage(prompt_tokens=prompt_tokens, completion_tokens=len(parts)))
    return steps


@dataclass
class ScriptedBackend:
    plans: dict[str, Plan] = field(default_factory=dict)
    listed: list[ModelInfo] = field(default_factory=list)
    submitted: list[tuple[str, InferenceRequest]] = field(default_factory=list)
    completed: list[str] = field(default_factory=list)
    cancelled: list[str] = field(default_factory=list)
    cancel_seen: asyncio.Event | None = None

    async def models(self) -> list[ModelInfo]:
        return list(self.listed)

    async def submit(
        self, account_id: str, request: InferenceRequest
    ) -> AsyncIterator[ChatChunk | Usage]:
        self.submitted.append((account_id, request))
        plan = self.plans.get(request.model)
        if plan is None:
            raise UnknownModel(request.model)
        done = False
        try:
            for step in plan(request):
                if isinstance(step, float):
                    await asyncio.sleep(step)
                elif isinstance(step, BaseException):
                    raise step
                else:
                    yield step
            done = True
        finally:
            (self.completed if done else self.cancelled).append(request.request_id)
