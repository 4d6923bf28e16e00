"""Typed bodies of what Label Studio sends (/setup, /predict, /webhook) and the /predict answer.

Shapes are those a Label Studio 1.23 server sends (captured on the wire). Parsing is tolerant of
fields we do not use (Label Studio adds new ones between releases) and strict about the ones we
do: a missing or mistyped field raises ProtocolError naming it, which the runtime answers 422.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

__all__ = [
    "Context",
    "ContextRegion",
    "PredictParams",
    "PredictRequest",
    "ProtocolError",
    "SetupRequest",
    "Task",
    "TaskFailure",
    "WebhookEvent",
    "parse_predict",
    "parse_setup",
    "parse_webhook",
    "predict_response",
]


class ProtocolError(ValueError):
    """A request body is not what the protocol expects; ``field`` names where (``tasks[0].data``)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}" if field else message)
        self.field = field
        self.message = message


class _Body(BaseModel):
    model_config = ConfigDict(extra="allow")


def _project_uid(value: Any) -> Any:
    # Label Studio sends "<id>.<created timestamp>" as a string; other clients send the bare id.
    return str(value) if isinstance(value, int) and not isinstance(value, bool) else value


class Task(_Body):
    """One task: its data (``{"image": "/data/upload/2/x.jpg"}``) and what LS knows about it."""

    id: int | None = None
    data: dict[str, Any]
    meta: dict[str, Any] | None = None
    annotations: list[dict[str, Any]] = Field(default_factory=list)
    predictions: list[dict[str, Any]] = Field(default_factory=list)


class ContextRegion(_Body):
    """A region the annotator just drew, as the frontend serialises it (values in percent)."""

    type: str
    value: dict[str, Any]
    id: str | None = None
    from_name: str | None = None
    to_name: str | None = None
    original_width: int | None = None
    original_height: int | None = None
    image_rotation: float | None = None
    is_positive: bool | None = None
    origin: str | None = None

    @property
    def labels(self) -> list[str]:
        """The labels the region carries (``value.keypointlabels``, ``value.labels``, ...)."""
        for key in (self.type, "labels"):
            found = self.value.get(key)
            if isinstance(found, list):
                return [str(v) for v in found]
        return []


class Context(_Body):
    """The interactive context: the regions just drawn (clicks, boxes, typed text)."""

    result: list[ContextRegion] = Field(default_factory=list)

    def regions(self, *types: str) -> list[ContextRegion]:
        """The regions of these result types (``"keypointlabels"``, ``"rectanglelabels"``, ...)."""
        wanted = {t.lower() for t in types}
        return [r for r in self.result if not wanted or r.type.lower() in wanted]

    def texts(self) -> list[str]:
        """Text typed into TextArea regions, in order."""
        out: list[str] = []
        for region in self.regions("textarea"):
            text = region.value.get("text")
            if isinstance(text, str):
                out.append(text)
            elif isinstance(text, list):
                out.extend(str(t) for t in text)
        return out


class PredictParams(_Body):
    """``params`` of /predict: the project's task-data credentials and the interactive context."""

    login: str | None = None
    password: str | None = None
    context: Context | None = None


class PredictRequest(_Body):
    tasks: list[Task] = Field(min_length=1)
    project: str | None = None
    label_config: str | None = None
    params: PredictParams = Field(default_factory=PredictParams)
    # Older clients (and label-studio-ml-backend's own examples) put the context at the top.
    context_: Context | None = Field(default=None, alias="context")

    _project = field_validator("project", mode="before")(_project_uid)

    @property
    def context(self) -> Context | None:
        """The interactive context, or None for batch prediction ("Retrieve predictions")."""
        return self.params.context or self.context_

    @property
    def is_interactive(self) -> bool:
        context = self.context
        return bool(context and context.result)

    @property
    def project_id(self) -> int | None:
        return _project_id(self.project)


class SetupRequest(_Body):
    """/setup: sent before every batch prediction and when the model is connected."""

    project: str | None = None
    schema_: str | None = Field(default=None, alias="schema")
    hostname: str | None = None
    access_token: str | None = None
    extra_params: dict[str, Any] | None = None

    _project = field_validator("project", mode="before")(_project_uid)

    @property
    def label_config(self) -> str | None:
        return self.schema_

    @property
    def project_id(self) -> int | None:
        return _project_id(self.project)


class WebhookEvent(_Body):
    """An event Label Studio posts to /webhook (ANNOTATION_CREATED, START_TRAINING, ...)."""

    action: str
    project: dict[str, Any] | None = None
    annotation: dict[str, Any] | None = None
    task: dict[str, Any] | None = None
    tasks: list[dict[str, Any]] | None = None
    annotations: list[dict[str, Any]] | None = None

    @property
    def label_config(self) -> str | None:
        config = (self.project or {}).get("label_config")
        return config if isinstance(config, str) else None

    @property
    def project_id(self) -> int | None:
        project_id = (self.project or {}).get("id")
        return project_id if type(project_id) is int else None


def _project_id(uid: str | None) -> int | None:
    if not uid:
        return None
    head = uid.split(".", 1)[0]
    return int(head) if head.isascii() and head.isdecimal() and len(head) <= 18 else None


Model = TypeVar("Model", bound=BaseModel)


def _location(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out


def _parse(model: type[Model], body: Any) -> Model:
    if not isinstance(body, dict):
        raise ProtocolError("body", f"must be a JSON object, got {type(body).__name__}")
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        raise ProtocolError(_location(first["loc"]), first["msg"]) from None


def parse_predict(body: Any) -> PredictRequest:
    """Parse a /predict body; ProtocolError names the first bad field."""
    return _parse(PredictRequest, body)


def parse_setup(body: Any) -> SetupRequest:
    """Parse a /setup body; ProtocolError names the first bad field."""
    return _parse(SetupRequest, body)


def parse_webhook(body: Any) -> WebhookEvent:
    """Parse a /webhook body; ProtocolError names the first bad field."""
    return _parse(WebhookEvent, body)


@dataclass(frozen=True)
class TaskFailure:
    """A task of a batch that could not be predicted. It is answered as an item without a
    ``result`` key: Label Studio skips it and stores nothing, so a later run retries it."""

    message: str


def predict_response(items: list[dict[str, Any] | TaskFailure]) -> dict[str, Any]:
    """The /predict answer: ``{"results": [...]}``, one item per task in task order."""
    results: list[dict[str, Any]] = []
    for item in items:
        if isinstance(item, TaskFailure):
            results.append({"error": item.message})
        else:
            results.append(item)
    return {"results": results}
