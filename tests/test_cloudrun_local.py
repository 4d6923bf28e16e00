"""The pair `lsfn deploy cloudrun` generates, run here: the two container specs of its requests
started as the images start them (`lsfn serve` with the image's LSFN_FUNCTION, the front door
with `--front-door`), with exactly the environment the specs set, their secret references
resolved from a local stand-in for Secret Manager; the GPU service behind the local
scale-to-zero platform, which, as Cloud Run's IAM does for a private service, refuses calls
without the front door's identity token. A real Label Studio is connected to the front door
and used: a batch, then an interactive request. A spec whose variables, command or secrets
do not work together fails here."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from lsfn.deploy.cloudrun import plan
from lsfn.deploy.cloudrun_spec import DeploySpec
from tests import yolo_models
from tests.label_studio import LEGACY_TOKEN, LabelStudioServer
from tests.platform import ScaleToZero
from tests.serving import Function, call, fixed_id_token
from tests.test_e2e import lsfn_connect, make_project, ml_backend, retrieve_predictions, stored, tasks_by_image
from tests.test_yolo_http import RECT, held_out

pytestmark = pytest.mark.e2e

TOKEN = "id-token-of-lsfn-front-door"
# Secret Manager, here: secret name -> version -> value.
SECRETS = {"lsfn-label-studio-api-key": {"latest": LEGACY_TOKEN}, "lsfn-pass": {"3": "s3cret-pass"}}


def container_env(step: Any, secrets: dict[str, dict[str, str]]) -> dict[str, str]:
    """A container's variables as Cloud Run sets them: values, and secret references read from
    the secret store at the version they name."""
    (container,) = step.request["service"].template.containers
    env = {}
    for variable in container.env:
        if variable.value_source.secret_key_ref.secret:
            ref = variable.value_source.secret_key_ref
            env[variable.name] = secrets[ref.secret][ref.version]
        else:
            env[variable.name] = variable.value
    return env


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("cloudrun-weights")
    shutil.copyfile(yolo_models.detector(), root / "shapes-det.pt")
    return root


def deploy_spec(label_studio: LabelStudioServer) -> DeploySpec:
    return DeploySpec(
        function="yolo", project="p", region="europe-west4", image="r/lsfn-yolo:v1-cu126",
        front_door_image="r/lsfn-yolo-front-door:v1", label_studio_url=label_studio.url, basic_auth_user="annotators",
        secrets={"LABEL_STUDIO_API_KEY": "lsfn-label-studio-api-key", "BASIC_AUTH_PASS": "lsfn-pass:3"},
    )  # fmt: skip


@pytest.fixture
def deployed(tmp_path: Path, label_studio_server: LabelStudioServer, weights: Path) -> Iterator[tuple[str, ScaleToZero]]:
    spec = deploy_spec(label_studio_server)
    gpu_env = container_env(plan(spec)[0], SECRETS)
    gpu = ScaleToZero(gpu_env["LSFN_FUNCTION"], tmp_path / "gpu", {**gpu_env, **yolo_models.offline_env()}, weights,
                      idle=30.0, bearer=TOKEN)  # fmt: skip
    door_env = container_env(plan(spec, gpu_url=gpu.url)[2], SECRETS)
    door = Function(door_env["LSFN_FUNCTION"], tmp_path / "door", {**door_env, **fixed_id_token(tmp_path, TOKEN)}, weights,
                    args=("--front-door",))  # fmt: skip
    try:
        yield door.url, gpu
    finally:
        door.close()
        gpu.close()


def test_label_studio_uses_the_deployed_pair(label_studio_server: LabelStudioServer, deployed: tuple[str, ScaleToZero]) -> None:
    label_studio = label_studio_server
    url, gpu = deployed
    # Without the front door's token the GPU service answers nobody, and starts nothing.
    assert call("POST", gpu.url + "/predict", {"tasks": []}).status == 403 and gpu.starts == 0
    refused_calls = len(gpu.forwarded)

    data = held_out(2, (160, 120), seed=1201, shapes=1)
    project = make_project(label_studio, RECT, [pixels for pixels, _ in data])
    refused = lsfn_connect(label_studio, project, url)
    assert refused.returncode == 1  # the front door's Basic auth, with the password from the secret
    connected = lsfn_connect(label_studio, project, url, "--basic-auth", "annotators:s3cret-pass", "--interactive")
    assert connected.returncode == 0, connected.stdout + connected.stderr

    retrieve_predictions(label_studio, project)
    tasks = tasks_by_image(label_studio, project)
    for task in tasks.values():
        (prediction,) = stored(label_studio, task)
        assert prediction["result"] and prediction["model_version"].startswith("yolo-")
    # Everything the front door sent carried its token: nothing was refused.
    assert gpu.starts == 1 and [f.status for f in gpu.forwarded[refused_calls:] if f.path == "/predict"] == [200]

    assert_click_boxed(label_studio, project, tasks[0])


def assert_click_boxed(label_studio: LabelStudioServer, project: int, task: dict[str, Any]) -> None:
    """An annotator's click on a 160 x 120 task of the RECT project, through Label Studio's
    interactive pre-annotation, answered with a box (the function behind a front door)."""
    backend = ml_backend(label_studio, project)
    click = {"result": [{"original_width": 160, "original_height": 120, "image_rotation": 0,
                         "value": {"x": 50.0, "y": 50.0, "width": 0.6, "keypointlabels": ["Box"]},
                         "is_positive": True, "id": "kp1", "from_name": "label", "to_name": "image",
                         "type": "keypointlabels", "origin": "manual"}]}  # fmt: skip
    response = label_studio.api("POST", f"/api/ml/{backend['id']}/interactive-annotating", {"task": task["id"], "context": click})
    assert response.status == 200, response.data
    answer = response.json()
    assert "errors" not in answer and answer["data"]["result"][0]["type"] == "rectanglelabels", answer
