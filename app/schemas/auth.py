"""Login request and token response."""

from typing import Literal

from pydantic import BaseModel, Field

from app.schemas.common import Input

NO_NUL = r"^[^\x00]+$"


class LoginIn(Input):
    tenant: str = Field(min_length=1, max_length=63, pattern=NO_NUL)
    username: str = Field(min_length=1, max_length=150, pattern=NO_NUL)
    password: str = Field(min_length=1, max_length=1024, pattern=NO_NUL)


class TokenOut(BaseModel):
    access_token: str
    token_type: Literal["Bearer"]
    expires_in: int
