"""`lsfn`: the command line. Deploy commands live in deploy/."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

__all__ = ["main", "resolve_function"]

TARGET = "handler"  # the functions-framework target every function module defines


def resolve_function(name: str) -> Path:
    """The module file of a function: a folder name under functions/ (``yolo``), a folder holding
    main.py, or the path of a module."""
    path = Path(name)
    candidates = [path] if path.suffix == ".py" else [path / "main.py", Path(__file__).parent.parent / "functions" / name / "main.py"]
    for candidate in candidates:
        if candidate.is_file():
            return candidate.resolve()
    available = sorted(p.parent.name for p in (Path(__file__).parent.parent / "functions").glob("*/main.py"))
    raise SystemExit(
        f"lsfn: no function {name!r}: give a folder under functions/ ({', '.join(available) or 'none yet'}) "
        "or the path of a module that defines one"
    )


def serve(function: str, host: str, port: int) -> None:
    """Serve a function with functions-framework's gunicorn server, as Cloud Run does."""
    source = resolve_function(function)
    # The function's own directory and the checkout must be importable, as under Cloud Run.
    sys.path[:0] = [str(source.parent)]
    import functions_framework
    from functions_framework._http import create_server

    # The module is loaded as `functions-framework --target handler` loads it; the server is
    # functions-framework's gunicorn set-up, given the function's own WSGI app, which routes
    # every path itself (functions-framework's per-request wrapper would only add latency).
    target = functions_framework.create_app(TARGET, str(source), "http").view_functions["run"]
    runtime, app = getattr(target, "runtime", None), getattr(target, "app", None)
    if runtime is None or app is None:
        raise SystemExit(f"lsfn: {source} defines no {TARGET!r} made by shared.runtime.http_target")
    limit = runtime.settings.max_concurrent_predictions
    options = {
        # Load the model in the worker as soon as it starts (threads do not survive the fork).
        "post_worker_init": lambda worker: runtime.start(),
        # Predictions are bounded by MAX_CONCURRENT_PREDICTIONS; the other threads keep /health,
        # /setup and /metrics answering while they run.
        "threads": int(os.environ.get("THREADS", limit + 8)),
    }
    print(f"lsfn: serving {source} on http://{host}:{port}", file=sys.stderr, flush=True)
    create_server(app, False, **options).run(host, port)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `lsfn` console script."""
    parser = argparse.ArgumentParser(prog="lsfn", description="Label Studio ML backends as serverless functions.")
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    commands = parser.add_subparsers(dest="command")
    serve_cmd = commands.add_parser("serve", help="serve a function locally")
    serve_cmd.add_argument("function", help="a folder under functions/ or the path of a function module")
    serve_cmd.add_argument("--port", type=int, default=int(os.environ.get("PORT", 9090)))
    serve_cmd.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0 in a container)")
    weights_cmd = commands.add_parser("weights", help="download and check the weights a function lists")
    weights_cmd.add_argument("function", help="a folder under functions/ (yolo) or the path of a weights.json")
    weights_cmd.add_argument("--dest", type=Path, default=Path(os.environ.get("MODEL_ROOT", "models")),
                             help="where to put them (default: MODEL_ROOT, else ./models)")
    weights_cmd.add_argument("--mirror", help="a base URL serving the same file names instead of the listed URLs")
    weights_cmd.add_argument("--only", action="append", default=[], metavar="NAME",
                             help="fetch only this file (repeatable), e.g. sam2.1_hiera_large.pt")
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
    if args.version:
        from importlib.metadata import version

        print(version("lsfn"))
        return 0
    if args.command == "serve":
        serve(args.function, args.host, args.port)
        return 0
    if args.command == "weights":
        from deploy.weights import WeightsFetchError, fetch_weights, listing_for

        try:
            for line in fetch_weights(listing_for(args.function), args.dest, args.mirror, only=args.only):
                print(line)
        except WeightsFetchError as exc:
            print(f"lsfn: {exc}", file=sys.stderr)
            return 1
        return 0
    if args.command == "connect":
        return _connect(args)
    parser.print_help()
    return 0


def _connect(args: argparse.Namespace) -> int:
    from deploy.connect import ConnectError, LabelStudio, connect

    if not args.label_studio or not args.token:
        print("lsfn: give --label-studio and --token (or set LABEL_STUDIO_URL and LABEL_STUDIO_API_KEY)", file=sys.stderr)
        return 2
    basic = args.basic_auth
    if basic is None and os.environ.get("BASIC_AUTH_USER") and os.environ.get("BASIC_AUTH_PASS"):
        basic = f"{os.environ['BASIC_AUTH_USER']}:{os.environ['BASIC_AUTH_PASS']}"
    credentials = tuple(basic.split(":", 1)) if basic else None
    try:
        ls = LabelStudio(args.label_studio, args.token)
        done = connect(ls, args.project, args.url, title=args.title, basic_auth=credentials,  # type: ignore[arg-type]
                       interactive=args.interactive, webhook_secret=args.webhook_secret)  # fmt: skip
    except ConnectError as exc:
        print(f"lsfn: {exc}", file=sys.stderr)
        return 1
    print(done.report())
    return 0 if done.state == "connected" else 1


if __name__ == "__main__":
    sys.exit(main())
