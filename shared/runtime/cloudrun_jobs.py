"""Training jobs as executions of a Cloud Run Job: what a front door on Cloud Run starts when
Label Studio's "Start Training" arrives (TRAIN_JOB names the job `lsfn deploy cloudrun --train-job`
made: the function's GPU image running `lsfn train`).

The Admin API is called over REST with the service account's access token (google-auth, which
the front door's image holds for its ID tokens), not through google-cloud-run: the front door
stays small. An execution runs `lsfn train FUNCTION --project N`, with the webhook's job id in
LSFN_TRAIN_JOB so its log says which job it is.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import urllib3

__all__ = ["CLOUD_RUN_API", "JobError", "cloudrun_job_starter"]

CLOUD_RUN_API = "https://run.googleapis.com"
POLL_SECONDS = 15.0
POLL_ATTEMPTS = 8  # failed polls in a row before the job is taken to be lost


class JobError(RuntimeError):
    """Cloud Run refused to run the job, or its execution failed."""


def _access_token() -> str:
    # google-auth is imported here: only a front door that starts training jobs needs it.
    import google.auth
    from google.auth.transport.requests import Request

    credentials, _ = google.auth.default(scopes=["https://www.googleapis.com/auth/cloud-platform"])
    credentials.refresh(Request())
    return str(credentials.token)


def _call(http: urllib3.PoolManager, method: str, url: str, body: Any = None) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {_access_token()}", "Content-Type": "application/json"}
    response = http.request(method, url, body=json.dumps(body).encode() if body is not None else None, headers=headers,
                            timeout=urllib3.Timeout(connect=10, read=60), retries=False)  # fmt: skip
    try:
        answer = json.loads(response.data or b"{}")
    except ValueError:
        answer = {}
    if response.status >= 400:
        message = (answer.get("error") or {}).get("message") if isinstance(answer, dict) else None
        raise JobError(f"Cloud Run answered {response.status} to {method} {url}: {message or response.data[:300]!r}")
    return answer


def cloudrun_job_starter(job: str, function: str, api: str = CLOUD_RUN_API,
                         poll: float = POLL_SECONDS) -> Callable[[int, str], Callable[[], object]]:  # fmt: skip
    """``start(project, job id)`` for ``remote_launcher``: runs an execution of ``job``
    (projects/P/locations/R/jobs/NAME) training ``function`` on the project; what it returns
    waits for the execution's end (its long-running operation) and raises when it failed."""
    http = urllib3.PoolManager(maxsize=4)
    base = api.rstrip("/")

    def start(project: int, job_id: str) -> Callable[[], object]:
        body = {"overrides": {"containerOverrides": [{
            "args": ["train", function, "--project", str(project)],
            "env": [{"name": "LSFN_TRAIN_JOB", "value": job_id}],
        }]}}  # fmt: skip
        operation = _call(http, "POST", f"{base}/v2/{job}:run", body)

        def wait() -> object:
            current, failures = operation, 0
            while not current.get("done"):
                time.sleep(poll)
                try:
                    current = _call(http, "GET", f"{base}/v2/{current['name']}")
                    failures = 0
                except (JobError, urllib3.exceptions.HTTPError, OSError):
                    failures += 1  # a poll that failed says nothing of the execution: ask again
                    if failures >= POLL_ATTEMPTS:
                        raise
            if current.get("error"):
                raise JobError(f"the execution of {job} failed: {current['error'].get('message')}")
            return current.get("response")

        return wait

    return start
