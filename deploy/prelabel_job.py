"""`lsfn prelabel ... cloudrun-job:FUNCTION`: start an execution of the pre-annotation job that
`lsfn deploy cloudrun FUNCTION --job` deployed, and follow it. Each of its tasks runs
`lsfn prelabel local:FUNCTION` with this run's options on its shard of the project and stores
its predictions itself; here the predictions stored in the project are counted until the
execution ends."""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from lsfn.deploy.cloudrun_spec import job_name
from lsfn.deploy.prelabel import Options, id_ranges

__all__ = ["execution_request", "run_job"]

FOLLOW_EVERY = 10.0  # seconds between two counts of the stored predictions


def execution_request(function: str, gcp_project: str, region: str, options: Options, workers: int | None) -> dict[str, Any]:
    """The RunJob request: the job's tasks get this run's options as their arguments (Label
    Studio's address and the API key come from the job's own variable and secret)."""
    args = [f"local:{function}", "--project", str(options.project), "--batch-size", str(options.batch_size)]
    if options.view is not None:
        args += ["--view", str(options.view)]
    if options.task_ids:
        args += ["--tasks", id_ranges(options.task_ids)]
    if options.only_unlabeled:
        args.append("--only-unlabeled")
    if options.prompt:
        args += ["--prompt", options.prompt]
    overrides: dict[str, Any] = {"container_overrides": [{"args": args}]}
    if workers:
        overrides["task_count"] = workers
    return {"name": f"projects/{gcp_project}/locations/{region}/jobs/{job_name(function)}", "overrides": overrides}


def run_job(args: argparse.Namespace, options: Options) -> int:
    function = args.target.partition(":")[2]
    if not function:
        raise ValueError("give cloudrun-job:FUNCTION")
    if not args.gcp_project or not args.region:
        raise ValueError("cloudrun-job: give --gcp-project and --region (or GOOGLE_CLOUD_PROJECT and GOOGLE_CLOUD_REGION)")
    request = execution_request(function, args.gcp_project, args.region, options, args.workers)
    if args.dry_run:
        print(json.dumps(request, indent=2))
        return 0
    from google.api_core import exceptions

    from lsfn.deploy.cloudrun_cli import client

    try:
        operation = client("JobsClient", None).run_job(request=request)
    except exceptions.GoogleAPICallError as exc:
        print(f"lsfn: Cloud Run refused to run {request['name']}: {exc.message} (deploy it with lsfn deploy cloudrun "
              f"{function} --job)", file=sys.stderr)  # fmt: skip
        return 2
    print(f"lsfn prelabel: started an execution of {request['name']}", file=sys.stderr)
    try:
        return follow(operation, _counter(args), sys.stderr)
    except KeyboardInterrupt:
        # The execution goes on without us: a second run now would predict the same shards.
        print(f"lsfn prelabel: no longer following; the execution keeps running (cancel it with gcloud run jobs "
              f"executions cancel, in {args.region}); run again only once it ended", file=sys.stderr)  # fmt: skip
        return 130


def _counter(args: argparse.Namespace) -> Any:
    """Predictions stored in the project now, or None without Label Studio's address."""
    if not args.label_studio or not args.token:
        return None
    from lsfn.shared.label_studio import LabelStudio

    ls = LabelStudio(args.label_studio, args.token)
    return lambda: sum(ls.model_versions(args.project).values())


def follow(operation: Any, count: Any, out: Any, every: float = FOLLOW_EVERY) -> int:
    """Wait for the execution, printing the predictions stored since it started; its exit status."""
    before = count() if count else None
    started = time.monotonic()
    while not operation.done():
        time.sleep(every)
        if count is not None:
            stored = count() - before
            elapsed = time.monotonic() - started
            print(f"lsfn prelabel: {stored} predictions stored in {elapsed:.0f} s ({stored / max(elapsed, 1e-6):.2f}/s)", file=out,
                  flush=True)
    stored = f", {count() - before} predictions stored" if count is not None else ""
    try:
        execution = operation.result()
    except Exception as exc:  # noqa: BLE001 - a failed execution ends its operation with an error
        print(f"lsfn prelabel: the execution failed: {getattr(exc, 'message', exc)}{stored}", file=out)
        return 1
    succeeded = int(getattr(execution, "succeeded_count", 0))
    failed, cancelled = int(getattr(execution, "failed_count", 0)), int(getattr(execution, "cancelled_count", 0))
    print(f"lsfn prelabel: execution {getattr(execution, 'name', '')} ended: {succeeded} tasks succeeded, {failed} failed, "
          f"{cancelled} cancelled{stored}", file=out)  # fmt: skip
    return 1 if failed or cancelled or succeeded < int(getattr(execution, "task_count", succeeded)) else 0
