"""`lsfn deploy cloudrun FUNCTION`: the GPU service, its front door and the IAM binding between
them, created or updated through Cloud Run's Admin API (``google-cloud-run``), in order, so that
a second run with the same arguments changes nothing. ``--dry-run`` prints the same requests as
JSON and calls nothing.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from lsfn.deploy.cloudrun_spec import (
    DeployError, DeploySpec, front_door_service, gpu_service, job_name, prelabel_job, service_name, train_job_name, training_job,
)  # fmt: skip

__all__ = ["INVOKER", "JOB_RUNNER", "Step", "add_iam_binding", "apply", "apply_job", "dry_run", "plan", "plan_job", "plan_train_job", "train_job_binding"]

INVOKER = "roles/run.invoker"
# Running an execution with its arguments overridden (the project of a training job) needs
# run.jobs.runWithOverrides, which run.invoker lacks: the front door gets this role on the job.
JOB_RUNNER = "roles/run.developer"
# An IAM write that lost a race with another writer (409 Aborted, 412 etag mismatch) is read
# and written again this many times.
IAM_ATTEMPTS = 5


@dataclass
class Step:
    """One request of a deploy: ``method`` names the Admin API call."""

    method: str
    request: dict[str, Any]


def _parent(spec: DeploySpec) -> str:
    return f"projects/{spec.project}/locations/{spec.region}"


def _message_dict(message: Any) -> dict[str, Any]:
    """A message as a dict of the fields it sets (a 0 or false that proto3 cannot tell from
    unset is left out: min_instance_count absent means 0)."""
    return type(message).to_dict(message, use_integers_for_enums=False, preserving_proto_field_name=True,
                                 always_print_fields_with_no_presence=False)  # fmt: skip


def plan(spec: DeploySpec, gpu_url: str | None = None) -> list[Step]:
    """The requests of a deploy, in order. ``gpu_url``: the GPU service's URL once known (a
    placeholder naming it in a dry run)."""
    spec.check()
    parent, gpu_name = _parent(spec), service_name(spec.function, "gpu")
    upstream = gpu_url or f"${{{gpu_name}.uri}}"
    gpu = {"parent": parent, "service_id": gpu_name, "service": gpu_service(spec)}
    door = {"parent": parent, "service_id": service_name(spec.function, "front-door"),
            "service": front_door_service(spec, upstream)}  # fmt: skip
    binding = {"resource": f"{parent}/services/{gpu_name}",
               "binding": {"role": INVOKER, "members": [f"serviceAccount:{spec.front_door_account}"]}}  # fmt: skip
    # The binding before the front door: it is live as soon as it is created, and must be let in.
    return [Step("create_or_update_service", gpu), Step("add_iam_binding", binding), Step("create_or_update_service", door)]


def _service_dict(service: Any) -> dict[str, Any]:
    """A service for review: the fields it sets, and the ones whose false or 0 is the point
    (CPU always allocated on the GPU, no minimum instances, the invoker check on)."""
    data = _message_dict(service)
    data["invoker_iam_disabled"] = service.invoker_iam_disabled
    template = data.setdefault("template", {})
    template.setdefault("scaling", {})["min_instance_count"] = service.template.scaling.min_instance_count
    for container, message in zip(template.get("containers", []), service.template.containers):
        container.setdefault("resources", {})["cpu_idle"] = message.resources.cpu_idle
    return data


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: _jsonable(item) for key, item in value.items()}
    if not hasattr(type(value), "to_dict"):
        return value
    return _service_dict(value) if type(value).__name__ == "Service" else _message_dict(value)


def dry_run(spec: DeploySpec) -> str:
    """The deploy's requests as one JSON document."""
    return json.dumps([{"method": step.method, "request": _jsonable(step.request)} for step in plan(spec)], indent=2)


def _subset(want: Any, have: Any) -> bool:
    """Every value ``want`` sets is what ``have`` holds (Cloud Run adds fields of its own).
    Both sides come from ``_service_dict``: the fields whose 0 or false matters are in both."""
    if isinstance(want, dict):
        return isinstance(have, dict) and all(_subset(v, have.get(k)) for k, v in want.items() if v not in ({}, [], "", None))
    if isinstance(want, list):
        return isinstance(have, list) and len(want) == len(have) and all(_subset(w, h) for w, h in zip(want, have))
    return want == have


def _explain(exc: Exception, what: str) -> DeployError:
    """An Admin API error as one sentence a deployer can act on."""
    from google.api_core import exceptions

    if isinstance(exc, (exceptions.PermissionDenied, exceptions.Forbidden)):  # gRPC, REST
        return DeployError(f"permission denied to {what}: the deploying account needs roles/run.admin on the project "
                           f"and roles/iam.serviceAccountUser on the services' accounts ({exc.message})")  # fmt: skip
    if isinstance(exc, exceptions.GoogleAPICallError):
        return DeployError(f"Cloud Run refused to {what}: {exc.code.name if exc.code else ''} {exc.message}".strip())
    return DeployError(f"could not {what}: {exc}")


def _deploy_service(services: Any, request: dict[str, Any], log: Callable[[str], None], timeout: float) -> Any:
    from google.api_core import exceptions

    name = f"{request['parent']}/services/{request['service_id']}"
    desired = request["service"]
    try:
        current = services.get_service(name=name)
    except exceptions.NotFound:
        current = None
    except exceptions.GoogleAPICallError as exc:
        raise _explain(exc, f"read {name}") from None
    try:
        if current is None:
            log(f"creating {name}")
            operation = services.create_service(parent=request["parent"], service=desired, service_id=request["service_id"])
        elif _subset(_service_dict(desired), _service_dict(current)):
            log(f"{name}: unchanged")
            return current
        else:
            log(f"updating {name}")
            desired.name = name
            operation = services.update_service(service=desired)
        return operation.result(timeout=timeout)
    except exceptions.GoogleAPICallError as exc:
        raise _explain(exc, f"deploy {name}") from None


def add_iam_binding(services: Any, request: dict[str, Any], log: Callable[[str], None]) -> None:
    """Read-modify-write of the service's IAM policy, with its etag; a member already bound is
    not added twice; a write that lost a race is retried on a fresh read."""
    from google.api_core import exceptions
    from google.iam.v1 import iam_policy_pb2, options_pb2, policy_pb2

    resource, role = request["resource"], request["binding"]["role"]
    members = request["binding"]["members"]
    for attempt in range(IAM_ATTEMPTS):
        try:
            options = options_pb2.GetPolicyOptions(requested_policy_version=3)  # conditional bindings intact
            policy = services.get_iam_policy(request=iam_policy_pb2.GetIamPolicyRequest(resource=resource, options=options))
        except exceptions.GoogleAPICallError as exc:
            raise _explain(exc, f"read the IAM policy of {resource}") from None
        # A binding with a condition grants only under it: ours is unconditional.
        binding = next((b for b in policy.bindings if b.role == role and not b.HasField("condition")), None)
        missing = [m for m in members if binding is None or m not in binding.members]
        if not missing:
            log(f"{resource}: {role} already granted to {', '.join(members)}")
            return
        if binding is None:
            policy.bindings.append(policy_pb2.Binding(role=role, members=missing))
        else:
            binding.members.extend(missing)
        try:
            services.set_iam_policy(request=iam_policy_pb2.SetIamPolicyRequest(resource=resource, policy=policy))
            log(f"{resource}: {role} granted to {', '.join(missing)}")
            return
        except (exceptions.Aborted, exceptions.Conflict, exceptions.FailedPrecondition, exceptions.PreconditionFailed):
            time.sleep(min(2.0, 0.2 * 2**attempt))  # someone else wrote the policy: read it again
        except exceptions.GoogleAPICallError as exc:
            raise _explain(exc, f"grant {role} on {resource}") from None
    raise DeployError(f"the IAM policy of {resource} kept changing under us ({IAM_ATTEMPTS} attempts): run the deploy again")


def apply(spec: DeploySpec, services: Any, log: Callable[[str], None] = print, timeout: float = 900) -> str:
    """Deploy through ``services`` (a ``run_v2.ServicesClient``); the front door's URL."""
    problem = spec.open_front_door()
    if problem:
        raise DeployError(problem)
    gpu_step, binding, _ = plan(spec)
    gpu = _deploy_service(services, gpu_step.request, log, timeout)
    if not gpu.uri:
        raise DeployError(f"{gpu.name} has no URL after its deploy")
    add_iam_binding(services, binding.request, log)
    door = _deploy_service(services, plan(spec, gpu_url=gpu.uri)[2].request, log, timeout)
    return door.uri


def plan_train_job(spec: DeploySpec) -> Step:
    """The training job's request (`lsfn deploy cloudrun FUNCTION --train-job`)."""
    spec.check()
    return Step("create_or_update_job", {"parent": _parent(spec), "job_id": train_job_name(spec.function), "job": training_job(spec)})


def train_job_binding(spec: DeploySpec) -> Step:
    """The front door's right to run the training job (it does on Start Training)."""
    resource = f"{_parent(spec)}/jobs/{train_job_name(spec.function)}"
    return Step("add_iam_binding", {"resource": resource, "binding": {"role": JOB_RUNNER,
                                                                      "members": [f"serviceAccount:{spec.front_door_account}"]}})


def plan_job(spec: DeploySpec, workers: int) -> Step:
    """The pre-annotation job's request (`lsfn deploy cloudrun FUNCTION --job`)."""
    spec.check()
    if workers < 1:
        raise DeployError("--workers must be at least 1")
    return Step("create_or_update_job", {"parent": _parent(spec), "job_id": job_name(spec.function), "job": prelabel_job(spec, workers)})


def dry_run_job(*steps: Step) -> str:
    return json.dumps([{"method": step.method, "request": _jsonable(step.request)} for step in steps], indent=2)


def apply_job(step: Step, jobs: Any, log: Callable[[str], None] = print, timeout: float = 900) -> str:
    """Create or update a job (``plan_job``, ``plan_train_job``) through ``jobs`` (a
    ``run_v2.JobsClient``); its name."""
    from google.api_core import exceptions

    request = step.request
    name = f"{request['parent']}/jobs/{request['job_id']}"
    try:
        try:
            current = jobs.get_job(name=name)
        except exceptions.NotFound:
            current = None
        if current is None:
            log(f"creating {name}")
            operation = jobs.create_job(parent=request["parent"], job=request["job"], job_id=request["job_id"])
        elif _subset(_message_dict(request["job"]), _message_dict(current)):
            log(f"{name}: unchanged")
            return name
        else:
            log(f"updating {name}")
            request["job"].name = name
            operation = jobs.update_job(job=request["job"])
        operation.result(timeout=timeout)
    except exceptions.GoogleAPICallError as exc:
        raise _explain(exc, f"deploy {name}") from None
    return name
