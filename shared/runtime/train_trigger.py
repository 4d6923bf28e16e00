"""Starting training jobs from webhooks: one job per project at a time, never in a prediction slot.

Label Studio's "Start Training" (START_TRAINING on /webhook) starts a job for the project, or,
while one runs, answers with the running job's id (a second press is coalesced, not queued).
With TRAIN_EVERY_N_ANNOTATIONS, every N annotation events of a project start one too (counted
by this instance). A job here is `lsfn train` in a child process: its own memory and threads,
its output in this function's log under the job's id, and the answer to Label Studio at once.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

from lsfn.shared.runtime.logs import logger

__all__ = ["Job", "TrainBusy", "TrainTrigger", "local_launcher", "remote_launcher"]


@dataclass
class Job:
    id: str
    project: int
    started: float = field(default_factory=time.monotonic)
    done: threading.Event = field(default_factory=threading.Event)
    returncode: int | None = None


# A launcher starts a job for a project and returns at once; it sets job.done when the job ends.
Launcher = Callable[[Job], None]


def local_launcher(target: str, extra_args: tuple[str, ...] = ()) -> Launcher:
    """Jobs as `lsfn train TARGET --project N` child processes of this one (same environment:
    LABEL_STUDIO_URL, LABEL_STUDIO_API_KEY, WEIGHTS_STORE, MODEL_ROOT, ...)."""

    def launch(job: Job) -> None:
        command = [sys.executable, "-m", "lsfn.shared.cli", "train", target, "--project", str(job.project), *extra_args]
        env = {**os.environ, "LSFN_TRAIN_JOB": job.id}
        process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

        def follow() -> None:
            assert process.stdout is not None
            for line in process.stdout:
                logger.info("training", extra={"job": job.id, "project": job.project, "line": line.rstrip()[:2000]})
            job.returncode = process.wait()
            level = 20 if job.returncode == 0 else 40
            logger.log(level, "training job ended", extra={"job": job.id, "project": job.project, "returncode": job.returncode,
                                                            "seconds": round(time.monotonic() - job.started, 1)})  # fmt: skip
            job.done.set()

        threading.Thread(target=follow, name=f"lsfn-train-{job.id[:8]}", daemon=True).start()

    return launch


def remote_launcher(start: Callable[[int, str], Callable[[], object]], where: str) -> Launcher:
    """Jobs on a platform: ``start(project, job id)`` starts one (a Modal function's spawn, a
    Cloud Run Job's execution) and returns what waits for its end; a thread waits, and logs it."""

    def launch(job: Job) -> None:
        wait = start(job.project, job.id)

        def follow() -> None:
            try:
                wait()
                job.returncode = 0
                logger.info("training job ended", extra={"job": job.id, "project": job.project, "where": where,
                                                         "seconds": round(time.monotonic() - job.started, 1)})  # fmt: skip
            except Exception as exc:  # noqa: BLE001 - the job's own log has the details
                job.returncode = 1
                logger.error("training job failed", extra={"job": job.id, "project": job.project, "where": where,
                                                          "detail": f"{type(exc).__name__}: {str(exc)[:500]}"})  # fmt: skip
            finally:
                job.done.set()

        threading.Thread(target=follow, name=f"lsfn-train-{job.id[:8]}", daemon=True).start()

    return launch


class TrainBusy(Exception):
    """Jobs of other projects take every place (``max_running``): this one is not started."""

    def __init__(self, running: Job) -> None:
        super().__init__(f"a training job of project {running.project} is running: start this one when it ends")
        self.running = running


class TrainTrigger:
    def __init__(self, launch: Launcher, every_n_annotations: int = 0, max_running: int = 1) -> None:
        self._launch = launch
        self.every_n = every_n_annotations
        # Jobs at once, over all projects: each takes a GPU's worth of memory (a webhook per
        # project id must not start a job per id).
        self.max_running = max_running
        self._running: dict[int, Job] = {}
        self._counts: dict[int, int] = {}
        self._lock = threading.Lock()

    def start(self, project: int) -> tuple[Job, bool]:
        """(the project's job, whether it started now): a running job is answered, not doubled;
        TrainBusy when other projects' jobs take every place."""
        with self._lock:
            running = self._running.get(project)
            if running is not None and not running.done.is_set():
                return running, False
            others = [job for job in self._running.values() if not job.done.is_set()]
            if len(others) >= self.max_running:
                raise TrainBusy(others[0])
            job = Job(uuid.uuid4().hex, project)
            self._running[project] = job
            self._counts[project] = 0
        logger.info("training job started", extra={"job": job.id, "project": project})
        try:
            self._launch(job)
        except Exception:
            with self._lock:
                self._running.pop(project, None)
            job.done.set()
            raise
        return job, True

    def annotated(self, project: int) -> tuple[Job, bool] | None:
        """Count an annotation event; the job it starts (or the running one) at every Nth."""
        if self.every_n <= 0:
            return None
        with self._lock:
            count = self._counts.get(project, 0) + 1
            self._counts[project] = count
        if count < self.every_n:
            return None
        try:
            return self.start(project)
        except TrainBusy:
            return None  # counted on: the next annotation tries again

    def job(self, project: int) -> Job | None:
        with self._lock:
            return self._running.get(project)
