"""The bot's settings (COCOON_TELEGRAM_* and friends), on top of every service's."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from cocoon.core.contracts import Group
from cocoon.core.runtime.settings import ServiceSettings


def _read(path: Path | None) -> str:
    return path.read_text().strip() if path else ""


class Settings(ServiceSettings):
    telegram_token: str = Field("", description="the bot token from BotFather")
    telegram_token_file: Path | None = Field(None, description="or a file holding it")
    telegram_api_url: str = Field(
        "https://api.telegram.org", description="Bot API server (a local one in tests)"
    )
    telegram_mode: Literal["polling", "webhook"] = "polling"
    telegram_webhook_url: str = Field("", description="public HTTPS URL Telegram posts to")
    telegram_webhook_secret_file: Path | None = Field(
        None, description="secret token Telegram sends in X-Telegram-Bot-Api-Secret-Token"
    )
    # COCOON_HTTP_PORT, as for every service with an HTTP port (the chart's `http: true`).
    http_port: int = Field(8081, ge=0, le=65535, description="webhook mode: the bot's port")
    gateway_url: str = Field("http://127.0.0.1:8080", description="the network's gateway")
    gateway_api_key: str = Field("", description="a delegating key (delegate prefix tg-)")
    gateway_api_key_file: Path | None = None
    telegram_account_prefix: str = Field("tg-", description="billing account = prefix + user id")
    telegram_default_model: str = Field("", description="empty: the first listed model")
    telegram_trial_nanoton: int = Field(0, ge=0, description="free trial per user (0: none)")
    telegram_nanoton_per_star: int = Field(
        10_000_000, gt=0, description="balance credited per Star paid (operator's rate)"
    )
    telegram_star_packs: list[int] = Field([50, 250, 1000], description="Stars per invoice")
    telegram_price_per_token_nanoton: int = Field(
        100, gt=0, description="the registry's price, shown in /model"
    )
    telegram_max_prompt_chars: int = Field(4000, gt=0)
    telegram_max_tokens: int = Field(512, gt=0, description="answer length cap per message")
    telegram_context_tokens: int = Field(1500, gt=0, description="conversation memory per chat")
    telegram_requests_per_minute: int = Field(10, gt=0)
    telegram_daily_token_cap: int = Field(200_000, ge=0, description="0: no cap")
    telegram_draft_interval_seconds: float = Field(0.3, gt=0)
    telegram_group_edit_interval_seconds: float = Field(1.0, ge=1.0)
    telegram_refunds: bool = Field(
        False, description="users may refund a Stars payment while its balance is unspent"
    )
    refunds_group: str = Field(Group.TELEGRAM, description="consumer group of billing.refunds")
    telegram_support_contact: str = Field("the operator", description="shown by /paysupport")
    telegram_sealing: Literal["client", "gateway"] = Field(
        "client",
        description="client: the bot verifies the workers and seals each prompt itself, the "
        "gateway relays ciphertext; gateway: the gateway seals (and reads) them",
    )
    telegram_client_config_file: Path | None = Field(
        None,
        description="the client configuration pinning the registry key and trusted roots "
        "(docs/sealed-requests.md); unset: the per-gateway file, then client.json",
    )

    @model_validator(mode="after")
    def _secrets_once(self) -> Settings:
        for name in ("telegram_token", "gateway_api_key"):
            if getattr(self, name) and getattr(self, f"{name}_file"):
                raise ValueError(f"set {name} or {name}_file, not both")
        if self.telegram_mode == "webhook" and not (
            self.telegram_webhook_url and self.telegram_webhook_secret_file
        ):
            raise ValueError("webhook mode needs telegram_webhook_url and its secret file")
        return self

    def token(self) -> str:
        return self.telegram_token or _read(self.telegram_token_file)

    def api_key(self) -> str:
        return self.gateway_api_key or _read(self.gateway_api_key_file)

    def webhook_secret(self) -> str:
        return _read(self.telegram_webhook_secret_file)
