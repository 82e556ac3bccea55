"""OpenAI's request and response bodies for ``/v1/completions`` and ``/v1/chat/completions``.

Unknown fields are ignored, as newer clients send fields this server has never heard of; known
fields whose non-default value this server cannot honour (``logprobs``, ``tools``,
``presence_penalty``, ``n`` > 1, ...) are a 422 naming the field, rather than an answer that silently
ignores what was asked. Where a validator enforces more than the type, ``json_schema_extra`` puts it
in the spec too, so schema-driven clients and fuzzers see what is accepted.
"""

import json
from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydantic_core import PydanticCustomError

_MAX_STOPS = 4  # OpenAI's limit
_TokenId = Annotated[int, Field(ge=0)]


class _NonEmptyAlias:
    def __class_getitem__(cls, item):
        return Annotated[item, Field(min_length=1)]


_NonEmpty = _NonEmptyAlias

# ------------------------------------------------------------------------------------------ requests


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")
    include_usage: bool = Field(False, description="Send a last chunk with the token usage (choices empty).")


class GenerationRequest(BaseModel):
    # OpenAI's clients send fields of newer API versions; what this server does not know it ignores.
    model_config = ConfigDict(extra="ignore")
    #: fields this server does not implement -> the values that mean "off" (anything else is a 422)
    unsupported: ClassVar[dict[str, tuple]] = {"presence_penalty": (None, 0, 0.0),
                                               "frequency_penalty": (None, 0, 0.0), "logit_bias": (None, {})}

    model: str | None = Field(None, description="The served model's id (GET /v1/models); optional.")
    max_tokens: int | None = Field(None, ge=1, description="Most tokens to generate; default: the server's "
                                   "--max-new-tokens, or what is left of the context if less.")
    temperature: float | None = Field(None, ge=0.0, le=2.0, description="0: greedy. Left out: the model's "
                                      "generation_config decides (greedy unless it samples).")
    top_p: float | None = Field(None, ge=0.0, le=1.0, description="Nucleus sampling (with temperature > 0).")
    top_k: int | None = Field(None, ge=0, description="Not OpenAI's (vLLM's extension): sample among the top_k "
                              "tokens; 0: off.")
    # the spec says what the validator enforces, so schema-driven clients and fuzzers know it
    n: int = Field(1, description="Choices per prompt; this server returns one.",
                   json_schema_extra={"minimum": 1, "maximum": 1})
    stop: str | list[str] | None = Field(None, description="Up to 4 stop strings; the text ends before the first "
                                         "one generated, which is not returned.",
                                         json_schema_extra={"anyOf": [
                                             {"type": "string", "minLength": 1},
                                             {"type": "array", "items": {"type": "string", "minLength": 1},
                                              "maxItems": _MAX_STOPS}, {"type": "null"}]})
    stream: bool = Field(False, description="Send the text as server-sent events while it is generated.")
    stream_options: StreamOptions | None = None
    seed: int | None = Field(None, description="Makes sampling reproducible.")
    user: str | None = Field(None, description="Ignored.")
    presence_penalty: Any = None
    frequency_penalty: Any = None
    logit_bias: Any = None

    @field_validator("n")
    @classmethod
    def _one_choice(cls, n: int) -> int:
        if n != 1:
            raise PydanticCustomError("unsupported", "only n=1 is supported ({n} asked): this server returns one "
                                      "choice per request; leave n out and repeat the request for more (with a "
                                      "seed each when sampling)", {"n": n})
        return n

    @field_validator("stop")
    @classmethod
    def _stops(cls, stop: str | list[str] | None) -> list[str]:
        stops = [stop] if isinstance(stop, str) else list(stop or [])
        if len(stops) > _MAX_STOPS:
            raise PydanticCustomError("too_many", "at most {most} stop strings ({given} given)",
                                      {"most": _MAX_STOPS, "given": len(stops)})
        if any(not s for s in stops):
            raise PydanticCustomError("empty_stop", "a stop string is empty; it would end every text at once")
        return stops

    @field_validator("*")
    @classmethod
    def _off(cls, value: Any, info) -> Any:
        """Each class's ``unsupported`` fields (declared so a refusal can name them) must keep an "off" value."""
        allowed = cls.unsupported.get(info.field_name)
        if allowed is not None and not any(value == a and type(value) is type(a) for a in allowed):
            raise PydanticCustomError("unsupported", "{value} is not supported by this server (it generates plain "
                                      "text only); leave {field} out",
                                      {"field": info.field_name, "value": json.dumps(value)[:80]})
        return value


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: Literal["system", "developer", "user", "assistant"] = Field(..., description="developer counts as "
                                                                      "system.")
    content: str | list[dict[str, Any]] | None = Field(
        None, description="A string, or text parts [{\"type\": \"text\", \"text\": ...}] (joined with newlines).",
        # the spec shows the only part accepted; the validator below explains any other in its message
        json_schema_extra={"anyOf": [{"type": "string"}, {"type": "null"}, {"type": "array", "items": {
            "type": "object", "required": ["type", "text"],
            "properties": {"type": {"const": "text"}, "text": {"type": "string"}}}}]})

    @field_validator("content", mode="before")
    @classmethod
    def _text_only(cls, content: Any) -> Any:
        if not isinstance(content, list):
            return content
        texts = []
        for i, part in enumerate(content):
            if not (isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str)):
                kind = part.get("type") if isinstance(part, dict) else type(part).__name__
                raise PydanticCustomError("text_only", "content part {i} is a '{kind}' part; this server takes "
                                          "text parts only ({\"type\": \"text\", \"text\": ...})",
                                          {"i": i, "kind": str(kind)})
            texts.append(part["text"])
        return "\n".join(texts)


class ChatCompletionRequest(GenerationRequest):
    unsupported: ClassVar[dict[str, tuple]] = {
        **GenerationRequest.unsupported, "logprobs": (None, False), "top_logprobs": (None, 0), "tools": (None, []),
        "tool_choice": (None, "none"), "functions": (None, []), "function_call": (None, "none"),
        "response_format": (None, {"type": "text"}), "audio": (None,), "modalities": (None, ["text"]),
        "prediction": (None,), "web_search_options": (None,)}

    messages: list[ChatMessage] = Field(..., min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1, description="max_tokens under its newer name (wins "
                                              "when both are sent).")
    logprobs: Any = None
    top_logprobs: Any = None
    tools: Any = None
    tool_choice: Any = None
    functions: Any = None
    function_call: Any = None
    response_format: Any = None
    audio: Any = None
    modalities: Any = None
    prediction: Any = None
    web_search_options: Any = None


class CompletionRequest(GenerationRequest):
    unsupported: ClassVar[dict[str, tuple]] = {**GenerationRequest.unsupported, "logprobs": (None,),
                                               "best_of": (None, 1), "echo": (None, False), "suffix": (None, "")}

    prompt: str | _NonEmpty[list[str]] | _NonEmpty[list[_TokenId]] | _NonEmpty[list[_NonEmpty[list[_TokenId]]]] = Field(
        ..., description="A prompt, or a list of prompts (one choice each); token ids too.")
    logprobs: Any = None
    best_of: Any = None
    echo: Any = None
    suffix: Any = None

    @field_validator("prompt")
    @classmethod
    def _some(cls, prompt: Any) -> Any:
        if isinstance(prompt, list) and not prompt:
            raise PydanticCustomError("empty", "prompt is an empty list; send a prompt")
        return prompt

    def prompts(self) -> list[str | list[int]]:
        if isinstance(self.prompt, str) or (self.prompt and isinstance(self.prompt[0], int)):
            return [self.prompt]
        return list(self.prompt)


# ----------------------------------------------------------------------------------------- responses


class CompletionUsage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class ChatChoice(BaseModel):
    index: int
    message: AssistantMessage
    finish_reason: Literal["stop", "length"] = Field(..., description="stop: EOS or a stop string; length: "
                                                     "max_tokens reached.")
    logprobs: None = None


class _CompletionBase(BaseModel):
    id: str
    created: int
    model: str
    usage: CompletionUsage
    system_fingerprint: str | None = None


class ChatCompletion(_CompletionBase):
    object: Literal["chat.completion"] = "chat.completion"
    choices: list[ChatChoice]


class CompletionChoice(BaseModel):
    index: int
    text: str
    finish_reason: Literal["stop", "length"]
    logprobs: None = None


class Completion(_CompletionBase):
    object: Literal["text_completion"] = "text_completion"
    choices: list[CompletionChoice]
