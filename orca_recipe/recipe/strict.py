"""The base of every recipe model: an unknown key is an error (with a did-you-mean), never a
silently ignored setting."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")
