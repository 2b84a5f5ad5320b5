"""hub.yaml `board:`: the progress board's users, plant time zone and session rules."""

from __future__ import annotations

import zoneinfo

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from hub.board.passwords import HASH_PATTERN
from sync.packet import ID_PATTERN


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class BoardUser(_Strict):
    """A person who may log in: a supplier's planner (`supplier`) or the plant's coordinator
    (`plant: true`, every supplier's view and the edge's health)."""

    supplier: str | None = Field(default=None, pattern=ID_PATTERN,
                                 description="the supplier this user belongs to")
    plant: bool = Field(default=False, description="the plant's coordinator (admin)")
    password_hash: str = Field(pattern=HASH_PATTERN,
                               description="made by `keyop hub user add` (scrypt)")

    @model_validator(mode="after")
    def _one_side(self) -> BoardUser:
        if (self.supplier is None) == self.plant:
            return self
        raise ValueError("a user belongs either to one supplier (`supplier: id`) or to the "
                         "plant (`plant: true`), not both and not neither")


class BoardSection(_Strict):
    """The progress board at /board (docs/board.md)."""

    enabled: bool = True
    timezone: str = Field(default="UTC", description="the plant's IANA time zone, e.g. "
                          "Asia/Shanghai: every time on the board is shown in it")
    session_ttl_s: float = Field(default=12 * 3600, gt=0, le=30 * 86400,
                                 description="a session ends this long after login")
    secure_cookies: bool = Field(default=False, description="mark cookies Secure (set it "
                                 "when the board is served over HTTPS)")
    login_rate_per_s: float = Field(default=0.2, gt=0, description="login attempts per "
                                    "second per client address and per user name")
    login_burst: int = Field(default=5, ge=1, description="login attempts allowed at once")
    stale_after_s: float = Field(default=120.0, gt=0, description="the coordinator's view "
                                 "marks a gateway stale when no packet came for this long")
    key_operations: list[str] | None = Field(default=None, description="the operation ids "
                                             "shown as columns, in order (default: all seen)")
    users: dict[str, BoardUser] = Field(default_factory=dict)

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        try:
            zoneinfo.ZoneInfo(value)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {value!r} (an IANA name such as "
                             "Asia/Shanghai)") from None
        return value

    @field_validator("users")
    @classmethod
    def _user_names(cls, value: dict[str, BoardUser]) -> dict[str, BoardUser]:
        for name in value:
            if not 1 <= len(name) <= 64 or not name.isprintable() or name.strip() != name:
                raise ValueError(f"user name {name!r}: 1 to 64 printable characters, no "
                                 "surrounding spaces")
        return value
