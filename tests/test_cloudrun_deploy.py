"""`lsfn deploy cloudrun`: the requests it would send (--dry-run), checked against what Cloud Run
GPU needs and what the front door needs to reach a private GPU service."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).parent.parent
SECRET_VALUE = "pat-0123456789abcdef-not-to-be-printed"


def deploy(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "lsfn.shared.cli", "deploy", "cloudrun", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)  # fmt: skip


AUTH = ("--basic-auth-user", "annotators", "--secret", "BASIC_AUTH_PASS=lsfn-pass:2")


def dry_run(*args: str) -> list[dict[str, Any]]:
    done = deploy("sam2", "--project", "p", "--region", "europe-west4", "--dry-run", *AUTH, *args)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def container(step: dict[str, Any]) -> dict[str, Any]:
    (only,) = step["request"]["service"]["template"]["containers"]
    return only


def env(step: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("value_source")) for e in container(step).get("env", [])}


def test_the_gpu_service_is_one_l4_always_allocated_scaling_to_zero_and_private() -> None:
    gpu, iam, door = dry_run()
    # The binding before the front door: the front door calls the GPU service from its first request.
    assert [s["method"] for s in (gpu, iam, door)] == ["create_or_update_service", "add_iam_binding", "create_or_update_service"]
    assert gpu["request"]["service_id"] == "lsfn-sam2-gpu" and gpu["request"]["parent"] == "projects/p/locations/europe-west4"
    service = gpu["request"]["service"]
    template = service["template"]
    resources = container(gpu)["resources"]
    assert resources["limits"] == {"cpu": "4", "memory": "16Gi", "nvidia.com/gpu": "1"}
    assert resources["cpu_idle"] is False and resources["startup_cpu_boost"] is True
    assert template["node_selector"] == {"accelerator": "nvidia-l4"} and template["gpu_zonal_redundancy_disabled"] is True
    assert template["scaling"] == {"min_instance_count": 0, "max_instance_count": 3}
    assert template["max_instance_request_concurrency"] == 4  # SAM 2's clicks share a GPU
    assert int(template["timeout"].rstrip("s")) >= 100  # Label Studio waits 100 s
    probe = container(gpu)["startup_probe"]
    assert probe["http_get"]["path"] == "/health" and probe["period_seconds"] * probe["failure_threshold"] <= 240
    assert probe["period_seconds"] * probe["failure_threshold"] >= 120  # a cold load of SAM 2 large fits
    assert container(gpu)["image"] == "europe-west4-docker.pkg.dev/p/lsfn/lsfn-sam2:latest"
    assert service["invoker_iam_disabled"] is False  # IAM decides, and only the front door is bound
    assert iam["request"] == {"resource": "projects/p/locations/europe-west4/services/lsfn-sam2-gpu",
                              "binding": {"role": "roles/run.invoker",
                                          "members": ["serviceAccount:lsfn-front-door@p.iam.gserviceaccount.com"]}}  # fmt: skip


def test_the_front_door_is_small_public_warm_and_calls_the_gpu_service_with_an_id_token() -> None:
    gpu, _, door = dry_run()
    service = door["request"]["service"]
    # It runs as the account the GPU service lets in.
    assert service["template"]["service_account"] == "lsfn-front-door@p.iam.gserviceaccount.com"
    assert door["request"]["service_id"] == "lsfn-sam2" and service["invoker_iam_disabled"] is True
    resources = container(door)["resources"]
    assert resources["cpu_idle"] is True and "nvidia.com/gpu" not in resources["limits"]
    assert service["template"]["scaling"]["min_instance_count"] == 1
    variables = env(door)
    assert variables["UPSTREAM_URL"] == "${lsfn-sam2-gpu.uri}" and variables["UPSTREAM_AUTH"] == "google-id-token"
    assert variables["LSFN_FUNCTION"] == "sam2" and variables["BASIC_AUTH_USER"] == "annotators"
    assert variables["BASIC_AUTH_PASS"] == {"secret_key_ref": {"secret": "lsfn-pass", "version": "2"}}
    assert "BASIC_AUTH_PASS" not in env(gpu)  # the GPU service runs behind the front door's auth
    assert container(door)["image"] == "europe-west4-docker.pkg.dev/p/lsfn/lsfn-sam2-front-door:latest"


def test_secrets_are_references_and_a_plain_api_key_never_appears() -> None:
    steps = dry_run("--label-studio-api-key", SECRET_VALUE, "--secret", "WEBHOOK_SECRET=hook",
                    "--label-studio-url", "https://ls.example.com")  # fmt: skip
    text = json.dumps(steps)
    assert SECRET_VALUE not in text
    stored, gpu, _, door = steps
    assert stored["method"] == "add_secret_version"
    assert stored["request"]["parent"] == "projects/p/secrets/lsfn-label-studio-api-key"
    assert env(gpu)["LABEL_STUDIO_API_KEY"] == {"secret_key_ref": {"secret": "lsfn-label-studio-api-key", "version": "latest"}}
    assert env(gpu)["LABEL_STUDIO_URL"] == "https://ls.example.com"
    assert env(door)["WEBHOOK_SECRET"] == {"secret_key_ref": {"secret": "hook", "version": "latest"}}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--cpu", "2"), "nvidia-l4 needs at least 4 vCPU and 16 GiB"),
        (("--memory", "8"), "nvidia-l4 needs at least 4 vCPU and 16 GiB"),
        (("--gpu-type", "nvidia-rtx-pro-6000", "--cpu", "8"), "nvidia-rtx-pro-6000 needs at least 20 vCPU and 80 GiB"),
        (("--min-instances", "4", "--max-instances", "2"), "need 0 <= min <= max"),
        (("--env", "WEBHOOK_SECRET=x"), "WEBHOOK_SECRET is a secret"),
        (("--image", "r/lsfn-sam2:v1-pypi"), "built for CUDA 13.0"),
        (("--image-torch", "cu130"), "runs driver 535.216.03 (CUDA 12.2)"),
        (("--image-torch", "cpu"), "CPU torch"),
        (("--env", "ML_SERVER_BASIC_AUTH_PASS=x"), "ML_SERVER_BASIC_AUTH_PASS is a secret"),
    ],
)
def test_a_deploy_that_cannot_work_is_refused_naming_why(args: tuple[str, ...], message: str) -> None:
    done = deploy("sam2", "--project", "p", "--region", "europe-west4", "--dry-run", *AUTH, *args)
    assert done.returncode == 1 and message in done.stderr and not done.stdout


def test_a_public_front_door_needs_basic_auth_or_says_it_is_open() -> None:
    """A dry run warns (it is a review); a deploy refuses before calling anything."""
    bare = ("sam2", "--project", "p", "--region", "europe-west4")
    message = "the front door is public: give --basic-auth-user and --secret BASIC_AUTH_PASS"
    for missing in ((), ("--basic-auth-user", "annotators")):
        reviewed = deploy(*bare, "--dry-run", *missing)
        assert reviewed.returncode == 0 and f"warning: {message}" in reviewed.stderr and json.loads(reviewed.stdout)
        refused = deploy(*bare, "--api-endpoint", "http://127.0.0.1:9", *missing)
        assert refused.returncode == 1 and message in refused.stderr
    assert "warning" not in deploy(*bare, "--dry-run", "--allow-unauthenticated").stderr


def test_a_cuda_13_image_runs_on_the_rtx_pro_6000() -> None:
    gpu, _, _ = dry_run("--gpu-type", "nvidia-rtx-pro-6000", "--cpu", "20", "--memory", "80", "--image-torch", "pypi",
                        "--concurrency", "2", "--max-instances", "1", "--env", "MODEL_SIZE=tiny")  # fmt: skip
    template = gpu["request"]["service"]["template"]
    assert template["node_selector"]["accelerator"] == "nvidia-rtx-pro-6000"
    assert container(gpu)["resources"]["limits"] == {"cpu": "20", "memory": "80Gi", "nvidia.com/gpu": "1"}
    assert template["max_instance_request_concurrency"] == 2 and template["scaling"]["max_instance_count"] == 1
    assert env(gpu)["MODEL_SIZE"] == "tiny"


def test_label_studio_ml_backend_spellings_are_accepted() -> None:
    done = deploy("grounding_dino", "--gcp-project-id", "p", "--gcp-region", "us-central1", "--label-studio-host",
                  "https://ls", "--dry-run", *AUTH)  # fmt: skip
    assert done.returncode == 0, done.stderr
    gpu = json.loads(done.stdout)[0]
    assert gpu["request"]["service"]["template"]["max_instance_request_concurrency"] == 1  # a batch fills the GPU
    assert env(gpu)["LABEL_STUDIO_URL"] == "https://ls"


def _cloudbuild_script(step_id: str, substitutions: dict[str, str] | None = None) -> str:
    """A cloudbuild.yaml step's bash as Cloud Build runs it: substitutions applied, $$ -> $."""
    import re

    import yaml

    document = yaml.safe_load((ROOT / "cloudbuild.yaml").read_text())
    values = {**document["substitutions"], "PROJECT_ID": "p", **(substitutions or {})}
    (step,) = [s for s in document["steps"] if s["id"] == step_id]
    script = step["args"][-1]
    script = re.sub(r"\$\{(_[A-Z_]+)\}|\$(PROJECT_ID)\b", lambda m: values[m.group(1) or m.group(2)], script)
    return script.replace("$$", "$")


def test_cloudbuild_pushes_the_images_the_deploy_uses(tmp_path: Path) -> None:
    """cloudbuild.yaml's build step, run with a docker that records its calls: every function's
    two Dockerfile targets, tagged where `lsfn deploy cloudrun` looks for them."""
    import os

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "calls"
    (bin_dir / "docker").write_text(f'#!/bin/bash\necho "$*" >> {calls}\n'
                                    '[ "$1" = inspect ] && echo "${@: -1}@sha256:0123"\n[ "$1" != pull ]\n')
    (bin_dir / "docker").chmod(0o755)
    workspace = tmp_path / "workspace"
    workspace.mkdir()
    script = _cloudbuild_script("build-and-push", {"_FUNCTIONS": "sam2 grounding_dino"}).replace("/workspace/", f"{workspace}/")
    done = subprocess.run(["bash", "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"})  # fmt: skip
    assert done.returncode == 0, done.stderr
    builds = [line for line in calls.read_text().splitlines() if line.startswith("build")]
    assert len(builds) == 4
    stages = (ROOT / "Dockerfile").read_text()
    for line in builds:
        target = line.split("--target ")[1].split()[0]
        assert f" AS {target}\n" in stages
    registry = "europe-west4-docker.pkg.dev/p/lsfn"
    assert f"-t {registry}/lsfn-sam2:latest -t {registry}/lsfn-sam2:latest-cu126" in builds[0]
    assert "--build-arg FUNCTION=grounding_dino" in builds[2] and f"{registry}/lsfn-grounding-dino-front-door:latest" in builds[3]
    # The deploy step names them by digest.
    assert (workspace / "sam2-function.digest").read_text().strip() == f"{registry}/lsfn-sam2:latest@sha256:0123"
    # The images the command deploys by default are the ones pushed.
    gpu, _, door = dry_run()
    assert container(gpu)["image"] == f"{registry}/lsfn-sam2:latest"
    assert container(door)["image"] == f"{registry}/lsfn-sam2-front-door:latest"


def test_cloudbuild_deploys_with_the_command_and_the_cuda_tag() -> None:
    script = _cloudbuild_script("deploy", {"_DEPLOY": "true", "_FUNCTIONS": "sam2"})
    assert subprocess.run(["bash", "-n", "-c", script], capture_output=True).returncode == 0
    assert 'lsfn deploy cloudrun "$function"' in script and '--image-torch "cu126"' in script
    assert '--image "$(cat "/workspace/$function-function.digest")"' in script


# -- training on annotations ----------------------------------------------------------------------


def train_deploy(*args: str) -> subprocess.CompletedProcess[str]:
    return deploy("yolo", "--project", "p", "--region", "europe-west4", "--dry-run", *AUTH, "--label-studio-url", "http://ls",
                  "--secret", "LABEL_STUDIO_API_KEY=lsfn-key", *args)  # fmt: skip


def test_a_weights_store_gives_both_services_the_bucket_and_the_front_door_the_training_job() -> None:
    done = train_deploy("--weights-store", "gs://lsfn-weights/prod")
    assert done.returncode == 0, done.stderr
    gpu, _, door = json.loads(done.stdout)
    assert env(gpu)["WEIGHTS_STORE"] == env(door)["WEIGHTS_STORE"] == "gs://lsfn-weights/prod"
    assert env(door)["TRAIN_JOB"] == "projects/p/locations/europe-west4/jobs/lsfn-yolo-train" and "TRAIN_JOB" not in env(gpu)


def test_the_training_job_runs_lsfn_train_on_the_gpu_image_and_the_front_door_may_run_it() -> None:
    done = train_deploy("--weights-store", "gs://lsfn-weights/prod", "--train-job")
    assert done.returncode == 0, done.stderr
    job, binding = json.loads(done.stdout)
    assert job["method"] == "create_or_update_job" and job["request"]["job_id"] == "lsfn-yolo-train"
    execution = job["request"]["job"]["template"]
    (train,) = execution["template"]["containers"]
    assert train["command"] == ["lsfn"] and train["args"] == ["train", "yolo", "--project", "0"]
    assert train["image"] == "europe-west4-docker.pkg.dev/p/lsfn/lsfn-yolo:latest"
    assert train["resources"]["limits"]["nvidia.com/gpu"] == "1" and execution["template"]["node_selector"] == {"accelerator": "nvidia-l4"}
    variables = {e["name"]: e.get("value", e.get("value_source")) for e in train["env"]}
    assert variables["WEIGHTS_STORE"] == "gs://lsfn-weights/prod" and variables["LABEL_STUDIO_URL"] == "http://ls"
    assert variables["LABEL_STUDIO_API_KEY"] == {"secret_key_ref": {"secret": "lsfn-key", "version": "latest"}}
    assert "BASIC_AUTH_PASS" not in variables  # only the front door checks it
    assert execution.get("task_count") == 1 and not execution["template"].get("max_retries")
    assert binding["request"] == {"resource": "projects/p/locations/europe-west4/jobs/lsfn-yolo-train",
                                  "binding": {"role": "roles/run.developer",
                                              "members": ["serviceAccount:lsfn-front-door@p.iam.gserviceaccount.com"]}}  # fmt: skip


@pytest.mark.parametrize(
    ("args", "problem"),
    [(("--weights-store", "file:///tmp/w"), "a bucket (gs://BUCKET/PREFIX)"), (("--train-job",), "give --weights-store"),
     (("--weights-store", "gs://b/p", "--env", "TRAIN_JOB=x"), "TRAIN_JOB is set by the deploy")],
)
def test_a_training_deploy_that_cannot_work_is_refused(args: tuple[str, ...], problem: str) -> None:
    done = train_deploy(*args)
    assert done.returncode == 1 and problem in done.stderr, done.stderr
