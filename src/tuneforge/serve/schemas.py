"""Request and response bodies of the encoder endpoints; they are also the server's OpenAPI spec."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic_core import PydanticCustomError


class _Strict(BaseModel):
    # an unknown key is a 422 naming it: a typo ("text" for "texts") must not pass silently; and values
    # are not coerced ("truncate": 1 or "yes" is an error, as the spec says), so clients find bugs early
    model_config = ConfigDict(extra="forbid", strict=True)


class TextsRequest(_Strict):
    texts: list[str] = Field(..., min_length=1, description="The texts, one result per text, in order.")
    model: str | None = Field(None, description="The served model's id (GET /v1/models); optional.")
    truncate: bool = Field(False, description="Cut texts longer than the model's context instead of "
                                              "answering 422.")


class ClassifyRequest(TextsRequest):
    threshold: float = Field(0.5, ge=0.0, le=1.0, description="Multi-label models: labels with at least this "
                                                              "probability are returned.")


class ClassifyResult(BaseModel):
    label: str | None = Field(None, description="The most probable label (single-label classification).")
    score: float | None = Field(None, description="Its probability.")
    scores: dict[str, float] | None = Field(None, description="Probability of every label.")
    labels: list[str] | None = Field(None, description="Multi-label classification: the labels over threshold.")
    value: float | None = Field(None, description="Regression: the predicted value.")
    values: dict[str, float] | None = Field(None, description="Multi-target regression: a value per target.")


class Usage(BaseModel):
    input_tokens: int


class ClassifyResponse(BaseModel):
    model: str
    results: list[ClassifyResult]
    usage: Usage


class Entity(BaseModel):
    entity: str = Field(..., description="Entity type, e.g. PER (the label without its B-/I- prefix).")
    start: int = Field(..., description="Character offset of the first character in the text.")
    end: int = Field(..., description="Character offset after the last character.")
    text: str = Field(..., description="text[start:end].")
    score: float = Field(..., description="Mean probability of the entity's word labels.")


class TokensResult(BaseModel):
    entities: list[Entity]


class TokensResponse(BaseModel):
    model: str
    results: list[TokensResult]
    usage: Usage


# ------------------------------------------------------------------------------------------ /v1/score


class ScoreMessage(_Strict):
    role: str = Field(..., min_length=1, description="system, user or assistant (what the chat template knows).")
    content: str


class ScoreInput(_Strict):
    """One conversation to score: ``messages`` (ending with the assistant's reply), or ``prompt`` + ``completion``."""

    messages: list[ScoreMessage] | None = Field(
        None, min_length=2, description="A whole conversation whose last message is the assistant reply being "
                                        "scored; the messages before it are the prompt.")
    prompt: list[ScoreMessage] | None = Field(
        None, description="The prompt: a user message's text, or messages (system, user, earlier turns).",
        json_schema_extra=lambda schema: schema["anyOf"].insert(0, {"type": "string"}))
    completion: str | None = Field(None, description="The assistant reply being scored (with prompt).")

    @field_validator("prompt", mode="before")
    @classmethod
    def _prompt_kind(cls, value: Any) -> Any:
        if isinstance(value, str):  # a user message's text
            return [{"role": "user", "content": value}]
        if value is not None and not isinstance(value, list):
            raise PydanticCustomError("score_prompt", "prompt must be a string or a list of messages")
        return value

    @model_validator(mode="after")
    def _one_shape(self) -> "ScoreInput":
        if self.messages is not None:
            if self.prompt is not None or self.completion is not None:
                raise PydanticCustomError("score_shape", "send either messages, or prompt and completion, not both")
            if self.messages[-1].role != "assistant":
                raise PydanticCustomError(
                    "score_shape", "the last message must be the assistant reply being scored (role 'assistant'), "
                                   "not '{role}'", {"role": self.messages[-1].role})
        elif self.prompt is None or self.completion is None:
            raise PydanticCustomError("score_shape", "an input needs messages (a conversation ending with the "
                                                     "assistant's reply), or prompt and completion")
        elif not self.prompt:
            raise PydanticCustomError("score_shape", "prompt has no messages")
        return self

    def conversation(self) -> tuple[list[dict[str, str]], dict[str, str]]:
        """``(prompt messages, reply message)``: both shapes as the same conversation."""
        if self.messages is not None:
            turns = [m.model_dump() for m in self.messages]
            return turns[:-1], turns[-1]
        return [m.model_dump() for m in self.prompt], {"role": "assistant", "content": self.completion}


def _one_or_list(schema: dict) -> None:
    """The spec says what ``ScoreRequest._one_or_many`` accepts: one input, or a non-empty list of them."""
    item = schema.pop("items")
    schema.pop("type", None)
    schema.pop("minItems", None)
    schema["anyOf"] = [item, {"type": "array", "items": item, "minItems": 1}]


class ScoreRequest(_Strict):
    input: list[ScoreInput] = Field(
        ..., min_length=1, description="The conversations to score, one result per input, in order; a single "
                                       "input may be sent without the list (it is input[0]).",
        json_schema_extra=_one_or_list)
    model: str | None = Field(None, description="The served model's id (GET /v1/models); optional.")

    @field_validator("input", mode="before")
    @classmethod
    def _one_or_many(cls, value: Any) -> Any:
        if isinstance(value, dict):
            return [value]
        if not isinstance(value, list):
            raise PydanticCustomError("score_input", "input must be an object ({\"messages\": [...]} or "
                                                     "{\"prompt\": ..., \"completion\": ...}) or a list of them")
        return value


class ScoreResult(BaseModel):
    index: int = Field(..., description="The input's position in the request.")
    score: float = Field(..., description="The reward model's score of the reply (its logit at the last token of "
                                          "the conversation); higher is better.")


class ScoreUsage(BaseModel):
    prompt_tokens: int = Field(..., description="Tokens the model read (every conversation, prompt and reply).")


class ScoreResponse(BaseModel):
    object: str = "list"
    model: str
    data: list[ScoreResult]
    usage: ScoreUsage


class ModelCard(BaseModel):
    id: str
    object: str = "model"
    created: int
    owned_by: str = "tuneforge"
    task: str
    labels: list[str] | None = None
    max_input_tokens: int


class ModelList(BaseModel):
    object: str = "list"
    data: list[ModelCard]


class Health(BaseModel):
    status: str
    model: str
    task: str


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorDetail


ERROR_RESPONSES = {code: {"model": ErrorResponse, "description": what} for code, what in (
    (400, "The body could not be parsed"), (401, "Missing or invalid API key"), (404, "Unknown model"), (413, "Request body too large"),
    (422, "Invalid request (the message names the field)"), (504, "Request timed out"))}

#: what /v1/models can answer besides 200
AUTH_RESPONSES = {401: ERROR_RESPONSES[401]}
