"""Normalise Alpaca, ShareGPT and OpenAI ``messages`` records to one conversation shape.

Every chat source ends up as ``[{"role": "system"|"user"|"assistant", "content": str}, ...]`` so
that cleaning, deduplication and chat templating handle one shape instead of three.

A record that cannot be normalised raises ``InvalidConversation`` with a precise reason (which
field, which turn, what was found and what is allowed); the caller turns it into a
``RejectedRow``. The rules enforced, and why:

* roles are mapped through a role map (ShareGPT's ``human``/``gpt`` and friends); an unmapped role
  is rejected, never guessed, because a tool or function turn treated as a user turn would teach
  the model a different conversation than the one in the data;
* every content is a non-empty string (an empty turn trains the model to answer with nothing);
* at most one system message, and only first;
* after it, turns alternate user/assistant, starting with user and ending with assistant: most
  chat templates (Llama 2, Mistral, Gemma) refuse anything else at formatting time, and a trailing
  user turn has no answer to learn from. Enforcing it here reports the bad row with its line
  instead of failing the whole run later.

Stdlib only: this runs on every record of a chat corpus.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from tuneforge.data.readers import json_type

Messages = list[dict[str, str]]

CHAT_ROLES: tuple[str, ...] = ("system", "user", "assistant")

#: Source role -> canonical role. ``tool``/``function`` are deliberately absent (see module doc):
#: map them explicitly in ``role_map`` if a template can express them as one of the three roles.
DEFAULT_ROLE_MAP: dict[str, str] = {
    "system": "system",
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "model": "assistant",
}


class InvalidConversation(ValueError):
    """A chat record that cannot be normalised; ``str(exc)`` is the reject reason."""


# ------------------------------------------------------------------------------- per format


def from_alpaca(record: Mapping[str, Any], instruction_key: str = "instruction",
                output_key: str = "output") -> Messages:
    """``{instruction, input?, output, system?}`` -> system?, user, assistant.

    The user turn is the instruction followed by the input (after a blank line) when the input is
    non-empty: that is how the Alpaca prompt presents the two. Other prompt/response column names
    (e.g. GSM8K's ``question``/``answer``) are given with ``instruction_key``/``output_key``.
    """
    instruction = _required_text(record, instruction_key)
    output = _required_text(record, output_key)
    extra = _optional_text(record, "input")
    system = _optional_text(record, "system")
    messages: Messages = []
    if system:
        messages.append({"role": "system", "content": system})
    user = f"{instruction}\n\n{extra}" if extra else instruction
    messages.append({"role": "user", "content": user})
    messages.append({"role": "assistant", "content": output})
    return validate_messages(messages)


def from_sharegpt(record: Mapping[str, Any], role_map: Mapping[str, str] = DEFAULT_ROLE_MAP) -> Messages:
    """``{conversations: [{from, value}, ...], system?}`` -> messages."""
    turns = _turn_list(record, "conversations")
    messages: Messages = []
    system = _optional_text(record, "system")
    if system:
        messages.append({"role": "system", "content": system})
    for number, turn in enumerate(turns, start=1):
        role, content = _turn_fields(turn, number, "from", "value")
        messages.append({"role": _map_role(role, number, role_map), "content": content})
    return validate_messages(messages)


def from_messages(record: Mapping[str, Any], role_map: Mapping[str, str] = DEFAULT_ROLE_MAP) -> Messages:
    """OpenAI ``{messages: [{role, content}, ...]}`` -> messages (roles go through ``role_map``)."""
    turns = _turn_list(record, "messages")
    messages: Messages = []
    for number, turn in enumerate(turns, start=1):
        role, content = _turn_fields(turn, number, "role", "content")
        messages.append({"role": _map_role(role, number, role_map), "content": content})
    return validate_messages(messages)


# --------------------------------------------------------------------------------- structure


def validate_messages(messages: Messages) -> Messages:
    """Check the conversation rules listed in the module docstring; return ``messages``.

    Turn numbers in reasons count from 1 over the normalised list (a ShareGPT top-level ``system``
    field is turn 1).
    """
    if not any(m["role"] == "assistant" for m in messages):
        raise InvalidConversation("no assistant turn (nothing to train on)")
    body = messages
    if messages and messages[0]["role"] == "system":
        body = messages[1:]
    offset = len(messages) - len(body)
    for index, message in enumerate(body):
        number = index + offset + 1
        if message["role"] == "system":
            raise InvalidConversation(f"turn {number}: system message after the first turn")
        expected = "user" if index % 2 == 0 else "assistant"
        if message["role"] != expected:
            raise InvalidConversation(
                f"turn {number}: expected a {expected} turn, got {message['role']} "
                "(turns must alternate user/assistant, starting with user)"
            )
    if body[-1]["role"] != "assistant":
        raise InvalidConversation(f"turn {len(messages)}: conversation ends with a user turn (no answer)")
    return messages


# ----------------------------------------------------------------------------------- helpers


def _required_text(record: Mapping[str, Any], key: str) -> str:
    if key not in record:
        raise InvalidConversation(f"missing field '{key}'")
    value = record[key]
    if not isinstance(value, str):
        raise InvalidConversation(f"field '{key}' is not a string (got {json_type(value)})")
    if not value.strip():
        raise InvalidConversation(f"field '{key}' is empty")
    return value


def _optional_text(record: Mapping[str, Any], key: str) -> str:
    """An optional string field; absent, null and whitespace-only all mean "not given"."""
    value = record.get(key)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise InvalidConversation(f"field '{key}' is not a string (got {json_type(value)})")
    return value if value.strip() else ""


def _turn_list(record: Mapping[str, Any], key: str) -> list[Any]:
    if key not in record:
        raise InvalidConversation(f"missing field '{key}'")
    turns = record[key]
    if not isinstance(turns, list):
        raise InvalidConversation(f"field '{key}' is not an array (got {json_type(turns)})")
    if not turns:
        raise InvalidConversation(f"field '{key}' is an empty array")
    return turns


def _turn_fields(turn: Any, number: int, role_key: str, content_key: str) -> tuple[str, str]:
    if not isinstance(turn, dict):
        raise InvalidConversation(f"turn {number}: not an object (got {json_type(turn)})")
    for key in (role_key, content_key):
        if key not in turn:
            raise InvalidConversation(f"turn {number}: missing field '{key}'")
    role, content = turn[role_key], turn[content_key]
    if not isinstance(role, str):
        raise InvalidConversation(f"turn {number}: '{role_key}' is not a string (got {json_type(role)})")
    if not isinstance(content, str):
        raise InvalidConversation(
            f"turn {number}: '{content_key}' is not a string (got {json_type(content)})"
        )
    if not content.strip():
        raise InvalidConversation(f"turn {number}: empty '{content_key}'")
    return role, content


def _map_role(role: str, number: int, role_map: Mapping[str, str]) -> str:
    if role not in role_map:
        allowed = ", ".join(role_map)
        raise InvalidConversation(
            f"turn {number}: unknown role '{role}' (allowed: {allowed}; add it to role_map to map it "
            "to system, user or assistant)"
        )
    return role_map[role]
