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
  instead of failing the whole run later. Tasks that generate the replies themselves (GRPO) read
  chats with ``require_reply=False``: a chat ending with a user turn is then a prompt without a
  reference answer.

Preference records (``from_preference``, ``from_unpaired``) are normalised to a prompt (messages
ending with the user turn being answered) and replies (assistant messages): chosen and rejected, or
one completion with a boolean label (KTO). The shapes read:

* TRL: ``{prompt, chosen, rejected}``, each a string (the prompt one user turn, a reply one assistant
  turn) or a list of messages (TRL's conversational format);
* HH-RLHF and TRL's "implicit prompt": ``{chosen, rejected}`` only, two whole conversations (strings
  of ``\n\nHuman: ...\n\nAssistant: ...`` turns, or lists of messages). The prompt is what both have
  before their last assistant turn, which must be the same; each reply is that last turn;
* ShareGPT / LLaMA-Factory: ``{conversations: [{from, value}], chosen: {from, value}, rejected: {from,
  value}, system?}`` (roles through the role map, like ``from_sharegpt``);
* unpaired (KTO): ``{messages, label}`` (the prompt is every turn before the last, assistant, one) and
  TRL's ``{prompt, completion, label}``; ``label`` must be true or false.

Stdlib only: this runs on every record of a chat corpus.
"""

from __future__ import annotations

import re
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


#: Reject reasons of preference records that tests and users match on.
NO_PROMPT = "no prompt: no user turn before the reply"
IDENTICAL_REPLIES = "chosen and rejected are identical"
NOT_SHARED_PROMPT = ("the chosen and rejected conversations do not share the prompt: they differ before their "
                     "last assistant turn (first at turn {turn})")


def empty_reply(field: str) -> str:
    """The reason for an empty reply (``field``: chosen, rejected or completion)."""
    return f"empty {field} response" if field != "completion" else "empty completion"


# ------------------------------------------------------------------------------- per format


def from_alpaca(record: Mapping[str, Any], instruction_key: str = "instruction",
                output_key: str = "output", *, require_reply: bool = True) -> Messages:
    """``{instruction, input?, output, system?}`` -> system?, user, assistant.

    The user turn is the instruction followed by the input (after a blank line) when the input is
    non-empty: that is how the Alpaca prompt presents the two. Other prompt/response column names
    (e.g. GSM8K's ``question``/``answer``) are given with ``instruction_key``/``output_key``.
    With ``require_reply=False`` an absent or empty output gives a prompt without a reply.
    """
    instruction = _required_text(record, instruction_key)
    output = _required_text(record, output_key) if require_reply else _optional_text(record, output_key)
    extra = _optional_text(record, "input")
    system = _optional_text(record, "system")
    messages: Messages = []
    if system:
        messages.append({"role": "system", "content": system})
    user = f"{instruction}\n\n{extra}" if extra else instruction
    messages.append({"role": "user", "content": user})
    if output:
        messages.append({"role": "assistant", "content": output})
    return validate_messages(messages, require_reply=require_reply)


def from_sharegpt(record: Mapping[str, Any], role_map: Mapping[str, str] = DEFAULT_ROLE_MAP, *,
                  require_reply: bool = True) -> Messages:
    """``{conversations: [{from, value}, ...], system?}`` -> messages."""
    turns = _turn_list(record, "conversations")
    messages: Messages = []
    system = _optional_text(record, "system")
    if system:
        messages.append({"role": "system", "content": system})
    for number, turn in enumerate(turns, start=1):
        role, content = _turn_fields(turn, number, "from", "value")
        messages.append({"role": _map_role(role, number, role_map), "content": content})
    return validate_messages(messages, require_reply=require_reply)


def from_messages(record: Mapping[str, Any], role_map: Mapping[str, str] = DEFAULT_ROLE_MAP, *,
                  require_reply: bool = True) -> Messages:
    """OpenAI ``{messages: [{role, content}, ...]}`` -> messages (roles go through ``role_map``)."""
    turns = _turn_list(record, "messages")
    messages: Messages = []
    for number, turn in enumerate(turns, start=1):
        role, content = _turn_fields(turn, number, "role", "content")
        messages.append({"role": _map_role(role, number, role_map), "content": content})
    return validate_messages(messages, require_reply=require_reply)


# --------------------------------------------------------------------------------- structure


def validate_messages(messages: Messages, *, require_reply: bool = True) -> Messages:
    """Check the conversation rules listed in the module docstring; return ``messages``.

    Turn numbers in reasons count from 1 over the normalised list (a ShareGPT top-level ``system``
    field is turn 1). ``require_reply=False`` (prompts for a task that generates the replies, GRPO):
    the conversation may end with a user turn, and need not have an assistant turn at all.
    """
    if require_reply and not any(m["role"] == "assistant" for m in messages):
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
    if not body:
        raise InvalidConversation("no user turn (the conversation is only a system message)")
    if require_reply and body[-1]["role"] != "assistant":
        raise InvalidConversation(f"turn {len(messages)}: conversation ends with a user turn (no answer)")
    return messages


# -------------------------------------------------------------------------------- preference


#: A turn marker of an HH-RLHF transcript: "\n\nHuman:" / "\n\nAssistant:" (or at the very start).
_HH_TURN = re.compile(r"(?:\A\s*|\n\n)(Human|Assistant):")
_HH_ROLES = {"Human": "user", "Assistant": "assistant"}


def from_preference(record: Mapping[str, Any], role_map: Mapping[str, str] = DEFAULT_ROLE_MAP) -> dict[str, Messages]:
    """A paired preference record (TRL, HH-RLHF, ShareGPT/LLaMA-Factory; see the module docstring) ->
    ``{"prompt": messages, "chosen": messages, "rejected": messages}``."""
    for key in ("chosen", "rejected"):
        if key not in record:
            raise InvalidConversation(f"missing field '{key}'")
    prompt = _prompt_of(record, role_map)
    if prompt is None:  # HH-RLHF / implicit prompt: two whole conversations
        chosen_all = _conversation(record["chosen"], "chosen", role_map)
        rejected_all = _conversation(record["rejected"], "rejected", role_map)
        prompt, chosen = _split_last_reply(chosen_all, "chosen")
        other, rejected = _split_last_reply(rejected_all, "rejected")
        if prompt != other:
            turn = next((i for i, (a, b) in enumerate(zip(prompt, other), 1) if a != b),
                        min(len(prompt), len(other)) + 1)
            raise InvalidConversation(NOT_SHARED_PROMPT.format(turn=turn))
    else:
        chosen = _reply(record["chosen"], "chosen", role_map)
        rejected = _reply(record["rejected"], "rejected", role_map)
    _check_prompt(prompt, chosen)
    if _contents(chosen) == _contents(rejected):
        raise InvalidConversation(IDENTICAL_REPLIES)
    return {"prompt": prompt, "chosen": chosen, "rejected": rejected}


def from_unpaired(record: Mapping[str, Any], role_map: Mapping[str, str] = DEFAULT_ROLE_MAP) -> dict[str, Any]:
    """An unpaired (KTO) record, ``{messages, label}`` or ``{prompt, completion, label}`` ->
    ``{"prompt": messages, "completion": messages, "label": bool}``."""
    if "label" not in record:
        raise InvalidConversation("missing field 'label'")
    label = record["label"]
    if not isinstance(label, bool):
        shown = f" {label!r}"[:40] if isinstance(label, (str, int, float)) else ""
        raise InvalidConversation(f"label is not a boolean (got {json_type(label)}{shown}); use true or false")
    if "completion" in record:
        prompt = _prompt_of(record, role_map)
        if prompt is None:
            raise InvalidConversation(NO_PROMPT)
        completion = _reply(record["completion"], "completion", role_map)
    else:
        key = next((k for k in ("messages", "conversations") if k in record), None)
        if key is None:
            raise InvalidConversation("missing field 'completion' (or 'messages')")
        prompt, completion = _split_last_reply(_conversation(record[key], key, role_map, system=record.get("system")),
                                               "completion")
    _check_prompt(prompt, completion)
    return {"prompt": prompt, "completion": completion, "label": label}


def _prompt_of(record: Mapping[str, Any], role_map: Mapping[str, str]) -> Messages | None:
    """The prompt of a record that has one (``prompt``, ShareGPT ``conversations``, ``messages``), else None."""
    for key in ("prompt", "conversations", "messages"):
        if key in record:
            value = record[key]
            if isinstance(value, str) and not value.strip() or value is None or value == []:
                raise InvalidConversation(NO_PROMPT)
            return _conversation(value, key, role_map, default_role="user", system=record.get("system"))
    return None


def _conversation(value: Any, field: str, role_map: Mapping[str, str], *, default_role: str | None = None,
                  system: Any = None) -> Messages:
    """A field as messages: a list of ``{role, content}`` / ``{from, value}`` objects, one such object, an
    HH-RLHF transcript string, or (``default_role``) a plain string as one turn of that role. Empty system
    turns are dropped; empty contents are kept for the caller to name."""
    if isinstance(value, str):
        turns = _hh_turns(value)
        if turns is None:
            if default_role is None:
                raise InvalidConversation(f"{NO_PROMPT} ('{field}' is text without Human:/Assistant: turns, "
                                          "and the record has no 'prompt')")
            turns = [{"role": default_role, "content": value}]
        elif default_role is not None and turns[-1]["role"] == "assistant" and not turns[-1]["content"]:
            # A prompt transcript ending with an empty "Assistant:" (TRL's older HH-RLHF layout): that is
            # where the reply starts, not a turn.
            turns = turns[:-1]
        messages = turns
    else:
        items = [value] if isinstance(value, dict) else value
        if not isinstance(items, list):
            raise InvalidConversation(f"field '{field}' is not a string, a message or a list of messages "
                                      f"(got {json_type(value)})")
        messages = []
        for number, turn in enumerate(items, start=1):
            if not isinstance(turn, dict):
                raise InvalidConversation(f"field '{field}': turn {number}: not an object (got {json_type(turn)})")
            keys = ("from", "value") if "from" in turn and "role" not in turn else ("role", "content")
            for key in keys:
                if key not in turn:
                    raise InvalidConversation(f"field '{field}': turn {number}: missing field '{key}'")
            role, content = turn[keys[0]], turn[keys[1]]
            if not isinstance(role, str):
                raise InvalidConversation(f"field '{field}': turn {number}: '{keys[0]}' is not a string "
                                          f"(got {json_type(role)})")
            if not isinstance(content, str):
                raise InvalidConversation(f"field '{field}': turn {number}: '{keys[1]}' is not a string "
                                          f"(got {json_type(content)})")
            try:
                mapped = _map_role(role, number, role_map)
            except InvalidConversation as exc:
                raise InvalidConversation(f"field '{field}': {exc}") from None
            messages.append({"role": mapped, "content": content})
    if system is not None:
        if not isinstance(system, str):
            raise InvalidConversation(f"field 'system' is not a string (got {json_type(system)})")
        messages = [{"role": "system", "content": system}, *messages]
    return [m for m in messages if m["role"] != "system" or m["content"].strip()]


def _hh_turns(text: str) -> Messages | None:
    """The turns of an HH-RLHF transcript, or None when ``text`` has no turn markers. Text before the
    first marker is refused (it belongs to no speaker)."""
    parts = _HH_TURN.split(text)
    if len(parts) < 3:
        return None
    if parts[0].strip():
        raise InvalidConversation("text before the first Human:/Assistant: turn of the transcript")
    return [{"role": _HH_ROLES[parts[i]], "content": parts[i + 1].strip()} for i in range(1, len(parts), 2)]


def _split_last_reply(messages: Messages, field: str) -> tuple[Messages, Messages]:
    """(everything before the last turn, [the last turn]); the last turn must be the assistant's."""
    if not messages or messages[-1]["role"] != "assistant":
        raise InvalidConversation(f"the {field} conversation does not end with an assistant turn")
    reply = messages[-1:]
    if not reply[0]["content"].strip():
        raise InvalidConversation(empty_reply(field))
    return messages[:-1], reply


def _reply(value: Any, field: str, role_map: Mapping[str, str]) -> Messages:
    """A reply field: a string (one assistant turn), one message or a list of assistant messages."""
    if isinstance(value, str):
        messages = [{"role": "assistant", "content": value}]
    elif value is None:
        raise InvalidConversation(empty_reply(field))
    else:
        messages = _conversation(value, field, role_map)
    if not messages or not all(m["content"].strip() for m in messages):
        raise InvalidConversation(empty_reply(field))
    for number, message in enumerate(messages, start=1):
        if message["role"] != "assistant":
            raise InvalidConversation(f"field '{field}': turn {number}: expected an assistant turn, got "
                                      f"{message['role']} ({field} is the assistant's reply to the prompt)")
    return messages


def _check_prompt(prompt: Messages, reply: Messages) -> None:
    """A prompt has a user turn, ends with one, and alternates like a chat (with the reply after it)."""
    if not any(m["role"] == "user" for m in prompt):
        raise InvalidConversation(NO_PROMPT)
    for number, message in enumerate(prompt, start=1):
        if not message["content"].strip():
            raise InvalidConversation(f"prompt turn {number}: empty {message['role']} turn")
    if prompt[-1]["role"] != "user":
        role = prompt[-1]["role"]
        raise InvalidConversation(f"the prompt ends with {'an' if role == 'assistant' else 'a'} {role} turn; it must "
                                  "end with the user turn the reply answers")
    validate_messages([*prompt, reply[0]])


def _contents(messages: Messages) -> list[str]:
    return [m["content"].strip() for m in messages]


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
