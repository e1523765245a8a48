"""The HTTP API and the review page over one :class:`~icdcoder.pipeline.CodingPipeline`.

Errors all have one JSON shape (:class:`ErrorBody`), name the field at fault and never echo the
note: pydantic's default 422 body repeats the input, which here is patient text.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import FastAPI, Query, Request, Security
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from fastapi.security import HTTPBearer
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException

from icdcoder.codes import parse_system
from icdcoder.data.note import Note
from icdcoder.pipeline import CodingPipeline
from icdcoder.serving.gate import Busy, CodingGate, TimedOut
from icdcoder.serving.guard import Guard, request_id
from icdcoder.serving.schemas import (CodeRecord, CodeRequest, CodeResponse, ErrorBody, FieldError, Health, Limits,
                                      ModelInfo)
from icdcoder.serving.settings import ServeSettings

STATIC = Path(__file__).parent / "static"
PAGE_CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
            "object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'")
ERRORS: dict[int | str, dict[str, Any]] = {s: {"model": ErrorBody} for s in (400, 401, 413, 422, 503, 504)}


class ApiError(Exception):
    def __init__(self, status: int, kind: str, message: str, field: str | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.kind, self.message, self.field, self.headers = status, kind, message, field, headers


def _error(status: int, kind: str, message: str, fields: list[FieldError] | None = None,
           headers: dict[str, str] | None = None) -> JSONResponse:
    body = ErrorBody(error=kind, message=message, request_id=request_id.get(), fields=fields or [])
    return JSONResponse(body.model_dump(), status_code=status, headers=headers)


def _field(loc: tuple) -> str:
    """``("body", "notes", 2, "text")`` -> ``notes[2].text``."""
    out = ""
    for part in loc[1:] if loc and loc[0] == "body" else loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _model_info(pipeline: CodingPipeline) -> ModelInfo:
    info = pipeline.info()
    rules = dict(info.get("rules") or {})
    if rules.get("codes_file"):
        rules["codes_file"] = Path(rules["codes_file"]).name  # the name says which year; the path is the server's
    return ModelInfo(coder=info["coder"], labels=info["labels"], systems=info["systems"],
                     threshold=info["threshold"], to_version=info.get("to_version"), rules=rules)


def _check_limits(req: CodeRequest, settings: ServeSettings) -> list[tuple[str, str]]:
    pairs = req.as_pairs()
    if len(pairs) > settings.max_notes:
        raise ApiError(422, "too_many_notes", f"{len(pairs)} notes; at most {settings.max_notes} per request", "notes")
    seen: set[str] = set()
    for i, (nid, text) in enumerate(pairs):
        where = "text" if req.notes is None else f"notes[{i}].text"
        if len(text) > settings.max_note_chars:
            raise ApiError(422, "note_too_long", f"{len(text):,} characters; at most {settings.max_note_chars:,} "
                           "per note", where)
        if nid in seen:
            raise ApiError(422, "invalid_request", f"duplicate note id {nid!r}", f"notes[{i}].id")
        seen.add(nid)
    return pairs


def create_app(pipeline: CodingPipeline, settings: ServeSettings | None = None) -> FastAPI:
    """The API (``/v1/...``), ``/healthz``, the review page (``/``) and the docs (``/docs``)."""
    settings = settings or ServeSettings()
    gate = CodingGate(settings.max_concurrency, settings.max_queue, settings.timeout_s)
    model = _model_info(pipeline)
    auth = [Security(HTTPBearer(auto_error=False, description="the server's --token"))] if settings.token else []
    app = FastAPI(title="icdcoder", version="1", redoc_url=None, docs_url=None,
                  description="ICD codes for clinical notes, with the evidence in the text and the rule edits made. "
                              f"Limits: {settings.max_notes} notes per request, {settings.max_note_chars:,} "
                              f"characters per note, {settings.max_body_bytes:,} bytes per body.")
    app.state.gate = gate  # how busy the server is, for tests and operators
    app.add_middleware(Guard, token=settings.token, max_body_bytes=settings.max_body_bytes)
    _add_error_handlers(app)

    @app.post("/v1/code", response_model=CodeResponse, responses=ERRORS, dependencies=auth, tags=["coding"])
    async def code(req: CodeRequest) -> CodeResponse:
        """Code one note or a batch: suggested codes, below-threshold candidates, evidence, rule edits."""
        notes = [Note(id=nid, text=text) for nid, text in _check_limits(req, settings)]
        try:
            results = await gate.run(pipeline.code, notes)
        except Busy as e:
            raise ApiError(503, "busy", f"server busy: {e}; retry shortly", headers={"Retry-After": "1"}) from None
        except TimedOut as e:
            raise ApiError(504, "timeout", str(e)) from None
        return CodeResponse(results=results, model=model)

    @app.get("/v1/codes/{code}", response_model=CodeRecord, responses=ERRORS | {404: {"model": ErrorBody}},
             dependencies=auth, tags=["ontology"])
    def lookup(code: str, system: str | None = Query(None, description="icd10cm, icd10pcs, icd9cm or icd9pcs; "
                                                                       "default: the model's systems first")):
        """Description, hierarchy and Excludes notes of one code, in any spelling (``e119`` = ``E11.9``)."""
        if system is not None:
            try:
                system = parse_system(system).value
            except ValueError as e:
                raise ApiError(422, "invalid_request", str(e), "system") from None
        record = pipeline.lookup(code, system)
        if record is None:
            what = f"an {system} code" if system else "a code"
            shown = code if len(code) <= 40 else code[:40] + "…"
            raise ApiError(404, "unknown_code", f"{shown!r} is not {what} of the packaged ICD release", "code")
        return record

    @app.get("/healthz", response_model=Health, tags=["service"])
    def healthz() -> Health:
        """Liveness, the model served, whether a token is needed, and the request limits."""
        return Health(model=model, auth_required=settings.auth_required,
                      limits=Limits(max_notes=settings.max_notes, max_note_chars=settings.max_note_chars,
                                    max_body_bytes=settings.max_body_bytes))

    @app.get("/", include_in_schema=False)
    def review_page() -> FileResponse:
        return FileResponse(STATIC / "review.html", headers={"Content-Security-Policy": PAGE_CSP,
                                                              "X-Content-Type-Options": "nosniff"})

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    _add_docs(app)
    return app


def _add_docs(app: FastAPI) -> None:
    """Swagger UI at ``/docs`` from the files the ``fastapi-offline`` package carries: hospital
    servers are often offline, and FastAPI's default page loads its script from a CDN."""
    from fastapi.openapi.docs import get_swagger_ui_html

    try:
        import fastapi_offline
        assets = Path(fastapi_offline.__file__).parent / "static"
    except ImportError:  # without the package, FastAPI's CDN page (blank when offline)
        assets = None
    local = {}
    if assets is not None and (assets / "swagger-ui-bundle.js").exists():
        app.mount("/docs-static", StaticFiles(directory=assets), name="docs-static")
        local = {"swagger_js_url": "/docs-static/swagger-ui-bundle.js",
                 "swagger_css_url": "/docs-static/swagger-ui.css", "swagger_favicon_url": "data:,"}

    @app.get("/docs", include_in_schema=False)
    def docs():
        return get_swagger_ui_html(openapi_url="/openapi.json", title="icdcoder API", **local)


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> JSONResponse:
        fields = [FieldError(field=exc.field, message=exc.message)] if exc.field else []
        message = f"{exc.field}: {exc.message}" if exc.field else exc.message
        return _error(exc.status, exc.kind, message, fields, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        if any(e.get("type") == "json_invalid" for e in errors):
            why = next(e.get("ctx", {}).get("error", "") for e in errors if e.get("type") == "json_invalid")
            return _error(400, "invalid_json", f"the body is not valid JSON ({why})")
        fields = []
        for e in errors:  # loc, msg and type only: "input" and "ctx" may hold the note text
            msg = str(e.get("msg", "invalid")).removeprefix("Value error, ")
            if tuple(e.get("loc", ())) == ("body",) and e.get("type") in ("model_attributes_type", "dict_type"):
                msg = "the body must be a JSON object sent as Content-Type: application/json"
            elif tuple(e.get("loc", ())) == ("body",) and e.get("type") == "missing":
                msg = "the request has no body; send a JSON object"
            fields.append(FieldError(field=_field(tuple(e.get("loc", ()))) or "body", message=msg))
        first = fields[0] if fields else FieldError(field="body", message="invalid request")
        return _error(422, "invalid_request", f"{first.field}: {first.message}", fields)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        kinds = {404: "not_found", 405: "method_not_allowed", 413: "body_too_large"}
        return _error(exc.status_code, kinds.get(exc.status_code, "http_error"), str(exc.detail), headers=exc.headers)
