"""The arguments of `lsfn prelabel` and running it."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from pydantic import ValidationError

__all__ = ["add_parser", "run", "shard_from"]


def shard_from(text: str | None) -> tuple[int, int]:
    """``--shard I/N``, else a Cloud Run Job task's CLOUD_RUN_TASK_INDEX/CLOUD_RUN_TASK_COUNT."""
    if text:
        index, _, count = text.partition("/")
    else:
        index, count = os.environ.get("CLOUD_RUN_TASK_INDEX", "0"), os.environ.get("CLOUD_RUN_TASK_COUNT", "1")
    try:
        shard = int(index), int(count)
    except ValueError:
        raise ValueError(f"--shard {text!r}: give INDEX/COUNT, e.g. 0/3") from None
    if not 0 <= shard[0] < shard[1]:
        raise ValueError(f"shard {shard[0]}/{shard[1]}: the index must be at least 0 and below the count")
    return shard


def add_parser(commands: Any) -> None:
    cmd = commands.add_parser("prelabel", help="pre-annotate a whole Label Studio project through a function")
    cmd.add_argument("target", metavar="FUNCTION_TARGET",
                     help="http(s)://... (a function, a front door, any ML backend), local:FUNCTION, modal:FUNCTION "
                          "or cloudrun-job:FUNCTION")  # fmt: skip
    cmd.add_argument("--label-studio", default=os.environ.get("LABEL_STUDIO_URL"), help="default: LABEL_STUDIO_URL")
    cmd.add_argument("--token", default=os.environ.get("LABEL_STUDIO_API_KEY"), help="default: LABEL_STUDIO_API_KEY")
    cmd.add_argument("--project", type=int, required=True)
    cmd.add_argument("--tasks", help="task ids and ranges: 1-200,250")
    cmd.add_argument("--view", type=int, help="a Data Manager tab's id: its filters choose the tasks")
    cmd.add_argument("--only-unlabeled", action="store_true", help="skip tasks that hold an annotation")
    cmd.add_argument("--prompt", help="the text a grounding function looks for (as typed into a TextArea)")
    cmd.add_argument("--batch-size", type=int, default=8, help="tasks per /predict (default 8)")
    cmd.add_argument("--concurrency", type=int, default=2, help="batches in flight at once (default 2)")
    cmd.add_argument("--basic-auth", metavar="USER:PASS", help="the function's Basic auth (default: BASIC_AUTH_USER/BASIC_AUTH_PASS)")
    cmd.add_argument("--shard", metavar="I/N", help="predict only this part of the tasks (default: a Cloud Run Job "
                                                   "task's CLOUD_RUN_TASK_INDEX/CLOUD_RUN_TASK_COUNT)")  # fmt: skip
    cmd.add_argument("--max-containers", type=int, help="modal: GPU containers at most for this run")
    cmd.add_argument("--modal-environment", help="modal: the environment the app was deployed in")
    cmd.add_argument("--gcp-project", default=os.environ.get("GOOGLE_CLOUD_PROJECT"), help="cloudrun-job: the project")
    cmd.add_argument("--region", default=os.environ.get("GOOGLE_CLOUD_REGION"), help="cloudrun-job: the region")
    cmd.add_argument("--workers", type=int, help="cloudrun-job: tasks of this execution (default: the job's); how many run "
                                                 "at once is the job's --workers, set when it was deployed")
    cmd.add_argument("--dry-run", action="store_true", help="cloudrun-job: print the execution's request; start nothing")


def _basic_auth(args: argparse.Namespace) -> tuple[str, str] | None:
    if args.basic_auth:
        user, sep, password = args.basic_auth.partition(":")
        if not sep:
            raise ValueError("--basic-auth: give USER:PASS")
        return user, password
    user, password = os.environ.get("BASIC_AUTH_USER"), os.environ.get("BASIC_AUTH_PASS")
    return (user, password) if user and password else None


def run(args: argparse.Namespace) -> int:
    from lsfn.shared.label_studio import LabelStudio, LabelStudioError
    from lsfn.deploy.prelabel import Options, parse_task_ids, prelabel
    from lsfn.deploy.prelabel_targets import TargetError, target_from

    try:
        options = Options(project=args.project, view=args.view, only_unlabeled=args.only_unlabeled,
                          task_ids=parse_task_ids(args.tasks) if args.tasks else None, batch_size=args.batch_size,
                          prompt=args.prompt, shard=shard_from(args.shard))  # fmt: skip
        if args.batch_size < 1 or args.concurrency < 1:
            raise ValueError("--batch-size and --concurrency must be at least 1")
        if args.target.startswith("cloudrun-job:"):
            from lsfn.deploy.prelabel_job import run_job

            return run_job(args, options)
        if args.dry_run:
            raise ValueError("--dry-run prints a Cloud Run Job execution's request: it goes with cloudrun-job:FUNCTION")
        if not args.label_studio or not args.token:
            raise ValueError("give --label-studio and --token (or LABEL_STUDIO_URL and LABEL_STUDIO_API_KEY)")
        ls = LabelStudio(args.label_studio, args.token)
        target = target_from(args.target, args.concurrency, _basic_auth(args), args.max_containers, args.modal_environment)
        summary = prelabel(ls, target, options)
    except ValidationError:  # a variable of the function's settings: main() names it
        raise
    except (ValueError, LabelStudioError, TargetError) as exc:
        print(f"lsfn: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("lsfn prelabel: interrupted; what finished is stored: run the same command again to continue", file=sys.stderr)
        return 130
    rate = (summary.done + summary.failed) / summary.seconds if summary.seconds else 0.0
    print(f"lsfn prelabel: {summary.selected} tasks selected: {summary.done} predicted ({summary.stored} predictions stored), "
          f"{summary.failed} failed, {summary.skipped} skipped (already predicted) in {summary.seconds:.1f} s "
          f"({rate:.2f} tasks/s)")  # fmt: skip
    return 1 if summary.failed else 0
