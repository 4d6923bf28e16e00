"""The arguments of `lsfn deploy cloudrun` (label-studio-ml-backend's `deploy gcp` spellings are
accepted where they mean the same) and running it."""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

from lsfn.deploy.cloudrun_spec import GPUS, DeployError, DeploySpec, service_name
from lsfn.deploy.function_ref import FUNCTION_HELP, function_ref

__all__ = ["add_parser", "client", "name_value", "run", "spec_from"]

# The secret a plain --label-studio-api-key is stored in (never a plain environment variable).
API_KEY_SECRET = "lsfn-label-studio-api-key"


def name_value(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"{text!r} is not NAME=VALUE")
    return key, value


def add_parser(commands: Any) -> None:
    """Add `cloudrun` to the `lsfn deploy` subcommands."""
    cmd = commands.add_parser("cloudrun", help="deploy a function to Cloud Run GPU behind a public front door")
    cmd.add_argument("function", help=FUNCTION_HELP)
    cmd.add_argument("--project", "--gcp-project-id", default=os.environ.get("GOOGLE_CLOUD_PROJECT"), required=False)
    cmd.add_argument("--region", "--gcp-region", default=os.environ.get("GOOGLE_CLOUD_REGION"))
    cmd.add_argument("--image", help="the GPU function's image (default: what cloudbuild.yaml pushes)")
    cmd.add_argument("--front-door-image", help="the front door's image (default: what cloudbuild.yaml pushes)")
    cmd.add_argument("--repository", default="lsfn", help="the Artifact Registry repository of the default images")
    cmd.add_argument("--tag", default="latest", help="the default images' tag")
    cmd.add_argument("--image-torch", help="the image's TORCH build (cu126, cu130, pypi), when its tag does not end with it")
    cmd.add_argument("--gpu-type", default="nvidia-l4", choices=sorted(GPUS))
    cmd.add_argument("--cpu", type=int, help="vCPUs of a GPU instance (default: the GPU type's minimum)")
    cmd.add_argument("--memory", type=int, metavar="GIB", help="GiB of memory of a GPU instance (default: the GPU type's minimum)")
    cmd.add_argument("--min-instances", type=int, default=0, help="GPU instances kept running (billed while idle)")
    cmd.add_argument("--max-instances", type=int, default=3, help="GPU instances at most (default 3: Cloud Run's own default of 100 is a bill)")
    cmd.add_argument("--concurrency", type=int, help="requests per GPU instance (default: the function's)")
    cmd.add_argument("--front-door-min-instances", type=int, default=1,
                     help="front door instances kept warm (default 1: Label Studio gives /health one second)")
    cmd.add_argument("--gpu-zonal-redundancy", action="store_true",
                     help="reserve capacity in other zones (dearer; needs quota). Off by default")
    cmd.add_argument("--no-gpu-zonal-redundancy", dest="gpu_zonal_redundancy", action="store_false")
    cmd.add_argument("--service-account", help="the GPU service's account (reads LABEL_STUDIO_API_KEY's secret)")
    cmd.add_argument("--front-door-service-account",
                     help="the front door's account, the only one allowed to call the GPU service "
                          "(default: lsfn-front-door@PROJECT.iam.gserviceaccount.com)")
    cmd.add_argument("--label-studio-url", "--label-studio-host", default=os.environ.get("LABEL_STUDIO_URL"))
    cmd.add_argument("--label-studio-api-key", help="stored as a Secret Manager secret version, never as a plain variable")
    cmd.add_argument("--basic-auth-user", default=os.environ.get("BASIC_AUTH_USER"))
    cmd.add_argument("--allow-unauthenticated", action="store_true",
                     help="a public front door without Basic auth (anyone with the URL can use the GPU)")
    cmd.add_argument("--secret", action="append", type=name_value, default=[], metavar="NAME=SECRET[:VERSION]",
                     help="an environment variable from Secret Manager (LABEL_STUDIO_API_KEY, BASIC_AUTH_PASS, WEBHOOK_SECRET)")
    cmd.add_argument("--env", action="append", type=name_value, default=[], metavar="KEY=VALUE")
    cmd.add_argument("--connect-project", type=int, metavar="N",
                     help="then connect Label Studio's project N to the front door (lsfn connect: needs --label-studio-url, "
                          "the API key, and BASIC_AUTH_PASS / WEBHOOK_SECRET in this shell when the deploy sets them)")
    cmd.add_argument("--interactive", action="store_true", help="with --connect-project: for interactive pre-annotation")
    cmd.add_argument("--job", action="store_true",
                     help="deploy the pre-annotation job (lsfn prelabel ... cloudrun-job:FUNCTION) instead of the services")
    cmd.add_argument("--workers", type=int, default=4, help="with --job: tasks of an execution, each on its own GPU (default 4)")
    cmd.add_argument("--weights-store", metavar="gs://BUCKET/PREFIX",
                     help="train on annotations: trained versions in this bucket, Start Training runs the training job "
                          "(deploy it with --train-job; README 'Train on your annotations')")
    cmd.add_argument("--train-job", action="store_true",
                     help="deploy the training job (lsfn train on the GPU image) instead of the services (needs --weights-store)")
    cmd.add_argument("--dry-run", action="store_true", help="print the requests as JSON and send none")
    cmd.add_argument("--api-endpoint", help="the Cloud Run Admin API's address (tests, private endpoints)")


def spec_from(args: argparse.Namespace) -> DeploySpec:
    if not args.project or not args.region:
        raise DeployError("give --project and --region (or GOOGLE_CLOUD_PROJECT and GOOGLE_CLOUD_REGION)")
    registry = f"{args.region}-docker.pkg.dev/{args.project}/{args.repository}"
    ref = function_ref(args.function)
    base = service_name(ref.name, "front-door")
    secrets = dict(args.secret)
    if args.label_studio_api_key:
        if "LABEL_STUDIO_API_KEY" in secrets:
            raise DeployError("give LABEL_STUDIO_API_KEY either as --secret or as --label-studio-api-key, not both")
        secrets["LABEL_STUDIO_API_KEY"] = API_KEY_SECRET
    return DeploySpec(
        function=ref.name, function_target=ref.target if ref.created else None, project=args.project, region=args.region,
        image=args.image or f"{registry}/{base}:{args.tag}",
        front_door_image=args.front_door_image or f"{registry}/{base}-front-door:{args.tag}",
        gpu_type=args.gpu_type, cpu=args.cpu, memory_gib=args.memory, min_instances=args.min_instances,
        max_instances=args.max_instances, concurrency=args.concurrency,
        front_door_min_instances=args.front_door_min_instances, gpu_zonal_redundancy=args.gpu_zonal_redundancy,
        service_account=args.service_account, front_door_service_account=args.front_door_service_account,
        label_studio_url=args.label_studio_url, basic_auth_user=args.basic_auth_user,
        secrets=secrets, env=dict(args.env), image_torch=args.image_torch, allow_unauthenticated=args.allow_unauthenticated,
        weights_store=args.weights_store,
    )  # fmt: skip


def run(args: argparse.Namespace) -> int:
    from lsfn.deploy.cloudrun import apply, dry_run

    try:
        spec = spec_from(args)
        if args.job or args.train_job:
            return _deploy_job(spec, args)
        if args.dry_run:
            if problem := spec.open_front_door():
                print(f"lsfn: warning: {problem} (a deploy refuses this)", file=sys.stderr)
            steps = json.loads(dry_run(spec))
            if args.label_studio_api_key:  # the value itself is never printed
                payload = f"<{len(args.label_studio_api_key.encode())} bytes, not shown>"
                steps.insert(0, {"method": "add_secret_version",
                                 "request": {"parent": f"projects/{spec.project}/secrets/{API_KEY_SECRET}",
                                             "payload": {"data": payload}}})  # fmt: skip
            print(json.dumps(steps, indent=2))
            return 0
        if args.label_studio_api_key:
            print(f"lsfn: the API key goes into Secret Manager as {API_KEY_SECRET!r}, not into the service's variables",
                  file=sys.stderr)  # fmt: skip
            # Pinned to its version: a new key makes a new revision, which reads it.
            version = _store_secret(spec.project, API_KEY_SECRET, args.label_studio_api_key)
            spec.secrets["LABEL_STUDIO_API_KEY"] = f"{API_KEY_SECRET}:{version}"
        url = apply(spec, _services_client(args.api_endpoint), log=lambda line: print(f"lsfn: {line}", file=sys.stderr))
    except DeployError as exc:
        print(f"lsfn: {exc}", file=sys.stderr)
        return 1
    if args.connect_project is not None:
        return _connect(spec, url, args)
    user = spec.basic_auth_user or "<BASIC_AUTH_USER>"
    print(f"front door: {url}\nLabel Studio: Settings -> Model -> Connect Model, URL {url}, Basic auth user {user!r}")
    print(f"or: lsfn connect {url} --project <ID> --label-studio <LABEL_STUDIO_URL> --token <TOKEN> "
          f"--basic-auth {user}:<password>")  # fmt: skip
    return 0


def _deploy_job(spec: DeploySpec, args: argparse.Namespace) -> int:
    """The pre-annotation job (a GPU per task) or the training job: the GPU function's image."""
    from lsfn.deploy.cloudrun import add_iam_binding, apply_job, dry_run_job, plan_job, plan_train_job, train_job_binding

    if not spec.label_studio_url or not ("LABEL_STUDIO_API_KEY" in spec.secrets or args.label_studio_api_key):
        raise DeployError("the job's tasks read and write the project: give --label-studio-url and the API key "
                          "(--secret LABEL_STUDIO_API_KEY=SECRET or --label-studio-api-key)")  # fmt: skip
    if args.train_job and args.job:
        raise DeployError("--job and --train-job deploy different jobs: give one")
    step = plan_train_job(spec) if args.train_job else plan_job(spec, args.workers)
    if args.dry_run:
        print(dry_run_job(step, *([train_job_binding(spec)] if args.train_job else [])))
        return 0
    if args.label_studio_api_key:
        spec.secrets["LABEL_STUDIO_API_KEY"] = f"{API_KEY_SECRET}:{_store_secret(spec.project, API_KEY_SECRET, args.label_studio_api_key)}"
        step = plan_train_job(spec) if args.train_job else plan_job(spec, args.workers)
    jobs = client("JobsClient", args.api_endpoint)
    log = lambda line: print(f"lsfn: {line}", file=sys.stderr)  # noqa: E731
    name = apply_job(step, jobs, log=log)
    if args.train_job:
        add_iam_binding(jobs, train_job_binding(spec).request, log)
        print(f"job: {name}\nStart Training in Label Studio runs it (through the front door deployed with --weights-store "
              f"{spec.weights_store}); by hand: gcloud run jobs execute {name.rsplit('/', 1)[1]} --region {spec.region} "
              "--args=train,<FUNCTION>,--project,<ID>")  # fmt: skip
        return 0
    print(f"job: {name}\nrun it: lsfn prelabel cloudrun-job:{spec.function} --project <ID> --gcp-project {spec.project} "
          f"--region {spec.region} [--workers N]")  # fmt: skip
    return 0


def _connect(spec: DeploySpec, url: str, args: argparse.Namespace) -> int:
    """`lsfn connect` the deployed front door to the project."""
    from lsfn.deploy.connect import connect_and_report

    token = args.label_studio_api_key or os.environ.get("LABEL_STUDIO_API_KEY")
    if not spec.label_studio_url or not token:
        print("lsfn: --connect-project needs --label-studio-url and the API key (--label-studio-api-key or LABEL_STUDIO_API_KEY)",
              file=sys.stderr)  # fmt: skip
        return 2
    password = os.environ.get("BASIC_AUTH_PASS")
    basic = (spec.basic_auth_user, password) if spec.basic_auth_user and password else None
    if spec.basic_auth_user and not password:
        print("lsfn: set BASIC_AUTH_PASS in this shell (the front door's password) to connect", file=sys.stderr)
        return 2
    print(f"front door: {url}")
    return connect_and_report(spec.label_studio_url, token, args.connect_project, url, basic_auth=basic,
                              interactive=args.interactive, webhook_secret=os.environ.get("WEBHOOK_SECRET"),
                              failure=f"deployed at {url}, but connecting project {args.connect_project} failed: ")  # fmt: skip


def _services_client(endpoint: str | None) -> Any:
    return client("ServicesClient", endpoint)


def client(kind: str, endpoint: str | None) -> Any:
    """A ``run_v2`` client (ServicesClient, JobsClient, ExecutionsClient)."""
    from google.cloud import run_v2

    if endpoint:  # a test double or a private endpoint, over REST
        from google.api_core.client_options import ClientOptions
        from google.auth.credentials import AnonymousCredentials

        return getattr(run_v2, kind)(credentials=AnonymousCredentials(), transport="rest",
                                     client_options=ClientOptions(api_endpoint=endpoint))  # fmt: skip
    return getattr(run_v2, kind)()


def _store_secret(project: str, secret_id: str, value: str) -> str:
    """The version of the secret holding ``value``: its latest when that already holds it (a
    second run adds nothing), else a new one (the secret is created when missing)."""
    from google.api_core import exceptions
    from google.cloud import secretmanager

    client = secretmanager.SecretManagerServiceClient()
    parent, name = f"projects/{project}", f"projects/{project}/secrets/{secret_id}"
    try:
        try:
            latest = client.access_secret_version(name=f"{name}/versions/latest")
            if latest.payload.data == value.encode():
                return latest.name.rsplit("/", 1)[1]
        except exceptions.NotFound:
            try:
                client.create_secret(parent=parent, secret_id=secret_id, secret={"replication": {"automatic": {}}})
            except exceptions.AlreadyExists:  # it exists without versions
                pass
        version = client.add_secret_version(parent=name, payload={"data": value.encode()})
    except exceptions.GoogleAPICallError as exc:
        raise DeployError(f"cannot store the API key in the secret {secret_id}: {exc.message} "
                          "(the deploying account needs roles/secretmanager.admin)") from None  # fmt: skip
    return version.name.rsplit("/", 1)[1]
