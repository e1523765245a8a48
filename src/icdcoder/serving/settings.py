"""What ``icdcoder serve`` may accept and how much work it takes on at once.

Limits exist because one server is shared by several reviewers: a pasted book, a batch of a
thousand notes or a burst of clicks must get a clear error, not take the model away from everyone;
and a client that opens connections and sends nothing, or one byte a second, must not hold sockets
(file descriptors) until the server cannot accept anyone else.
A server reachable from other machines must not code notes for anyone who asks, hence the token rule.
"""

from __future__ import annotations

import ipaddress

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

TOKEN_ENV = "ICDCODER_TOKEN"
MiB = 1024 * 1024
MIN_TOKEN_CHARS = 16


def is_loopback(host: str) -> bool:
    """True for addresses only this machine can reach (127.0.0.0/8, ::1, localhost)."""
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to anything


class ServeSettings(BaseModel):
    """Listening address, bearer token and request limits of one server."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    token: str | None = Field(None, description=f"bearer token; required off loopback (env {TOKEN_ENV})")
    max_body_bytes: int = Field(MiB, ge=1024, description="request bodies above this get 413")
    max_notes: int = Field(64, ge=1, description="notes per request")
    max_note_chars: int = Field(200_000, ge=1, description="characters per note")
    timeout_s: float = Field(60.0, gt=0, description="wait for a coding slot plus coding, per request")
    max_concurrency: int = Field(4, ge=1, description="requests coding at once")
    max_queue: int = Field(16, ge=0, description="requests waiting for a slot; beyond it 503 at once")
    top_k: int | None = Field(None, ge=1, description="candidates listed per note (used by serve())")
    read_timeout_s: float = Field(15.0, gt=0, description="seconds a client has to send one whole request (headers "
                                  "and body) once it connects or starts it; slower ones are disconnected")
    keep_alive_s: float = Field(5.0, gt=0, description="seconds an idle connection stays open between requests")
    max_connections: int | None = Field(None, ge=1, description="open connections at most; when full, the one "
                                        "waiting longest on an unfinished request is closed; default 1000, lowered "
                                        "to fit the process's open-file limit")
    backlog: int | None = Field(None, ge=1, description="connections waiting to be accepted; default 2048, lowered "
                                "to fit the open-file limit")

    @field_validator("token")
    @classmethod
    def _blank_is_none(cls, v: str | None) -> str | None:
        if v is None or not v.strip():
            return None
        if len(v.strip()) < MIN_TOKEN_CHARS:
            raise ValueError(f"the token must have at least {MIN_TOKEN_CHARS} characters; make one with "
                             "python -c 'import secrets; print(secrets.token_urlsafe())'")
        return v.strip()

    @model_validator(mode="after")
    def _token_off_loopback(self) -> "ServeSettings":
        if self.token is None and not is_loopback(self.host):
            raise ValueError(f"serving on {self.host!r} (not loopback) needs a bearer token: pass --token or set "
                             f"{TOKEN_ENV}, or serve on 127.0.0.1")
        return self

    @property
    def auth_required(self) -> bool:
        return self.token is not None
