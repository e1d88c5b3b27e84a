"""Limits and defaults of the HTTP surface; the gateway service builds one from its settings."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class ApiSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    max_body_bytes: int = Field(default=1_048_576, gt=0, description="raw request body cap")
    max_prompt_chars: int = Field(
        default=32_000, gt=0, description="all message/prompt text together"
    )
    max_output_tokens: int = Field(default=4096, gt=0, description="upper bound for max_tokens")
    default_max_tokens: int = Field(default=1000, gt=0, description="hold size when none is given")
    default_max_coefficient: int = Field(
        default=4000, gt=0, description="1000 = 1.0x, as in COCOON"
    )
    default_timeout: float = Field(default=120.0, gt=0, description="seconds, as in COCOON")
    max_timeout: float = Field(default=600.0, gt=0)
    rate_limit_per_second: float = Field(
        default=5.0, gt=0, description="token bucket refill per key"
    )
    rate_limit_burst: int = Field(default=20, gt=0, description="token bucket size per key")
