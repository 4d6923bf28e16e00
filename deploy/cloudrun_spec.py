"""What `lsfn deploy cloudrun` asks Cloud Run for: the GPU service (private, scales to zero) and
its front door (public, CPU, always warm), as ``google.cloud.run_v2`` requests, and the GPU and
driver facts they are checked against. Nothing here calls Google: ``deploy.cloudrun`` sends
these requests, ``--dry-run`` prints them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from lsfn.functions.torch_device import MIN_DRIVER  # the CUDA -> driver facts, kept in one place

__all__ = [
    "CREATED_DEFAULTS", "FRONT_DOOR_SECRETS", "FUNCTIONS", "GPUS", "SECRET_VARIABLES", "TRAIN_TIMEOUT_SECONDS", "DeployError", "DeploySpec", "Gpu",
    "NamesFunction", "cuda_of_torch_build", "front_door_service", "gpu_service", "image_torch_build", "service_name", "train_job_name",
    "training_job",
]  # fmt: skip


class DeployError(ValueError):
    """A deploy that cannot work as asked; the message says what to change."""


@dataclass(frozen=True)
class Gpu:
    """A Cloud Run GPU type: its driver (CUDA it supports) and the instance minimums it needs."""

    accelerator: str
    driver: str
    cuda: tuple[int, int]
    min_cpu: int
    min_memory_gib: int


# Cloud Run's GPU documentation ("GPU support for services"): the drivers its instances run and
# the CPU and memory each GPU type requires.
GPUS = {
    "nvidia-l4": Gpu("nvidia-l4", "535.216.03", (12, 2), 4, 16),
    "nvidia-rtx-pro-6000": Gpu("nvidia-rtx-pro-6000", "580", (13, 0), 20, 80),
}


@dataclass(frozen=True)
class FunctionDefaults:
    """Per function: requests one GPU instance takes at once before Cloud Run starts another
    (SAM 2's clicks are cheap; a Grounding DINO batch fills the GPU), and memory."""

    concurrency: int
    memory_gib: int


FUNCTIONS = {
    "yolo": FunctionDefaults(concurrency=4, memory_gib=16),
    "sam2": FunctionDefaults(concurrency=4, memory_gib=16),
    "grounding_dino": FunctionDefaults(concurrency=1, memory_gib=16),
    "grounding_sam": FunctionDefaults(concurrency=1, memory_gib=16),
    # 860 M parameters and 134 MB per cached embedding: clicks share a GPU, a batch fills it.
    "sam3": FunctionDefaults(concurrency=2, memory_gib=32),
}
# A function made by `lsfn create`, of a model nothing is known of: one request per GPU instance
# at a time (it may fill the GPU's memory), the memory the built-in functions get; --concurrency
# and --memory change them.
CREATED_DEFAULTS = FunctionDefaults(concurrency=1, memory_gib=16)


class NamesFunction:
    """What a deploy spec (Cloud Run's, Modal's) derives from the function it names: ``function``
    (a built-in function's name, or a created one's service name) and ``function_target`` (a
    created function's LSFN_FUNCTION in its images, deploy.function_ref; None for a built-in)."""

    function: str
    function_target: str | None

    @property
    def target(self) -> str:
        """LSFN_FUNCTION in the images."""
        return self.function_target or self.function

    @property
    def defaults(self) -> FunctionDefaults:
        return CREATED_DEFAULTS if self.function_target else FUNCTIONS[self.function]


# Secrets the front door checks itself (the GPU service behind it runs without them); every
# other secret (LABEL_STUDIO_API_KEY: fetching task images) goes to the GPU service.
FRONT_DOOR_SECRETS = frozenset({"BASIC_AUTH_PASS", "ML_SERVER_BASIC_AUTH_PASS", "WEBHOOK_SECRET"})
# Variables that only ever come from Secret Manager.
SECRET_VARIABLES = FRONT_DOOR_SECRETS | {"LABEL_STUDIO_API_KEY", "LABEL_STUDIO_ACCESS_TOKEN"}
# Cloud Run's startup probe may run at most 240 s: /health answers 503 until the model is
# loaded and warmed up.
STARTUP_PROBE = {"period_seconds": 5, "failure_threshold": 48, "timeout_seconds": 4}
# Label Studio waits 100 s for /predict; the front door's deadline is shorter than that.
REQUEST_TIMEOUT_SECONDS = 300
PORT = 8080


@dataclass
class DeploySpec(NamesFunction):
    """Everything one deploy decides; validated by ``check``."""

    function: str
    project: str
    region: str
    image: str
    front_door_image: str
    gpu_type: str = "nvidia-l4"
    cpu: int | None = None
    memory_gib: int | None = None
    min_instances: int = 0
    max_instances: int = 3
    concurrency: int | None = None
    front_door_min_instances: int = 1
    gpu_zonal_redundancy: bool = False
    service_account: str | None = None
    front_door_service_account: str | None = None
    label_studio_url: str | None = None
    basic_auth_user: str | None = None
    secrets: dict[str, str] = field(default_factory=dict)  # env name -> "secret[:version]"
    env: dict[str, str] = field(default_factory=dict)
    image_torch: str | None = None  # the image's TORCH build (cu126, pypi, ...); None: from its tag
    allow_unauthenticated: bool = False  # a public front door without Basic auth (a demo)
    # A function made by `lsfn create`: LSFN_FUNCTION in its images (deploy.function_ref), with
    # ``function`` the name its services take. None: ``function`` is a built-in function's name.
    function_target: str | None = None
    # Training on annotations (README "Train on your annotations"): where trained versions are
    # kept (gs://bucket/prefix); the front door then runs the training job for Start Training.
    weights_store: str | None = None

    @property
    def front_door_account(self) -> str:
        """The front door's identity: the one account the GPU service lets in."""
        return self.front_door_service_account or f"lsfn-front-door@{self.project}.iam.gserviceaccount.com"

    @property
    def gpu(self) -> Gpu:
        return GPUS[self.gpu_type]

    def check(self) -> None:
        if self.function_target is None and self.function not in FUNCTIONS:
            raise DeployError(f"no function {self.function!r} (one of {', '.join(FUNCTIONS)}, or a function's folder)")
        if self.gpu_type not in GPUS:
            raise DeployError(f"--gpu-type {self.gpu_type!r}: Cloud Run offers {', '.join(GPUS)}")
        gpu = self.gpu
        cpu, memory = self.gpu_cpu, self.gpu_memory_gib
        if cpu < gpu.min_cpu or memory < gpu.min_memory_gib:
            raise DeployError(
                f"{gpu.accelerator} needs at least {gpu.min_cpu} vCPU and {gpu.min_memory_gib} GiB of memory "
                f"(asked: {cpu} vCPU, {memory} GiB): raise --cpu/--memory"
            )
        if not 0 <= self.min_instances <= self.max_instances or self.max_instances < 1:
            raise DeployError(f"--min-instances {self.min_instances} and --max-instances {self.max_instances}: need 0 <= min <= max, max >= 1")
        if self.gpu_concurrency < 1:
            raise DeployError("--concurrency must be at least 1")
        for name in self.env:
            if name in self.secrets:
                raise DeployError(f"{name} is given both as --env and as --secret")
            if name in SECRET_VARIABLES:
                raise DeployError(f"{name} is a secret: give it with --secret {name}=<Secret Manager name>, not --env")

        if self.weights_store is not None and not self.weights_store.startswith("gs://"):
            raise DeployError(f"--weights-store {self.weights_store!r}: on Cloud Run, a bucket (gs://BUCKET/PREFIX)")
        for name in ("WEIGHTS_STORE", "TRAIN_JOB"):
            if name in self.env:
                raise DeployError(f"{name} is set by the deploy: use --weights-store")
        torch_build = self.image_torch or image_torch_build(self.image)
        if torch_build is not None:
            check_image_cuda(torch_build, gpu)

    def open_front_door(self) -> str | None:
        """Why the front door would let anyone in, or None (a deploy refuses it, a dry run warns)."""
        has_password = any(name in self.secrets for name in ("BASIC_AUTH_PASS", "ML_SERVER_BASIC_AUTH_PASS"))
        if self.allow_unauthenticated or (self.basic_auth_user and has_password):
            return None
        return ("the front door is public: give --basic-auth-user and --secret BASIC_AUTH_PASS=<secret> (Label Studio "
                "sends them), or --allow-unauthenticated to let anyone spend your GPU time")  # fmt: skip

    @property
    def gpu_cpu(self) -> int:
        return self.cpu if self.cpu is not None else self.gpu.min_cpu

    @property
    def gpu_memory_gib(self) -> int:
        return self.memory_gib if self.memory_gib is not None else max(self.gpu.min_memory_gib, self.defaults.memory_gib)

    @property
    def gpu_concurrency(self) -> int:
        return self.concurrency if self.concurrency is not None else self.defaults.concurrency


def service_name(function: str, role: str) -> str:
    """``lsfn-sam2`` (the front door, the URL Label Studio gets) and ``lsfn-sam2-gpu``."""
    base = "lsfn-" + function.replace("_", "-")
    return base + "-gpu" if role == "gpu" else base


def image_torch_build(image: str) -> str | None:
    """The TORCH build an image reference names in its tag (``:v1-cu126``, ``:cu126``), if any."""
    tag = image.rsplit("/", 1)[-1].partition(":")[2]
    found = re.search(r"(?:^|-)(cu\d{3}|pypi|cpu)$", tag)
    return found.group(1) if found else None


def cuda_of_torch_build(build: str) -> tuple[int, int] | None:
    """The CUDA a TORCH build targets (``cu126`` -> 12.6; ``pypi``: PyPI's 13.0); None for CPU."""
    if build == "cpu":
        return None
    if build == "pypi":
        return (13, 0)
    found = re.fullmatch(r"cu(\d{2})(\d)", build)
    if not found:
        raise DeployError(f"unknown torch build {build!r} (cu126, cu130, pypi or cpu)")
    return int(found.group(1)), int(found.group(2))


def check_image_cuda(build: str, gpu: Gpu) -> None:
    """Refuse an image whose torch cannot use the GPU type's driver (it would find no GPU)."""
    cuda = cuda_of_torch_build(build)
    if cuda is None:
        raise DeployError(f"the image holds a CPU torch (TORCH={build}): it cannot use the {gpu.accelerator}; build it with TORCH=cu126")
    needs = MIN_DRIVER.get(cuda[0])
    driver_major = int(gpu.driver.split(".")[0])
    if needs is None or driver_major < needs:
        raise DeployError(
            f"the image's torch is built for CUDA {cuda[0]}.{cuda[1]} (TORCH={build}, needs an NVIDIA driver >= {needs}), "
            f"and Cloud Run's {gpu.accelerator} runs driver {gpu.driver} (CUDA {gpu.cuda[0]}.{gpu.cuda[1]}): "
            "build the image with --build-arg TORCH=cu126"
        )


def _secret_ref(value: str) -> dict[str, Any]:
    secret, _, version = value.partition(":")
    return {"secret": secret, "version": version or "latest"}


def _env(plain: dict[str, str], secrets: dict[str, str]) -> list[Any]:
    from google.cloud import run_v2

    env = [run_v2.EnvVar(name=name, value=value) for name, value in sorted(plain.items())]
    for name, ref in sorted(secrets.items()):
        selector = run_v2.SecretKeySelector(**_secret_ref(ref))
        env.append(run_v2.EnvVar(name=name, value_source=run_v2.EnvVarSource(secret_key_ref=selector)))
    return env


def _gpu_env(spec: DeploySpec) -> list[Any]:
    """The variables of a container running the function with its model (the GPU service, the
    pre-annotation and training jobs): all secrets but those only the front door checks."""
    plain = {**spec.env, "LSFN_FUNCTION": spec.target}
    if spec.label_studio_url:
        plain["LABEL_STUDIO_URL"] = spec.label_studio_url
    if spec.weights_store:
        plain["WEIGHTS_STORE"] = spec.weights_store
    return _env(plain, {name: ref for name, ref in spec.secrets.items() if name not in FRONT_DOOR_SECRETS})


def _startup_probe() -> Any:
    from google.cloud import run_v2

    return run_v2.Probe(http_get=run_v2.HTTPGetAction(path="/health", port=PORT), **STARTUP_PROBE)


def gpu_service(spec: DeploySpec) -> Any:
    """The GPU function's service: one GPU, CPU always allocated (GPU instances are billed per
    instance), scales to zero, private (only the front door's account may invoke it)."""
    from google.cloud import run_v2
    from google.protobuf import duration_pb2

    container = run_v2.Container(
        name="function",
        image=spec.image,
        ports=[run_v2.ContainerPort(container_port=PORT)],
        env=_gpu_env(spec),
        resources=run_v2.ResourceRequirements(
            limits={"cpu": str(spec.gpu_cpu), "memory": f"{spec.gpu_memory_gib}Gi", "nvidia.com/gpu": "1"},
            cpu_idle=False,
            startup_cpu_boost=True,
        ),
        startup_probe=_startup_probe(),
    )
    template = run_v2.RevisionTemplate(
        containers=[container],
        scaling=run_v2.RevisionScaling(min_instance_count=spec.min_instances, max_instance_count=spec.max_instances),
        max_instance_request_concurrency=spec.gpu_concurrency,
        timeout=duration_pb2.Duration(seconds=REQUEST_TIMEOUT_SECONDS),
        node_selector=run_v2.NodeSelector(accelerator=spec.gpu_type),
        gpu_zonal_redundancy_disabled=not spec.gpu_zonal_redundancy,
        service_account=spec.service_account or "",
        labels={"lsfn-function": spec.function.replace("_", "-"), "lsfn-role": "gpu"},
    )
    return run_v2.Service(
        template=template,
        ingress=run_v2.IngressTraffic.INGRESS_TRAFFIC_ALL,
        invoker_iam_disabled=False,  # IAM decides: the front door's account only
        labels={"lsfn-function": spec.function.replace("_", "-"), "lsfn-role": "gpu"},
        description=f"lsfn {spec.function} on {spec.gpu_type}: called by its front door only",
    )


def front_door_service(spec: DeploySpec, upstream_url: str) -> Any:
    """The front door: CPU only, small, billed per request, one instance kept warm by default
    (Label Studio gives /health one second), public (Label Studio sends Basic auth, which the
    app checks; it cannot send Google identity tokens), calling the GPU service with an ID
    token of its own account."""
    from google.cloud import run_v2
    from google.protobuf import duration_pb2

    plain = {**spec.env, "LSFN_FUNCTION": spec.target, "UPSTREAM_URL": upstream_url, "UPSTREAM_AUTH": "google-id-token"}
    if spec.weights_store:  # it answers the served versions, and runs the training job
        plain |= {"WEIGHTS_STORE": spec.weights_store, "TRAIN_JOB": f"{_parent_of(spec)}/jobs/{train_job_name(spec.function)}"}
    if spec.basic_auth_user:
        plain["BASIC_AUTH_USER"] = spec.basic_auth_user
    secrets = {name: ref for name, ref in spec.secrets.items() if name in FRONT_DOOR_SECRETS}
    container = run_v2.Container(
        name="front-door",
        image=spec.front_door_image,
        ports=[run_v2.ContainerPort(container_port=PORT)],
        env=_env(plain, secrets),
        resources=run_v2.ResourceRequirements(limits={"cpu": "1", "memory": "512Mi"}, cpu_idle=True),
        startup_probe=_startup_probe(),
    )
    template = run_v2.RevisionTemplate(
        containers=[container],
        scaling=run_v2.RevisionScaling(min_instance_count=spec.front_door_min_instances, max_instance_count=10),
        max_instance_request_concurrency=80,
        timeout=duration_pb2.Duration(seconds=REQUEST_TIMEOUT_SECONDS),
        service_account=spec.front_door_account,
        labels={"lsfn-function": spec.function.replace("_", "-"), "lsfn-role": "front-door"},
    )
    return run_v2.Service(
        template=template,
        ingress=run_v2.IngressTraffic.INGRESS_TRAFFIC_ALL,
        invoker_iam_disabled=True,  # public: the app checks Basic auth and the webhook secret
        labels={"lsfn-function": spec.function.replace("_", "-"), "lsfn-role": "front-door"},
        description=f"lsfn {spec.function}: Label Studio connects here; forwards to {service_name(spec.function, 'gpu')}",
    )


# A pre-annotation task's time limit: a shard of a large project on one GPU.
JOB_TASK_TIMEOUT_SECONDS = 6 * 3600


def job_name(function: str) -> str:
    return "lsfn-" + function.replace("_", "-") + "-prelabel"


def prelabel_job(spec: DeploySpec, workers: int) -> Any:
    """The pre-annotation job (`lsfn prelabel ... cloudrun-job:FUNCTION`): the GPU function's
    image, one GPU per task. Each of an execution's ``workers`` tasks predicts its shard of the
    project in-process (`lsfn prelabel local:FUNCTION`, sharded by CLOUD_RUN_TASK_INDEX and
    CLOUD_RUN_TASK_COUNT) and stores the predictions itself; the project and the options come
    with each execution (its container overrides)."""
    # max_retries 1: a task that died is run again, and what it stored is skipped.
    return _gpu_job(spec, "prelabel", ["lsfn", "prelabel"], [], workers, max_retries=1, timeout=JOB_TASK_TIMEOUT_SECONDS)


def _gpu_job(spec: DeploySpec, role: str, command: list[str], args: list[str], workers: int, max_retries: int,
             timeout: int) -> Any:  # fmt: skip
    """A job on the GPU function's image: ``workers`` tasks of one GPU each."""
    from google.cloud import run_v2
    from google.protobuf import duration_pb2

    container = run_v2.Container(
        name=role,
        image=spec.image,
        command=command,
        args=args,
        env=_gpu_env(spec),
        resources=run_v2.ResourceRequirements(
            limits={"cpu": str(spec.gpu_cpu), "memory": f"{spec.gpu_memory_gib}Gi", "nvidia.com/gpu": "1"}
        ),
    )
    labels = {"lsfn-function": spec.function.replace("_", "-"), "lsfn-role": role}
    task = run_v2.TaskTemplate(
        containers=[container],
        max_retries=max_retries,
        timeout=duration_pb2.Duration(seconds=timeout),
        service_account=spec.service_account or "",
        node_selector=run_v2.NodeSelector(accelerator=spec.gpu_type),
        gpu_zonal_redundancy_disabled=not spec.gpu_zonal_redundancy,
    )
    return run_v2.Job(
        template=run_v2.ExecutionTemplate(task_count=workers, parallelism=workers, template=task, labels=labels),
        labels=labels,
    )


# A training job's time limit.
TRAIN_TIMEOUT_SECONDS = 6 * 3600


def train_job_name(function: str) -> str:
    return "lsfn-" + function.replace("_", "-") + "-train"


def _parent_of(spec: DeploySpec) -> str:
    return f"projects/{spec.project}/locations/{spec.region}"


def training_job(spec: DeploySpec) -> Any:
    """The training job (`lsfn deploy cloudrun FUNCTION --train-job`): the GPU function's image
    running `lsfn train`, one GPU, one task; the front door runs an execution of it for each
    Start Training, the project in its arguments (container overrides)."""
    if not spec.weights_store:
        raise DeployError("the training job keeps its versions in a bucket: give --weights-store gs://BUCKET/PREFIX")
    # Each execution names its project; max_retries 0: a failed job leaves the served version,
    # and Start Training runs it again.
    return _gpu_job(spec, "train", ["lsfn"], ["train", spec.target, "--project", "0"], 1, max_retries=0,
                    timeout=TRAIN_TIMEOUT_SECONDS)  # fmt: skip
