"""shared.protocol on bodies captured from a Label Studio 1.23 server, and on bad ones."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from lsfn.shared.label_config import parse_label_config
from lsfn.shared.protocol import (
    ProtocolError,
    TaskFailure,
    parse_predict,
    parse_setup,
    parse_webhook,
    predict_response,
)

DATA = Path(__file__).parent / "data" / "ls-1.23"


def captured(name: str) -> dict[str, Any]:
    return json.loads(next(DATA.glob(f"req-{name}-*.json")).read_text())["body"]


def test_batch_predict() -> None:
    req = parse_predict(captured("0013"))
    assert req.project == "2.1795578243" and req.project_id == 2
    assert [t.id for t in req.tasks] == [1, 2, 3]
    assert req.tasks[0].data == {"image": "/data/upload/2/11524fb9-img1.jpg"}
    assert req.context is None and not req.is_interactive
    assert req.params.login is None and req.params.password is None
    assert req.tasks[0].model_extra["file_upload"] == 1  # unknown fields are kept
    parse_label_config(req.label_config)


def test_interactive_keypoint_clicks() -> None:
    positive = parse_predict(captured("0067"))
    negative = parse_predict(captured("0070"))
    assert positive.is_interactive
    (click,) = positive.context.regions("keypointlabels")
    assert click.is_positive is True and negative.context.result[0].is_positive is False
    assert click.value["x"] == 25.0 and click.value["y"] == 37.5
    assert (click.original_width, click.original_height) == (64, 48)
    assert click.labels == ["Cat"] and click.from_name == "kp"
    assert positive.tasks[0].model_extra["file_upload"] == "11524fb9-img1.jpg"


def test_interactive_rectangle_and_text() -> None:
    box = parse_predict(captured("0068")).context.regions("RectangleLabels")[0]
    assert box.is_positive is None and box.labels == ["Dog"] and box.value["width"] == 50.0
    text = parse_predict(captured("0069"))
    assert text.context.texts() == ["a red square"]
    assert text.context.result[0].original_width is None
    assert not parse_predict(captured("0071")).is_interactive


def test_context_at_the_top_level_is_read_too() -> None:
    body = {"tasks": [{"data": {"image": "x.png"}}], "context": {"result": [{"type": "textarea", "value": {"text": "cat"}}]}}
    req = parse_predict(body)
    assert req.context.texts() == ["cat"] and req.project is None and req.label_config is None


def test_setup_bodies() -> None:
    setup = parse_setup(captured("0002"))
    assert setup.project_id == 2 and setup.hostname == "http://localhost:8080"
    assert setup.access_token == "0123456789abcdef0123456789abcdef01234567"
    assert setup.extra_params is None
    assert parse_label_config(setup.label_config).first("RectangleLabels") is not None
    assert parse_setup(captured("0085")).extra_params == {"foo": "bar"}


def test_webhook_events() -> None:
    created = parse_webhook(captured("0077"))
    assert created.action == "ANNOTATION_CREATED" and created.project_id == 2
    assert created.annotation["result"][0]["type"] == "rectanglelabels"
    assert created.task["data"]["image"].startswith("/data/upload/")
    parse_label_config(created.label_config)
    assert parse_webhook(captured("0079")).action == "START_TRAINING"
    assert parse_webhook(captured("0081")).annotations == [{"id": 1}]
    imported = parse_webhook(captured("0010"))
    assert imported.action == "TASKS_CREATED" and len(imported.tasks) >= 1


@pytest.mark.parametrize(
    ("body", "field", "message"),
    [
        ([], "body", "JSON object"),
        ({}, "tasks", "required"),
        ({"tasks": []}, "tasks", "at least 1"),
        ({"tasks": [{"id": 1}]}, "tasks[0].data", "required"),
        ({"tasks": [{"id": "one", "data": {}}]}, "tasks[0].id", "integer"),
        ({"tasks": [{"data": []}]}, "tasks[0].data", "dictionary"),
        ({"tasks": [{"data": {}}], "label_config": 5}, "label_config", "string"),
        ({"tasks": [{"data": {}}], "params": {"context": {"result": [{"value": {}}]}}}, "params.context.result[0].type", "required"),
        ({"tasks": [{"data": {}}], "context": {"result": "x"}}, "context.result", "list"),
    ],
)
def test_bad_predict_bodies_name_the_field(body: Any, field: str, message: str) -> None:
    with pytest.raises(ProtocolError) as info:
        parse_predict(body)
    assert info.value.field == field
    assert message in info.value.message
    assert str(info.value).startswith(field)


def test_bad_setup_and_webhook_bodies_name_the_field() -> None:
    with pytest.raises(ProtocolError, match="^schema: "):
        parse_setup({"schema": 3})
    with pytest.raises(ProtocolError, match="^action: "):
        parse_webhook({"project": {}})


def test_response_keeps_task_order_and_marks_failures_without_result() -> None:
    ok = {"result": [], "score": 0.5, "model_version": "v"}
    answer = predict_response([ok, TaskFailure("could not fetch /data/upload/2/x.jpg: 404"), ok])
    assert answer == {
        "results": [ok, {"error": "could not fetch /data/upload/2/x.jpg: 404"}, ok],
    }
    assert "result" not in answer["results"][1]


@pytest.mark.parametrize("project", ["\u00b2", "1" * 5000, "abc.123", "", "-3.5"])
def test_odd_project_uids_give_no_project_id(project: str) -> None:
    assert parse_predict({"tasks": [{"data": {}}], "project": project}).project_id is None
    assert parse_setup({"project": project}).project_id is None


def test_webhook_project_id_must_be_an_integer() -> None:
    assert parse_webhook({"action": "X", "project": {"id": True}}).project_id is None
    assert parse_webhook({"action": "X", "project": {"id": 7}}).project_id == 7
