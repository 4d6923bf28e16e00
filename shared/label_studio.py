"""A small client of Label Studio's REST API, authenticated like a script, for `lsfn connect`,
`lsfn prelabel` and training jobs. Only the standard library: it runs wherever a user has Python.

A personal access token is exchanged for a short-lived access token (again before it expires
and when Label Studio answers 401: a pre-annotation run outlasts one), a legacy token is sent
as is; ``lsfn.shared.label_studio_auth`` holds those rules, this client its urllib transport.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from typing import Any

from lsfn.shared.label_studio_auth import LabelStudioAuth

__all__ = ["LabelStudio", "LabelStudioError", "prediction_versions"]

# Label Studio answers a few hundred tasks per page quickly; the Data Manager itself asks for 30.
PAGE_SIZE = 100


class LabelStudioError(RuntimeError):
    """Label Studio refused or could not be reached; the message says what to do."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


def prediction_versions(task: dict[str, Any]) -> set[str]:
    """The model versions of a task's predictions (the task list's ``fields=all``), and of its
    comma-separated ``predictions_model_versions`` where Label Studio fills it."""
    found = {str(p.get("model_version")) for p in task.get("predictions") or [] if isinstance(p, dict)}
    listed = task.get("predictions_model_versions")
    if isinstance(listed, str):
        found.update(part.strip() for part in listed.split(",") if part.strip())
    return found


class LabelStudio:
    def __init__(self, url: str, token: str, timeout: float = 30.0) -> None:
        self.url = url.rstrip("/")
        self.token = token
        self.timeout = timeout
        self._auth = LabelStudioAuth(token, lambda _status, message: LabelStudioError(message))
        self.authorization()  # a personal access token is exchanged now: a wrong one fails here

    def authorization(self) -> str | None:
        """The Authorization header this client sends (``Bearer <access>`` or ``Token <key>``)."""
        return self._auth.header(lambda path, body: self._send("POST", path, body, auth=False))

    def get(self, path: str) -> Any:
        return self._call("GET", path)

    def post(self, path: str, body: Any) -> Any:
        return self._call("POST", path, body)

    def patch(self, path: str, body: Any) -> Any:
        return self._call("PATCH", path, body)

    def status(self, path: str, authorization: str | None) -> int:
        """The status of a GET with the given Authorization header (a task file, say)."""
        request = urllib.request.Request(self.url + path, method="GET")
        if authorization:
            request.add_header("Authorization", authorization)
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:  # noqa: S310
                return response.status
        except urllib.error.HTTPError as exc:
            return exc.code

    # -- projects, tasks, predictions ----------------------------------------------------------

    def tasks(self, project: int, view: int | None = None, page_size: int = PAGE_SIZE) -> Iterator[dict[str, Any]]:
        """The project's tasks, page by page (a Data Manager tab's filters and order with ``view``)."""
        page = 1
        seen = 0
        while True:
            # fields=all: with the predictions themselves (their model versions).
            query = {"project": project, "page": page, "page_size": page_size, "fields": "all",
                     **({"view": view} if view is not None else {})}  # fmt: skip
            answer = self.get("/api/tasks?" + urllib.parse.urlencode(query))
            tasks = answer.get("tasks", []) if isinstance(answer, dict) else answer
            yield from tasks
            seen += len(tasks)
            total = answer.get("total") if isinstance(answer, dict) else None
            if not tasks or len(tasks) < page_size or (isinstance(total, int) and seen >= total):
                return
            page += 1

    def import_predictions(self, project: int, predictions: list[dict[str, Any]]) -> int:
        """Store predictions ({task, result, score, model_version}) in one request; how many
        Label Studio created (it leaves out those it finds invalid for the label config)."""
        if not predictions:
            return 0
        answer = self.post(f"/api/projects/{project}/import/predictions", predictions)
        return int(answer.get("created", 0)) if isinstance(answer, dict) else 0

    def task_prediction_versions(self, task: int) -> set[str]:
        """The model versions of the predictions one task holds."""
        answer = self.get(f"/api/predictions?task={task}")
        return {str(p.get("model_version")) for p in answer or [] if isinstance(p, dict)}

    def model_versions(self, project: int) -> dict[str, int]:
        """The project's predictions counted by model version."""
        answer = self.get(f"/api/projects/{project}/model-versions")
        return {str(k): int(v) for k, v in answer.items()} if isinstance(answer, dict) else {}

    # -- the request ---------------------------------------------------------------------------

    def _call(self, method: str, path: str, body: Any = None) -> Any:
        text = self._send(method, path, json.dumps(body).encode() if body is not None else None)
        return json.loads(text) if text.strip() else None

    def _send(self, method: str, path: str, data: bytes | None, auth: bool = True, retried: bool = False) -> str:
        """The answer's body; LabelStudioError for a refusal or an unreachable Label Studio."""
        request = urllib.request.Request(self.url + path, data=data, method=method)
        request.add_header("Content-Type", "application/json")
        header = self.authorization() if auth else None
        if header:
            request.add_header("Authorization", header)
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:  # noqa: S310
                return response.read().decode()
        except urllib.error.HTTPError as exc:
            if exc.code == 401 and auth and not retried and self._auth.refused(header):  # the access token expired
                return self._send(method, path, data, auth, retried=True)
            if exc.code in (502, 503, 504) and method == "GET" and not retried:  # a restarting Label Studio
                time.sleep(2.0)
                return self._send(method, path, data, auth, retried=True)
            raise LabelStudioError(f"Label Studio answered {exc.code} to {method} {path.split('?')[0]}: {_reason(exc)}",
                                   exc.code) from None  # fmt: skip
        except (urllib.error.URLError, OSError) as exc:
            raise LabelStudioError(f"cannot reach Label Studio at {self.url}: {getattr(exc, 'reason', exc)}") from None


def _reason(exc: urllib.error.HTTPError) -> str:
    """Label Studio's own words for a refusal (validation errors, detail)."""
    try:
        body = json.loads(exc.read().decode() or "{}")
    except ValueError:
        return exc.reason
    errors = body.get("validation_errors") if isinstance(body, dict) else None
    if isinstance(errors, dict):
        return "; ".join(str(m) for messages in errors.values() for m in (messages if isinstance(messages, list) else [messages]))
    return str(body.get("detail", body)) if isinstance(body, dict) else str(body)
