"""Splitting answers into Telegram messages.

Telegram measures a message's length in UTF-16 code units (4,096 at most). Answers are sent as
plain text (no parse mode), so there are no entities to break; a split still prefers a paragraph,
then a line, then a word boundary, and never cuts a surrogate pair.
"""

from __future__ import annotations

MESSAGE_LIMIT = 4096


def utf16_len(text: str) -> int:
    return len(text.encode("utf-16-le")) // 2


def _prefix_within(text: str, limit: int) -> int:
    """The number of characters of `text` whose UTF-16 length is at most `limit`."""
    units = 0
    for index, char in enumerate(text):
        units += 2 if ord(char) > 0xFFFF else 1
        if units > limit:
            return index
    return len(text)


def split_message(text: str, limit: int = MESSAGE_LIMIT) -> list[str]:
    """`text` as messages of at most `limit` UTF-16 units, split at the best boundary."""
    if limit < 2:
        raise ValueError("limit must be at least 2")
    parts: list[str] = []
    rest = text
    while utf16_len(rest) > limit:
        cut = _prefix_within(rest, limit)
        window = rest[:cut]
        for separator in ("\n\n", "\n", " "):
            at = window.rfind(separator)
            if at > cut // 2:  # a boundary in the first half would leave tiny messages
                cut = at + len(separator)
                break
        parts.append(rest[:cut].rstrip())
        rest = rest[cut:].lstrip("\n")
    if rest.strip() or not parts:
        parts.append(rest)
    return parts


def tail_within(text: str, limit: int = MESSAGE_LIMIT) -> str:
    """The last part of `text` that fits one message: what a draft of a long answer shows."""
    if utf16_len(text) <= limit:
        return text
    return split_message(text, limit)[-1]
