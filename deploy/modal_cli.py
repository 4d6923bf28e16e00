"""The arguments of `lsfn deploy modal` and running it: a dry run prints the app's configuration,
a deploy builds the image on Modal and deploys the app, then prints the front door's URL."""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
from types import ModuleType
from typing import Any

from lsfn.deploy.cloudrun_cli import name_value
from lsfn.deploy.cloudrun_spec import DeployError
from lsfn.deploy.function_ref import FUNCTION_HELP, function_ref
from lsfn.deploy.modal_spec import SPEC_VARIABLE, TORCH_BUILDS, ModalSpec

__all__ = ["add_parser", "credentials", "load_app", "run", "spec_from"]

NO_CREDENTIALS = ("no Modal credentials: run `modal token new` (or set MODAL_TOKEN_ID and MODAL_TOKEN_SECRET), "
                  "or use --dry-run to see what would be deployed")  # fmt: skip


def add_parser(commands: Any) -> None:
    """Add `modal` to the `lsfn deploy` subcommands."""
    cmd = commands.add_parser("modal", help="deploy a function to Modal: a GPU class that scales to zero behind a web front door")
    cmd.add_argument("function", help=FUNCTION_HELP)
    cmd.add_argument("--gpu", default="L4", help="a Modal GPU type, or several to fall back on in order: L4,A10 (default L4)")
    cmd.add_argument("--gpu-snapshot", action="store_true",
                     help="snapshot GPU memory too (Modal's alpha feature): the model loads and warms up on the GPU "
                          "before the snapshot; off by default")  # fmt: skip
    cmd.add_argument("--secret", action="append", default=[], metavar="NAME",
                     help="a Modal secret holding LABEL_STUDIO_API_KEY, BASIC_AUTH_USER/BASIC_AUTH_PASS, WEBHOOK_SECRET "
                          "(repeatable)")  # fmt: skip
    cmd.add_argument("--env", action="append", type=name_value, default=[], metavar="KEY=VALUE")
    cmd.add_argument("--allow-unauthenticated", action="store_true", help="deploy without any --secret: an open front door")
    cmd.add_argument("--min-containers", type=int, default=0, help="GPU containers kept running (billed while idle)")
    cmd.add_argument("--max-containers", type=int, default=3, help="GPU containers at most (default 3)")
    cmd.add_argument("--scaledown-window", type=int, default=300,
                     help="seconds an idle GPU container waits for the next call before it stops (default 300)")
    cmd.add_argument("--timeout", type=int, default=300, help="seconds one call may run (default 300)")
    cmd.add_argument("--concurrency", type=int, help="calls one GPU container takes at once (default: the function's)")
    cmd.add_argument("--cpu", type=float, default=2.0, help="CPU cores of a GPU container (default 2)")
    cmd.add_argument("--memory", type=int, default=8192, metavar="MIB", help="memory of a GPU container in MiB (default 8192)")
    cmd.add_argument("--front-door-min-containers", type=int, default=1, choices=(0, 1),
                     help="1 (default): the front door answers Label Studio's /health at once; 0 saves its cost")
    cmd.add_argument("--torch", default="cu126", choices=(*TORCH_BUILDS, "none"),
                     help="the image's torch build (default cu126; none: a created function that needs no torch)")
    cmd.add_argument("--model-size", default=os.environ.get("MODEL_SIZE", "large"), help="SAM 2's size (sam2, grounding_sam)")
    cmd.add_argument("--weights-list", help="another weights.json in the checkout to bake (as the Dockerfile's WEIGHTS_LIST)")
    cmd.add_argument("--weights-from", default="deploy/image/weights",
                     help="a folder of the checkout whose files are baked instead of downloaded (default deploy/image/weights)")
    cmd.add_argument("--name", help="the Modal app's name (default lsfn-FUNCTION)")
    cmd.add_argument("--environment", help="the Modal environment to deploy in (default: the profile's)")
    cmd.add_argument("--label-studio-url", "--label-studio-host", default=os.environ.get("LABEL_STUDIO_URL"))
    cmd.add_argument("--connect-project", type=int, metavar="N",
                     help="then connect the front door to this Label Studio project (LABEL_STUDIO_API_KEY, and "
                          "BASIC_AUTH_USER/BASIC_AUTH_PASS when the secret sets them, from this shell)")  # fmt: skip
    cmd.add_argument("--interactive", action="store_true", help="with --connect-project: for interactive pre-annotation")
    cmd.add_argument("--train", action="store_true",
                     help="add a GPU function `train` that Label Studio's Start Training spawns, and keep trained versions "
                          "in a Modal Volume (README 'Train on your annotations')")
    cmd.add_argument("--weights-volume", metavar="NAME", help="with --train: the Volume (default: APP-weights)")
    cmd.add_argument("--train-timeout", type=int, default=6 * 3600, help="with --train: seconds a job may run (default 6 h)")
    cmd.add_argument("--dry-run", action="store_true", help="print the app's configuration as JSON; call nothing")


def spec_from(args: argparse.Namespace) -> ModalSpec:
    ref = function_ref(args.function)
    created = {"function_target": ref.target, "function_source": str(ref.folder)} if ref.folder else {}
    spec = ModalSpec(
        function=ref.name, **created, gpu=args.gpu, gpu_snapshot=args.gpu_snapshot, secrets=list(args.secret), env=dict(args.env),
        min_containers=args.min_containers, max_containers=args.max_containers, scaledown_window=args.scaledown_window,
        timeout=args.timeout, concurrency=args.concurrency, cpu=args.cpu, memory_mib=args.memory, front_door_min_containers=args.front_door_min_containers,
        torch=args.torch, model_size=args.model_size, name=args.name, label_studio_url=args.label_studio_url,
        allow_unauthenticated=args.allow_unauthenticated, weights_list=args.weights_list, weights_from=args.weights_from,
        train=args.train, weights_volume=args.weights_volume, train_timeout=args.train_timeout,
    )  # fmt: skip
    spec.check()
    return spec


def credentials() -> bool:
    """Whether Modal's client has a token (MODAL_TOKEN_ID/SECRET or the active ~/.modal.toml profile)."""
    from modal.config import config

    try:
        return bool(config.get("token_id") and config.get("token_secret"))
    except Exception:  # noqa: BLE001 - an unreadable profile is the same as none
        return False


def load_app(spec: ModalSpec) -> ModuleType:
    """deploy/modal_app.py built for ``spec``: imported afresh with the spec in its environment,
    as Modal's containers import it."""
    spec.check()
    os.environ[SPEC_VARIABLE] = spec.to_json()
    sys.modules.pop("lsfn.deploy.modal_app", None)
    return importlib.import_module("lsfn.deploy.modal_app")


def run(args: argparse.Namespace) -> int:
    try:
        spec = spec_from(args)
        problem = spec.open_front_door()
        if args.dry_run:
            if problem:
                print(f"lsfn: warning: {problem} (a deploy refuses this)", file=sys.stderr)
            print(json.dumps(spec.config(), indent=2))
            return 0
        if problem:
            raise DeployError(problem)
        if not credentials():
            raise DeployError(NO_CREDENTIALS)
        url = _deploy(spec, args.environment)
    except DeployError as exc:
        print(f"lsfn: {exc}", file=sys.stderr)
        return 1
    if args.connect_project is not None:
        return _connect(spec, url, args)
    user = os.environ.get("BASIC_AUTH_USER") or "<BASIC_AUTH_USER>"
    print(f"front door: {url}\nLabel Studio: Settings -> Model -> Connect Model, URL {url}, Basic auth user {user!r}")
    print(f"or: lsfn connect {url} --project <ID> --label-studio <LABEL_STUDIO_URL> --token <TOKEN> --basic-auth {user}:<password>")
    return 0


def _deploy(spec: ModalSpec, environment: str | None) -> str:
    """Deploy the app; the front door's URL."""
    import modal

    try:
        module = load_app(spec)
        with modal.enable_output():
            module.app.deploy(name=spec.app, environment_name=environment)
        url = module.front_door.get_web_url()
    except modal.exception.AuthError as exc:
        raise DeployError(f"Modal refused the credentials: {str(exc).splitlines()[0]}") from None
    except modal.exception.NotFoundError as exc:  # most often a --secret that does not exist
        raise DeployError(f"{str(exc).splitlines()[0]} (create secrets with `modal secret create NAME KEY=VALUE ...`)") from None
    except modal.exception.Error as exc:
        raise DeployError(f"the deploy failed: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}") from None
    if not url:
        raise DeployError("the app deployed, but Modal gave the front door no URL")
    return url


def _connect(spec: ModalSpec, url: str, args: argparse.Namespace) -> int:
    """`lsfn connect` the deployed front door to the project."""
    from lsfn.deploy.connect import connect_and_report

    token = os.environ.get("LABEL_STUDIO_API_KEY")
    if not spec.label_studio_url or not token:
        print("lsfn: --connect-project needs --label-studio-url (or LABEL_STUDIO_URL) and LABEL_STUDIO_API_KEY", file=sys.stderr)
        return 2
    user, password = os.environ.get("BASIC_AUTH_USER"), os.environ.get("BASIC_AUTH_PASS")
    print(f"front door: {url}")
    return connect_and_report(spec.label_studio_url, token, args.connect_project, url,
                              basic_auth=(user, password) if user and password else None, interactive=args.interactive,
                              webhook_secret=os.environ.get("WEBHOOK_SECRET"),
                              failure=f"deployed at {url}, but connecting project {args.connect_project} failed: ")  # fmt: skip
