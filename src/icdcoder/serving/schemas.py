"""Request and response bodies of the HTTP API; they are also what /docs shows, so fields say why."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from icdcoder.errors import DataError
from icdcoder.pipeline import CodedNote
from icdcoder.text.validate import check_note_text, is_blank


def _valid_text(v: str) -> str:
    """Valid Unicode (a lone surrogate from JSON's ``"\\ud800"`` would fail only when the answer quoting it
    is written: a 500) and not blank (zero-width spaces and BOMs count as blank)."""
    try:
        check_note_text(v)
    except DataError as e:  # pydantic turns ValueError into a 422 naming the field; e.message quotes no text
        raise ValueError(e.message) from None
    if is_blank(v):
        raise ValueError("note text is empty")
    return v


def _valid_id(v: Any) -> Any:
    """Run before pydantic's own check, whose message for a lone surrogate ("unable to parse raw data as a
    unicode string") does not say what is wrong; anything but a string is left to pydantic."""
    if isinstance(v, str):
        try:
            check_note_text(v, "id")
        except DataError as e:
            raise ValueError(e.message) from None
    return v


class NoteIn(BaseModel):
    """One note of a batch; ``id`` comes back on its result (default: its 1-based position)."""

    model_config = ConfigDict(extra="forbid")

    id: str | None = Field(None, min_length=1, max_length=200)
    text: str

    @field_validator("text")
    @classmethod
    def _text_valid(cls, v: str) -> str:
        return _valid_text(v)

    @field_validator("id", mode="before")
    @classmethod
    def _id_valid(cls, v: Any) -> Any:
        return _valid_id(v)


class CodeRequest(BaseModel):
    """Either one note (``text``, optional ``id``) or a batch (``notes``), never both."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [
        {"text": "Admitted with community-acquired pneumonia. Known type 2 diabetes.", "id": "n1"},
        {"notes": [{"id": "a", "text": "Essential hypertension."}, {"id": "b", "text": "COPD exacerbation."}]},
    ]})

    text: str | None = Field(None, description="one note's text")
    id: str | None = Field(None, min_length=1, max_length=200, description="id of that note (default 'note')")
    notes: list[NoteIn] | None = Field(None, min_length=1, description="a batch of notes")

    @field_validator("text")
    @classmethod
    def _text_valid(cls, v: str | None) -> str | None:
        return None if v is None else _valid_text(v)

    @field_validator("id", mode="before")
    @classmethod
    def _id_valid(cls, v: Any) -> Any:
        return _valid_id(v)

    @model_validator(mode="after")
    def _one_form(self) -> "CodeRequest":
        if (self.text is None) == (self.notes is None):
            raise ValueError("give either 'text' (one note) or 'notes' (a batch), not both or neither")
        if self.notes is not None and self.id is not None:
            raise ValueError("'id' goes with 'text'; in a batch each note carries its own id")
        return self

    def as_pairs(self) -> list[tuple[str, str]]:
        """``(id, text)`` per note, ids filled in."""
        if self.notes is None:
            return [(self.id or "note", self.text or "")]
        return [(n.id or str(i), n.text) for i, n in enumerate(self.notes, 1)]


class ModelInfo(BaseModel):
    """Which model answered: enough to tell two deployments apart and to read the scores."""

    coder: str
    labels: int = Field(description="codes the model can suggest")
    systems: list[str]
    threshold: float = Field(description="scores at or above it are suggested")
    to_version: int | None = Field(None, description="ICD version codes are translated to, if any")
    rules: dict[str, Any] = Field(default_factory=dict, description="which rule edits run")


class CodeResponse(BaseModel):
    """One result per note, in request order."""

    results: list[CodedNote]
    model: ModelInfo


class CodeRecord(BaseModel):
    """What the packaged ICD release says about one code (canonical spelling)."""

    model_config = ConfigDict(extra="allow")

    code: str
    system: str
    description: str | None
    billable: bool
    parent: str | None
    ancestors: list[str] = Field(default_factory=list)
    children: list[str] = Field(default_factory=list)
    chapter: list[str] | None = None
    inclusion_terms: list[str] = Field(default_factory=list)
    excludes1: list[str] = Field(default_factory=list)
    excludes2: list[str] = Field(default_factory=list)


class Limits(BaseModel):
    max_notes: int
    max_note_chars: int
    max_body_bytes: int


class Health(BaseModel):
    status: str = "ok"
    model: ModelInfo
    auth_required: bool = Field(description="API calls need 'Authorization: Bearer <token>'")
    limits: Limits


class FieldError(BaseModel):
    field: str = Field(description="where in the body, e.g. notes[2].text")
    message: str


class ErrorBody(BaseModel):
    """Every error has this shape; note text is never echoed back."""

    error: str = Field(description="machine-readable kind, e.g. invalid_request, busy, timeout")
    message: str
    request_id: str = Field(description="also in the X-Request-ID header and the server log")
    fields: list[FieldError] = Field(default_factory=list)
