"""`lsfn deploy cloudrun` against a stand-in for Cloud Run's Admin API (tests/fake_cloudrun.py),
through google-cloud-run's own REST transport: create, then nothing to change, then an update;
the IAM binding written once, with its etag, retried when another writer got there first."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from lsfn.deploy.cloudrun import apply
from lsfn.deploy.cloudrun_cli import _services_client
from lsfn.deploy.cloudrun_spec import DeployError, DeploySpec
from tests.fake_cloudrun import FakeCloudRun

ROOT = Path(__file__).parent.parent
PARENT = "projects/p/locations/europe-west4"
GPU, DOOR = f"{PARENT}/services/lsfn-sam2-gpu", f"{PARENT}/services/lsfn-sam2"


@pytest.fixture
def api() -> Iterator[FakeCloudRun]:
    fake = FakeCloudRun()
    yield fake
    fake.close()


def spec(**changes: object) -> DeploySpec:
    values = {"function": "sam2", "project": "p", "region": "europe-west4", "image": "r/lsfn-sam2:v1-cu126",
              "front_door_image": "r/lsfn-sam2-front-door:v1", "secrets": {"BASIC_AUTH_PASS": "lsfn-pass"},
              "basic_auth_user": "annotators", **changes}  # fmt: skip
    return DeploySpec(**values)  # type: ignore[arg-type]


def deploy(api: FakeCloudRun, **changes: object) -> str:
    return apply(spec(**changes), _services_client(api.endpoint), log=lambda line: None, timeout=30)


def members(api: FakeCloudRun) -> list[str]:
    (binding,) = api.policies[GPU]["bindings"]
    assert binding["role"] == "roles/run.invoker"
    return binding["members"]


def test_a_first_deploy_creates_both_services_and_binds_only_the_front_door(api: FakeCloudRun) -> None:
    url = deploy(api)
    assert url == "https://lsfn-sam2-abc123-ez.a.run.app"
    # The GPU service, its binding, then the front door (which is live as soon as it exists).
    assert [c for c in api.calls("POST") if not c.endswith(":getIamPolicy")] == [
        f"POST /v2/{PARENT}/services", f"POST /v2/{GPU}:setIamPolicy", f"POST /v2/{PARENT}/services"]  # fmt: skip
    assert [r.query["serviceId"][0] for r in api.requests if "serviceId" in r.query] == ["lsfn-sam2-gpu", "lsfn-sam2"]
    # The front door was created knowing the GPU service's URL.
    door_env = {e["name"]: e.get("value") for e in api.services[DOOR]["template"]["containers"][0]["env"]}
    assert door_env["UPSTREAM_URL"] == api.services[GPU]["uri"] and door_env["UPSTREAM_AUTH"] == "google-id-token"
    assert members(api) == ["serviceAccount:lsfn-front-door@p.iam.gserviceaccount.com"]
    assert DOOR not in api.policies  # the front door is public by invoker_iam_disabled, not allUsers


def test_a_second_deploy_with_the_same_arguments_changes_nothing(api: FakeCloudRun) -> None:
    deploy(api)
    before = len(api.requests)
    deploy(api)
    writes = [r for r in api.requests[before:] if r.method == "PATCH" or "serviceId" in r.query or r.path.endswith(":setIamPolicy")]
    assert writes == []
    assert members(api) == ["serviceAccount:lsfn-front-door@p.iam.gserviceaccount.com"]
    assert api.services[GPU]["generation"] == "1"


def test_a_changed_argument_updates_the_service_it_concerns(api: FakeCloudRun) -> None:
    deploy(api, min_instances=1)
    deploy(api, max_instances=5)
    assert api.calls("PATCH") == [f"PATCH /v2/{GPU}"]
    assert api.services[GPU]["template"]["scaling"]["maxInstanceCount"] == 5
    # Back to no minimum (proto3's 0 is "unset": still a change, the instance must not stay billed).
    assert "minInstanceCount" not in api.services[GPU]["template"]["scaling"]


def test_an_iam_write_that_lost_a_race_is_retried_with_a_fresh_etag(api: FakeCloudRun) -> None:
    api.failures.append(("POST", r":setIamPolicy$", 409, "ABORTED"))
    deploy(api)
    assert len([c for c in api.calls("POST") if c.endswith(":setIamPolicy")]) == 2
    assert members(api) == ["serviceAccount:lsfn-front-door@p.iam.gserviceaccount.com"]


def test_a_permission_error_is_one_sentence_naming_the_role(api: FakeCloudRun) -> None:
    api.failures.append(("GET", r"lsfn-sam2-gpu$", 403, "PERMISSION_DENIED"))
    with pytest.raises(DeployError, match="permission denied to read .*lsfn-sam2-gpu: the deploying account needs roles/run.admin"):
        deploy(api)


def test_the_command_deploys_and_prints_what_label_studio_needs(api: FakeCloudRun) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "lsfn.shared.cli", "deploy", "cloudrun", "sam2", "--project", "p", "--region", "europe-west4",
         "--image", "r/lsfn-sam2:v1-cu126", "--basic-auth-user", "annotators", "--secret", "BASIC_AUTH_PASS=lsfn-pass",
         "--api-endpoint", api.endpoint],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "front door: https://lsfn-sam2-abc123-ez.a.run.app" in done.stdout
    assert "lsfn connect https://lsfn-sam2-abc123-ez.a.run.app --project <ID>" in done.stdout and "annotators:" in done.stdout
    assert f"creating {GPU}" in done.stderr
    assert json.dumps(api.services[DOOR]).count("lsfn-pass") == 1  # a secret reference, by name


def test_connect_project_connects_the_deployed_front_door(api: FakeCloudRun) -> None:
    """--connect-project runs `lsfn connect` with the front door's URL; a Label Studio that
    refuses it says so after the deploy (which stays done)."""
    from tests.servers import Answer, RecordingServer

    label_studio = RecordingServer()
    label_studio.routes["/api/ml"] = Answer(401, b'{"detail": "Invalid token."}')
    label_studio.routes["/api/projects/7"] = Answer(401, b'{"detail": "Invalid token."}')
    try:
        done = subprocess.run(
            [sys.executable, "-m", "lsfn.shared.cli", "deploy", "cloudrun", "sam2", "--project", "p", "--region", "europe-west4",
             "--image", "r/lsfn-sam2:v1-cu126", "--api-endpoint", api.endpoint, "--connect-project", "7",
             "--allow-unauthenticated",
             "--label-studio-url", label_studio.url],
            cwd=ROOT, capture_output=True, text=True, timeout=120, env={**os.environ, "LABEL_STUDIO_API_KEY": "0123abcd"},
        )  # fmt: skip
    finally:
        label_studio.close()
    assert done.returncode == 1, done.stderr
    assert "deployed at https://lsfn-sam2-abc123-ez.a.run.app, but connecting project 7 failed" in done.stderr
    assert label_studio.paths(), "Label Studio was never asked"
    assert DOOR in api.services  # the deploy itself is done
