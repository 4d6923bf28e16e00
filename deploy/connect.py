"""`lsfn connect`: attach a function to a Label Studio project through Label Studio's REST API.

It creates or updates the project's model connection, puts the shared-secret header on the
webhook Label Studio creates for the model, checks which kind of token can fetch the project's
task files, and reports the model's state in plain words. Only the standard library: it runs
wherever a user has Python, next to Label Studio or not.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import Any

from lsfn.shared.label_studio import LabelStudio, LabelStudioError
from lsfn.shared.headers import WEBHOOK_SECRET_HEADER

# What a refused or unreachable Label Studio raises here (the client's error, by its old name).
ConnectError = LabelStudioError

__all__ = ["ConnectError", "Connection", "LabelStudio", "connect", "connect_and_report"]

_STATES = {"CO": "connected", "DI": "disconnected", "ER": "error", "TR": "training", "PR": "predicting"}


@dataclass
class Connection:
    """What `lsfn connect` did and found."""

    ml_backend: dict[str, Any]
    webhook: dict[str, Any] | None = None
    file_access: str = ""
    notes: list[str] = field(default_factory=list)

    @property
    def state(self) -> str:
        return _STATES.get(self.ml_backend.get("state", ""), str(self.ml_backend.get("state")))

    def report(self) -> str:
        backend = self.ml_backend
        lines = [f"model {backend.get('id')} for project {backend.get('project')}: {self.state}"
                 f" ({backend.get('url')}, model version {backend.get('model_version')!r})"]  # fmt: skip
        if backend.get("error_message"):
            lines.append(f"Label Studio says: {backend['error_message']}")
        if self.webhook is not None:
            lines.append(f"webhook {self.webhook.get('url')}: {WEBHOOK_SECRET_HEADER} header set")
        if self.file_access:
            lines.append(self.file_access)
        lines.extend(self.notes)
        return "\n".join(lines)


def connect(
    ls: LabelStudio,
    project: int,
    function_url: str,
    *,
    title: str = "lsfn",
    basic_auth: tuple[str, str] | None = None,
    interactive: bool = False,
    webhook_secret: str | None = None,
) -> Connection:
    """Create or update the project's connection to ``function_url`` and check it."""
    function_url = function_url.rstrip("/")
    body: dict[str, Any] = {
        "url": function_url,
        "project": project,
        "title": title,
        "is_interactive": interactive,
        "auth_method": "BASIC_AUTH" if basic_auth else "NONE",
    }
    if basic_auth:
        # A PATCH without them validates without basic auth (PROTOCOL.md §0.8): always send both.
        body["basic_auth_user"], body["basic_auth_pass"] = basic_auth
    existing = [b for b in ls.get(f"/api/ml?project={project}") or [] if b.get("url", "").rstrip("/") == function_url]
    if existing:
        backend = ls.patch(f"/api/ml/{existing[0]['id']}", body)
    else:
        backend = ls.post("/api/ml", body)
    backend = ls.get(f"/api/ml/{backend['id']}")  # refreshed state (health and setup ran)
    result = Connection(ml_backend=backend)
    if webhook_secret:
        result.webhook = _set_webhook_secret(ls, project, function_url, webhook_secret)
    result.file_access = _file_access(ls, project)
    return result


def _set_webhook_secret(ls: LabelStudio, project: int, function_url: str, secret: str) -> dict[str, Any]:
    target = f"{function_url}/webhook"
    hooks = [h for h in ls.get(f"/api/webhooks?project={project}") or [] if h.get("url", "").rstrip("/") == target]
    if not hooks:
        # Label Studio creates it with the model connection; make it when it is missing.
        return ls.post("/api/webhooks", {"project": project, "url": target, "send_payload": True,
                                         "send_for_all_actions": True, "is_active": True,
                                         "headers": {WEBHOOK_SECRET_HEADER: secret}})  # fmt: skip
    headers = {**(hooks[0].get("headers") or {}), WEBHOOK_SECRET_HEADER: secret}
    return ls.patch(f"/api/webhooks/{hooks[0]['id']}", {"url": target, "headers": headers})


def _file_access(ls: LabelStudio, project: int) -> str:
    """Which token kind fetches the project's first uploaded file (the function needs one)."""
    tasks = ls.get(f"/api/tasks?project={project}&page_size=1") or {}
    listing = tasks.get("tasks", tasks) if isinstance(tasks, dict) else tasks
    for task in listing or []:
        for value in (task.get("data") or {}).values():
            if isinstance(value, str) and value.startswith("/data/"):
                authorization = ls.authorization()
                status = ls.status(value, authorization)
                bearer = (authorization or "").startswith("Bearer")
                kind = "personal access token (Bearer)" if bearer else "legacy token"
                if status == 200:
                    return f"task files: readable with this {kind}; give the function the same LABEL_STUDIO_API_KEY"
                return (f"task files: {value} answered {status} with this {kind}; the function needs a token that"
                        " Label Studio accepts (legacy tokens are off by default in 1.23: use a personal access token)")
    return "task files: no uploaded task file to check yet"


def connect_and_report(label_studio: str, token: str, project: int, function_url: str, *, failure: str = "",
                       **options: Any) -> int:  # fmt: skip
    """`lsfn connect` as a command: connect (``options`` as ``connect`` takes them), print the
    report; the exit status (1 when Label Studio refused). ``failure`` starts the error line."""
    try:
        done = connect(LabelStudio(label_studio, token), project, function_url, **options)
    except ConnectError as exc:
        print(f"lsfn: {failure}{exc}", file=sys.stderr)
        return 1
    print(done.report())
    return 0 if done.state == "connected" else 1
