"""Conversation context per chat: in memory only, bounded by a token budget.

Nothing of it is written to disk or to the bus: a restart forgets every conversation, and `/new`
forgets one. The budget is counted in estimated tokens (4 characters a token, the usual estimate
for English text; the model's own tokenizer is inside the enclave), and the oldest turns go first.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from dataclasses import dataclass, field

CHARS_PER_TOKEN = 4


def estimate_tokens(text: str) -> int:
    return max(1, -(-len(text) // CHARS_PER_TOKEN))


@dataclass
class Conversation:
    messages: deque[dict[str, str]] = field(default_factory=deque)

    def tokens(self) -> int:
        return sum(estimate_tokens(m["content"]) for m in self.messages)


class Conversations:
    """Per-chat message history, at most `budget_tokens` each and `max_chats` chats in all."""

    def __init__(self, budget_tokens: int, max_chats: int = 10_000) -> None:
        self.budget_tokens = budget_tokens
        self.max_chats = max_chats
        self._chats: OrderedDict[int, Conversation] = OrderedDict()

    def history(self, chat_id: int) -> list[dict[str, str]]:
        conversation = self._chats.get(chat_id)
        return list(conversation.messages) if conversation else []

    def with_prompt(self, chat_id: int, prompt: str) -> list[dict[str, str]]:
        """The messages to send: the history that fits the budget beside `prompt`, and it."""
        messages = self.history(chat_id)
        budget = self.budget_tokens - estimate_tokens(prompt)
        while messages and sum(estimate_tokens(m["content"]) for m in messages) > budget:
            messages.pop(0)
        return [*messages, {"role": "user", "content": prompt}]

    def add_turn(self, chat_id: int, prompt: str, answer: str) -> None:
        conversation = self._chats.pop(chat_id, None) or Conversation()
        self._chats[chat_id] = conversation  # most recently used last
        conversation.messages.append({"role": "user", "content": prompt})
        conversation.messages.append({"role": "assistant", "content": answer})
        while conversation.messages and conversation.tokens() > self.budget_tokens:
            conversation.messages.popleft()
        while len(self._chats) > self.max_chats:
            self._chats.popitem(last=False)

    def clear(self, chat_id: int) -> None:
        self._chats.pop(chat_id, None)
