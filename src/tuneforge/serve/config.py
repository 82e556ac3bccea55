"""``ServeConfig``: every setting of ``tuneforge serve`` and ``tuneforge predict``, typed and documented.

The CLI maps its options onto these fields; tests and embedding applications build the config
directly and call ``tuneforge.serve.app.create_app(cfg)``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator

from tuneforge.sections import Section

#: Environment variable read for API keys when no --api-key is given (comma-separated for several).
API_KEY_ENV = "TUNEFORGE_API_KEY"


class ServeConfig(Section):
    model_dir: Path = Field(..., description="Exported model directory (config.json, safetensors, tokenizer), "
                                             "or a built-in alias.")
    model_id: str | None = Field(None, description="Name the API reports and accepts as `model`; default: the "
                                                   "directory name.")
    host: str = Field("127.0.0.1", description="Address to bind; 0.0.0.0 for every interface.")
    port: int = Field(8000, ge=0, le=65535, description="TCP port; 0 picks a free one.")
    api_keys: list[str] = Field(default_factory=list, description=f"Accepted API keys (Authorization: Bearer "
                                f"<key> or X-API-Key); default: ${API_KEY_ENV}, comma-separated.")
    no_auth: bool = Field(False, description="Serve without API keys (anyone who can reach the port can use it).")
    allow_pickle: bool = Field(False, description="Allow pickle (.bin) weights; they can run code when loaded.")
    device: str = Field("auto", description="auto (CUDA when available), cpu, cuda or cuda:N.")
    dtype: Literal["fp32", "bf16", "fp16"] = Field("fp32", description="Compute precision: fp32 (predictions "
                                                   "exactly as verified at export), or bf16/fp16 autocast (faster "
                                                   "on GPUs and CPUs with bf16 units; predictions may differ a "
                                                   "little: check with tuneforge predict first).")
    threads: int | None = Field(None, ge=1, description="torch CPU threads for inference; default: torch's.")
    max_batch_size: int = Field(32, ge=1, description="Most inputs run through the model together.")
    max_wait_ms: float = Field(5.0, ge=0, description="How long a batch waits for more inputs once it has one.")
    max_body_bytes: int = Field(1_000_000, ge=1024, description="Largest request body; larger ones get 413.")
    max_texts: int = Field(256, ge=1, description="Most texts in one /v1/classify, /v1/tokens or /v1/score "
                           "request.")
    max_input_tokens: int | None = Field(None, ge=1, description="Longest input in tokens; default: the model's "
                                         "context (position embeddings, tokenizer limit). Longer inputs get 422 "
                                         "unless the request sets truncate.")
    max_new_tokens: int = Field(512, ge=1, description="Upper bound on max_tokens a generation request may ask.")
    request_timeout_s: float = Field(60.0, gt=0, description="A request still waiting or running after this "
                                     "many seconds gets 504.")

    @field_validator("api_keys")
    @classmethod
    def _no_blank_keys(cls, keys: list[str]) -> list[str]:
        if any(not k.strip() for k in keys):
            raise ValueError("an API key is empty")
        return keys

    def effective_keys(self) -> list[str]:
        """The keys requests must present: the configured ones, else those in ``$TUNEFORGE_API_KEY``."""
        if self.api_keys:
            return list(self.api_keys)
        return [k.strip() for k in os.environ.get(API_KEY_ENV, "").split(",") if k.strip()]

    def served_id(self) -> str:
        return self.model_id or Path(self.model_dir).name
