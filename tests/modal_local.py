"""A function's Modal app run here, without Modal: the front door's WSGI app served over HTTP,
its upstream the GPU class's ``.local()`` call (Modal runs both enter phases, then the method,
in this process). What differs on Modal is only the transport between the two.

    python -m tests.modal_local FUNCTION --port PORT      (MODEL_ROOT, BASIC_AUTH_*, ... from the environment)
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping
from typing import Any

from werkzeug.serving import make_server

from lsfn.deploy.modal_cli import load_app
from lsfn.deploy.modal_spec import ModalSpec


def local_pair(function: str) -> tuple[Any, Any]:
    """(the front door's WSGI app, the GPU class instance) of the function's Modal app, the
    class entered (as a container starts) before the front door serves."""
    module = load_app(ModalSpec(function=function))
    gpu = module.Function()

    def handler(method: str, path: str, body: bytes | None, headers: dict[str, str], timeout: float) -> tuple[int, bytes, Mapping[str, str]]:
        return gpu.handle.local(method, path, body, headers)

    gpu.handle.local("GET", "/health", None, {})  # enter(snap=True) and enter(snap=False), once
    return module.front_door_app(function, handler), gpu


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("function")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    app, _ = local_pair(args.function)
    print(f"modal_local: serving {args.function} on {args.port}", file=sys.stderr, flush=True)
    make_server("127.0.0.1", args.port, app, threaded=True).serve_forever()


if __name__ == "__main__":
    main()
