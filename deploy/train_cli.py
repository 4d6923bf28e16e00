"""`lsfn train FUNCTION --project N`: one training job, by hand or as a job a function started.

It pulls the project's annotated tasks from Label Studio, fine-tunes the function on them
(``Model.train``), records the new version in the weights store and serves it when its
validation metric is not worse than the served weights'. The report is printed as JSON.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

if TYPE_CHECKING:
    from lsfn.shared.settings import Settings
    from lsfn.shared.training_job import JobReport

__all__ = ["add_parser", "run", "train_project"]


def _option(text: str) -> tuple[str, Any]:
    key, sep, raw = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"{text!r}: give KEY=VALUE (--train-arg, TRAIN_ARGS)")
    try:
        value: Any = json.loads(raw)  # numbers, booleans, null
    except ValueError:
        value = raw
    return key, value


def add_parser(commands: Any) -> None:
    cmd = commands.add_parser("train", help="fine-tune a function on a project's annotations (a training job)")
    cmd.add_argument("function", help="a folder under functions/ (yolo) or path/to/main.py:Class")
    cmd.add_argument("--project", type=int, required=True, help="the Label Studio project id")
    cmd.add_argument("--label-studio", default=os.environ.get("LABEL_STUDIO_URL"), help="default: LABEL_STUDIO_URL")
    cmd.add_argument("--token", default=os.environ.get("LABEL_STUDIO_API_KEY"), help="default: LABEL_STUDIO_API_KEY")
    cmd.add_argument("--store", default=os.environ.get("WEIGHTS_STORE"),
                     help="the weights store: file:///folder, gs://bucket/prefix, modal-volume://name (default: WEIGHTS_STORE)")
    cmd.add_argument("--base", help="weights to start from, in MODEL_ROOT (default: the served version, else model_path)")
    cmd.add_argument("--epochs", type=int, help="training epochs (default: the function's)")
    cmd.add_argument("--train-arg", action="append", type=_option, default=[], metavar="KEY=VALUE",
                     help="passed to the function's trainer (YOLO: ultralytics' train arguments, e.g. imgsz=320)")


def train_project(function: str, project: int, settings: Settings, *, store: str, token: str, base: str | None = None,
                  epochs: int | None = None, extra: dict[str, Any] | None = None,
                  log: Callable[[str], None] = print) -> JobReport:  # fmt: skip
    """One job: the function's model (not set up) trained on the project's annotations from
    ``settings.label_studio_url``, the version recorded in ``store``. The trainer's options are
    TRAIN_ARGS, then ``extra``."""
    from pydantic import SecretStr

    from lsfn.shared.cli import model_class
    from lsfn.shared.label_studio import LabelStudio
    from lsfn.shared.trained_versions import TrainedVersions
    from lsfn.shared.training_job import run_training
    from lsfn.shared.weights_store import open_store

    cls = model_class(function)
    if not cls.can_train():
        raise ValueError(f"{cls.__name__} does not train")
    if not settings.label_studio_url or not token:
        raise ValueError("give --label-studio and --token (or LABEL_STUDIO_URL and LABEL_STUDIO_API_KEY)")
    model = cls(settings.model_copy(update={"label_studio_api_key": SecretStr(token)}))
    versions = TrainedVersions(open_store(store), model.function_name)
    options = dict(_option(item) for item in settings.train_args) | dict(extra or {})
    return run_training(model, LabelStudio(settings.label_studio_url, token), versions, project, base_weights=base,
                        epochs=epochs, options=options, log=log)  # fmt: skip


@contextlib.contextmanager
def _stdout_to_stderr() -> Iterator[None]:
    """File descriptor 1 onto 2 (libraries keep their own reference to sys.stdout)."""
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    try:
        yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


def run(args: argparse.Namespace) -> int:
    from lsfn.shared.label_studio import LabelStudioError
    from lsfn.shared.settings import in_process_settings
    from lsfn.shared.weights_store import StoreError

    if not args.store:
        print("lsfn: give --store (or WEIGHTS_STORE): where the new version is kept", file=sys.stderr)
        return 2
    try:
        settings = in_process_settings().model_copy(update={"label_studio_url": (args.label_studio or "").rstrip("/") or None})
        with _stdout_to_stderr():  # trainers print progress (ultralytics to stdout): stdout is the report's
            report = train_project(args.function, args.project, settings, store=args.store, token=args.token or "", base=args.base,
                                   epochs=args.epochs, extra=dict(args.train_arg),
                                   log=lambda line: print(f"lsfn train: {line}", file=sys.stderr, flush=True))  # fmt: skip
    except ValidationError:
        raise  # a variable of the function's settings: main() names it
    except (ValueError, argparse.ArgumentTypeError, LabelStudioError, StoreError, OSError) as exc:
        print(f"lsfn: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(report.to_dict(), indent=2, default=str))
    return 0
