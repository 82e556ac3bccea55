"""Request and response bodies of the encoder endpoints; they are also the server's OpenAPI spec."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


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
