"""`lsfn`: the command line. Deploy, pre-annotation and training commands live in deploy/."""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import os
import sys
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from lsfn.shared.runtime.app import Runtime
    from lsfn.shared.runtime.model import Model, Spec

__all__ = ["function_runtime", "main", "model_class", "resolve_function", "resolve_spec", "split_target"]

TARGET = "handler"  # the functions-framework target every function module defines


def split_target(name: str) -> tuple[str, str | None]:
    """``path/to/main.py:MyModel`` as (the function, the Model class's name)."""
    function, sep, class_name = name.rpartition(":")
    if sep and class_name.isidentifier() and function:
        return function, class_name
    return name, None


def resolve_function(name: str) -> Path:
    """The module file of a function: a folder name under functions/ (``yolo``), a folder holding
    main.py, or the path of a module (a ``:Class`` after it names its Model class)."""
    path = Path(split_target(name)[0])
    candidates = [path] if path.suffix == ".py" else [path / "main.py", Path(__file__).parent.parent / "functions" / name / "main.py"]
    for candidate in candidates:
        if candidate.is_file():
            return candidate.resolve()
    available = sorted(p.parent.name for p in (Path(__file__).parent.parent / "functions").glob("*/main.py"))
    raise SystemExit(
        f"lsfn: no function {name!r}: give a folder under functions/ ({', '.join(available) or 'none yet'}) "
        "or the path of a module that defines one"
    )


def _load_module(path: Path, name: str) -> ModuleType:
    """A module by file: by its dotted name when it lies in the checkout's packages (so it is
    the same module other code imports), else from the file itself."""
    root = Path(__file__).parent.parent
    if path.is_relative_to(root / "functions"):
        return importlib.import_module(".".join(("lsfn", *path.relative_to(root).with_suffix("").parts)))
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise SystemExit(f"lsfn: cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def resolve_spec(function: str) -> type[Spec]:
    """The ``Spec`` of a function: ``spec`` in the spec.py beside its main.py (which imports no
    model library), else the model class its main.py serves."""
    from lsfn.shared.runtime.model import Spec

    source = resolve_function(function)
    sys.path[:0] = [str(source.parent)]
    spec_file = source.parent / "spec.py"
    if split_target(function)[1] is None and spec_file.is_file():
        spec = getattr(_load_module(spec_file, "lsfn_function_spec"), "spec", None)
        if not (isinstance(spec, type) and issubclass(spec, Spec)):
            raise SystemExit(f"lsfn: {spec_file} must define `spec`, a subclass of shared.runtime.Spec")
        return spec
    return model_class(function)


def model_class(function: str) -> type[Model]:
    """The Model class a function serves: the one ``:Class`` names, else the class behind the
    module's ``handler``, else the one Model subclass the module defines."""
    from lsfn.shared.runtime.model import Model

    source = resolve_function(function)
    class_name = split_target(function)[1]
    sys.path[:0] = [str(source.parent)]
    module = _load_module(source, "lsfn_function_main")
    if class_name is not None:
        found = getattr(module, class_name, None)
        if not (isinstance(found, type) and issubclass(found, Model)):
            raise SystemExit(f"lsfn: {source} defines no Model subclass {class_name!r}")
        return found
    runtime = getattr(getattr(module, TARGET, None), "runtime", None)
    if runtime is not None:
        return type(runtime.model)
    own = [v for v in vars(module).values() if isinstance(v, type) and issubclass(v, Model) and v.__module__ == module.__name__]
    if len(own) != 1:
        raise SystemExit(f"lsfn: {source} defines {len(own)} Model subclasses: name one ({source}:ClassName)")
    return own[0]


def function_runtime(function: str) -> Runtime:
    """A function's Runtime in this process (its model not loaded yet), for callers that are
    not HTTP clients (`lsfn prelabel local:FUNCTION`): without Basic auth or the webhook
    secret, which guard the routes from the network."""
    from lsfn.shared.runtime.app import Runtime
    from lsfn.shared.settings import in_process_settings

    return Runtime(model_class(function), in_process_settings())


def serve(function: str, host: str, port: int, upstream: str | None = None) -> None:
    """Serve a function with functions-framework's gunicorn server, as Cloud Run does; with
    ``upstream``, its front door (no model) forwarding to the function at that URL."""
    from functions_framework._http import create_server

    if upstream:
        from lsfn.shared.runtime.front_door import create_front_door
        from lsfn.shared.settings import get_settings

        settings = get_settings().model_copy(update={"upstream_url": upstream.strip().rstrip("/")})
        app = create_front_door(resolve_spec(function), settings=settings)
        service = app.extensions["lsfn"]
        threads = settings.upstream_max_requests + settings.admit_queue + 8
        what = f"the front door of {function}, forwarding to {settings.upstream_url}"
    else:
        source = resolve_function(function)
        # The function's own directory and the checkout must be importable, as under Cloud Run.
        sys.path[:0] = [str(source.parent)]
        if split_target(function)[1] is None and f"\n{TARGET} = " in source.read_text():
            import functions_framework

            # The module is loaded as `functions-framework --target handler` loads it; the server
            # is functions-framework's gunicorn set-up, given the function's own WSGI app, which
            # routes every path itself (its per-request wrapper would only add latency).
            target = functions_framework.create_app(TARGET, str(source), "http").view_functions["run"]
        else:  # a module with only its Model class: the runtime makes the app
            from lsfn.shared.runtime.app import create_app, http_target

            target = http_target(create_app(model_class(function)))
        service, app = getattr(target, "runtime", None), getattr(target, "app", None)
        if service is None or app is None:
            raise SystemExit(f"lsfn: {source} defines no {TARGET!r} made by lsfn.http_target")
        settings = service.settings
        # Predictions are bounded by MAX_CONCURRENT_PREDICTIONS and two ADMIT_QUEUEs (batches
        # wait for a batch slot, then for a slot); the other threads keep /health, /setup and
        # /metrics answering while they run.
        threads = settings.max_concurrent_predictions + 2 * settings.admit_queue + 8
        what = str(source)
    options = {
        # Start loading the model (or warming the front door) in the worker as soon as it
        # starts: threads do not survive the fork.
        "post_worker_init": lambda worker: service.start(),
        "threads": int(os.environ.get("THREADS", threads)),
    }
    print(f"lsfn: serving {what} on http://{host}:{port}", file=sys.stderr, flush=True)
    create_server(app, False, **options).run(host, port)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `lsfn` console script."""
    parser = argparse.ArgumentParser(prog="lsfn", description="Label Studio ML backends as serverless functions.")
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    commands = parser.add_subparsers(dest="command")
    serve_cmd = commands.add_parser("serve", help="serve a function locally")
    # An image names its function and address in its environment: its command is `lsfn serve`.
    serve_cmd.add_argument("function", nargs="?" if os.environ.get("LSFN_FUNCTION") else None,
                           default=os.environ.get("LSFN_FUNCTION"),
                           help="a folder under functions/ or the path of a function module (default: LSFN_FUNCTION)")
    serve_cmd.add_argument("--port", type=int, default=int(os.environ.get("PORT", 9090)))
    serve_cmd.add_argument("--host", default=os.environ.get("LSFN_HOST", "127.0.0.1"),
                           help="address to listen on (default: LSFN_HOST, else 127.0.0.1; images set 0.0.0.0)")
    serve_cmd.add_argument("--upstream", default=os.environ.get("UPSTREAM_URL"), metavar="URL",
                           help="serve the function's front door (no model) forwarding to the function at URL "
                                "(default: UPSTREAM_URL)")
    serve_cmd.add_argument("--front-door", action="store_true",
                           help="serve only the front door: refuse to start without an upstream URL")
    weights_cmd = commands.add_parser("weights", help="download and check the weights a function lists")
    weights_cmd.add_argument("function", help="a folder under functions/ (yolo) or the path of a weights.json")
    weights_cmd.add_argument("--dest", type=Path, default=Path(os.environ.get("MODEL_ROOT", "models")),
                             help="where to put them (default: MODEL_ROOT, else ./models)")
    weights_cmd.add_argument("--mirror", help="a base URL serving the same file names instead of the listed URLs")
    weights_cmd.add_argument("--only", action="append", default=[], metavar="NAME",
                             help="fetch only this file (repeatable), e.g. sam2.1_hiera_tiny.pt (optional "
                                  "files are fetched only when named)")
    weights_cmd.add_argument("--from", dest="local", type=Path, metavar="FOLDER",
                             help="take the files this folder holds (laid out as in --dest) instead of downloading")
    weights_cmd.add_argument("--size", help="the model size to fetch where the list has several (SAM 2: tiny, "
                                            "small, base_plus, large)")
    weights_cmd.add_argument("--manifest", type=Path,
                             help="write what was placed (names, sha256, sizes) to this JSON file")
    deploy_cmd = commands.add_parser("deploy", help="deploy a function (cloudrun, modal)")
    targets = deploy_cmd.add_subparsers(dest="target", required=True)
    from lsfn.deploy.cloudrun_cli import add_parser as add_cloudrun
    from lsfn.deploy.modal_cli import add_parser as add_modal

    add_cloudrun(targets)
    add_modal(targets)
    from lsfn.deploy.prelabel_cli import add_parser as add_prelabel
    from lsfn.deploy.create import add_parser as add_create
    from lsfn.deploy.train_cli import add_parser as add_train
    from lsfn.deploy.try_cli import add_parser as add_try

    add_prelabel(commands)
    add_train(commands)
    add_try(commands)
    add_create(commands)
    connect_cmd = commands.add_parser("connect", help="connect a function to a Label Studio project")
    connect_cmd.add_argument("url", help="the function's URL, as Label Studio reaches it")
    connect_cmd.add_argument("--project", type=int, required=True, help="the Label Studio project id")
    connect_cmd.add_argument("--label-studio", default=os.environ.get("LABEL_STUDIO_URL"),
                             help="Label Studio's URL (default: LABEL_STUDIO_URL)")
    connect_cmd.add_argument("--token", default=os.environ.get("LABEL_STUDIO_API_KEY"),
                             help="a personal access token or legacy token (default: LABEL_STUDIO_API_KEY)")
    connect_cmd.add_argument("--basic-auth", metavar="USER:PASS",
                             help="the function's BASIC_AUTH_USER:BASIC_AUTH_PASS (default: from those variables)")
    connect_cmd.add_argument("--webhook-secret", default=os.environ.get("WEBHOOK_SECRET"),
                             help="set as the X-Webhook-Secret header of the model's webhook (default: WEBHOOK_SECRET)")
    connect_cmd.add_argument("--interactive", action="store_true", help="use it for interactive pre-annotation")
    connect_cmd.add_argument("--title", default="lsfn")
    args = parser.parse_args(argv)
    from pydantic import ValidationError

    try:
        return _run(parser, args)
    except ValidationError as exc:  # a variable of Settings or of a function's settings_class
        from lsfn.shared.settings import environment_problem

        print(f"lsfn: {environment_problem(exc)}", file=sys.stderr)
        return 2


def _run(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    if args.version:
        from importlib.metadata import version

        print(version("lsfn"))
        return 0
    if args.command == "serve":
        if args.front_door and not args.upstream:
            print("lsfn: the front door needs the function's URL: set UPSTREAM_URL (or --upstream)", file=sys.stderr)
            return 2
        serve(args.function, args.host, args.port, args.upstream)
        return 0
    if args.command == "weights":
        from lsfn.deploy.weights import WeightsFetchError, fetch_weights, listing_for

        try:
            lines = fetch_weights(listing_for(args.function), args.dest, args.mirror, only=args.only,
                                  local=args.local, manifest=args.manifest, size=args.size)  # fmt: skip
            for line in lines:
                print(line)
        except WeightsFetchError as exc:
            print(f"lsfn: {exc}", file=sys.stderr)
            return 1
        return 0
    if args.command == "connect":
        return _connect(args)
    if args.command == "create":
        from lsfn.deploy.create import run as create_function

        return create_function(args)
    if args.command == "try":
        from lsfn.deploy.try_cli import run as try_function

        return try_function(args)
    if args.command == "train":
        from lsfn.deploy.train_cli import run as train

        return train(args)
    if args.command == "prelabel":
        from lsfn.deploy.prelabel_cli import run as prelabel

        return prelabel(args)
    if args.command == "deploy":
        if args.target == "modal":
            from lsfn.deploy.modal_cli import run as deploy_modal

            return deploy_modal(args)
        from lsfn.deploy.cloudrun_cli import run as deploy_cloudrun

        return deploy_cloudrun(args)
    parser.print_help()
    return 0


def _connect(args: argparse.Namespace) -> int:
    from lsfn.deploy.connect import connect_and_report

    if not args.label_studio or not args.token:
        print("lsfn: give --label-studio and --token (or set LABEL_STUDIO_URL and LABEL_STUDIO_API_KEY)", file=sys.stderr)
        return 2
    basic = args.basic_auth
    if basic is None and os.environ.get("BASIC_AUTH_USER") and os.environ.get("BASIC_AUTH_PASS"):
        basic = f"{os.environ['BASIC_AUTH_USER']}:{os.environ['BASIC_AUTH_PASS']}"
    credentials = tuple(basic.split(":", 1)) if basic else None
    return connect_and_report(args.label_studio, args.token, args.project, args.url, title=args.title,
                              basic_auth=credentials, interactive=args.interactive, webhook_secret=args.webhook_secret)  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
