"""The base class of every generated record model (`cocoon.core.codec.models`)."""

from __future__ import annotations

from typing import Any, ClassVar, Self

from pydantic import BaseModel, ConfigDict


class AvroModel(BaseModel):
    """A frozen pydantic model of one Avro record (the latest version of its schema).

    Enum fields hold the symbol strings (`use_enum_values`), so a model's dict is exactly what the
    codec writes.
    """

    model_config = ConfigDict(frozen=True, extra="forbid", use_enum_values=True)

    avro_name: ClassVar[str]
    avro_version: ClassVar[int]

    def to_avro(self) -> dict[str, Any]:
        """The plain dict the codec writes (nested models become dicts too)."""
        return self.model_dump(mode="python")

    @classmethod
    def from_avro(cls, value: dict[str, Any]) -> Self:
        return cls.model_validate(value)
