"""Building and running the project's images without a Docker daemon: buildah builds, podman
runs (runc), storage in a cache folder of our own, and a local stand-in for
``debian:bookworm-slim`` made by debootstrap, so no registry is reached.

Layers are cached in that storage between runs (buildah ``--layers`` keys each step by its
instruction and the files it copies), so only what changed is rebuilt.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["BASE_IMAGE", "BuildFailed", "Container", "Containers", "unavailable"]

BASE_IMAGE = "docker.io/library/debian:bookworm-slim"
TOOLS = ("buildah", "podman", "debootstrap", "runc")
CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "lsfn" / "containers"
# How the stand-in base is made; a change to it makes a new one.
BASE_RECIPE = "debootstrap --variant=minbase bookworm; apt caches and /dev removed; CMD bash"


def unavailable() -> str | None:
    """Why images cannot be built and run here, or None."""
    missing = [tool for tool in TOOLS if shutil.which(tool) is None]
    if missing:
        return f"{', '.join(missing)} not installed (Debian: apt-get install -y buildah podman debootstrap runc)"
    if os.geteuid() != 0:
        return "building images with buildah's chroot isolation needs root"
    return None


def _debian_mirror() -> str:
    """The Debian mirror this machine's apt uses (the stand-in base installs from it too)."""
    sources = Path("/etc/apt/sources.list.d/debian.sources")
    if sources.is_file():
        for line in sources.read_text().splitlines():
            if line.startswith("URIs:"):
                return line.split()[1]
    return "http://deb.debian.org/debian"


class BuildFailed(RuntimeError):
    """A build that failed; its output is the message."""


@dataclass
class Container:
    """A running container: its id, the port it serves on, and how to read its log."""

    id: str
    port: int
    engine: Containers

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def logs(self) -> str:
        done = self.engine.podman("logs", self.id, check=False)
        return done.stdout + done.stderr

    def inspect(self, template: str) -> str:
        return self.engine.podman("inspect", "--format", template, self.id).stdout.strip()

    def exec(self, *command: str) -> subprocess.CompletedProcess[str]:
        return self.engine.podman("exec", self.id, *command, check=False)

    def stop(self, timeout: int = 30) -> int:
        """SIGTERM, then SIGKILL after ``timeout`` s; the exit code (137: it had to be killed)."""
        self.engine.podman("stop", "--time", str(timeout), self.id)
        return int(self.inspect("{{.State.ExitCode}}"))

    def request(self, method: str, path: str, body: Any = None) -> tuple[int, dict]:
        """An HTTP call made from inside the container (works with ``--network none``): its
        status and JSON body."""
        script = (
            "import json, sys, urllib.request, urllib.error\n"
            "data = sys.stdin.buffer.read() or None\n"
            f"req = urllib.request.Request('http://127.0.0.1:{self.port}{path}', data=data, method='{method}', "
            "headers={'Content-Type': 'application/json'})\n"
            "try:\n    r = urllib.request.urlopen(req, timeout=120)\n"
            "except urllib.error.HTTPError as e:\n    r = e\n"
            "print(r.status); print(r.read().decode())\n"
        )
        done = self.engine._run("podman", "--runtime", "runc", "exec", "-i", self.id, "python", "-c", script,
                                input=json.dumps(body) if body is not None else "", check=False)  # fmt: skip
        if done.returncode != 0:
            raise ConnectionError(done.stderr[-2000:])
        status, _, text = done.stdout.partition("\n")
        return int(status), json.loads(text)

    def wait_health(self, timeout: float, ready: Sequence[str] = ("UP",)) -> dict:
        """/health's body once its status is one of ``ready`` (or FAILED); fails with the
        container's log when it does not get there."""
        end = time.monotonic() + timeout
        body: dict = {}
        while time.monotonic() < end:
            try:
                body = self.request("GET", "/health")[1]
            except (ConnectionError, ValueError):  # not listening yet
                body = {}
            if body.get("status") in (*ready, "FAILED"):
                return body
            if self.inspect("{{.State.Running}}") != "true":
                break
            time.sleep(0.25)
        raise AssertionError(f"{self.id[:12]} never answered /health {ready} (last: {body}); log:\n{self.logs()[-4000:]}")


class Containers:
    """buildah and podman on storage under ``root``."""

    def __init__(self, root: Path = CACHE) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        conf = root / "storage.conf"
        conf.write_text(
            f'[storage]\ndriver = "overlay"\ngraphroot = "{root / "storage"}"\nrunroot = "{root / "run"}"\n'
        )
        self.env = {**os.environ, "CONTAINERS_STORAGE_CONF": str(conf)}

    def _run(self, *command: str, check: bool = True, timeout: float = 1800, **kwargs) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(command, env=self.env, capture_output=True, text=True, timeout=timeout, **kwargs)
        if check and done.returncode != 0:
            raise RuntimeError(f"{' '.join(command[:3])} ... failed ({done.returncode}):\n{(done.stdout + done.stderr)[-6000:]}")
        return done

    def podman(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self._run("podman", "--runtime", "runc", *args, check=check)

    def has_image(self, name: str) -> bool:
        return self.podman("image", "exists", name, check=False).returncode == 0

    def ensure_base(self) -> None:
        """``debian:bookworm-slim`` from debootstrap, made once per recipe (30-50 s)."""
        marker = self.root / f"base-{hashlib.sha256(BASE_RECIPE.encode()).hexdigest()[:12]}"
        if marker.exists() and self.has_image(BASE_IMAGE):
            return
        with tempfile.TemporaryDirectory(dir=self.root) as tmp:
            rootfs = Path(tmp) / "rootfs"
            self._run("debootstrap", "--variant=minbase", "bookworm", str(rootfs), _debian_mirror())
            for cache in ("var/cache/apt/archives", "var/lib/apt/lists"):
                for item in (rootfs / cache).glob("*"):
                    if item.is_file():
                        item.unlink()
            for node in (rootfs / "dev").iterdir():
                node.unlink() if not node.is_dir() or node.is_symlink() else shutil.rmtree(node)
            tar = subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE)
            self._run("podman", "import", "--change", 'CMD ["bash"]', "-", BASE_IMAGE, stdin=tar.stdout)
            tar.wait()
        marker.touch()

    def build(
        self,
        context: Path,
        tag: str,
        target: str,
        build_args: Mapping[str, str] = {},
        secrets: Mapping[str, Path] = {},
        volumes: Sequence[Path] = (),
        dockerfile: Path | None = None,
        check: bool = True,
    ) -> float:
        """``buildah bud`` one target of the Dockerfile; seconds it took. ``check=False``:
        a failed build raises BuildFailed with its output."""
        command = ["buildah", "bud", "--isolation", "chroot", "--pull=never", "--network", "host", "--layers",
                   *(["--target", target] if target else []), "-t", tag, "-f", str(dockerfile or context / "Dockerfile")]  # fmt: skip
        for key, value in build_args.items():
            command += ["--build-arg", f"{key}={value}"]
        for key, path in secrets.items():
            command += ["--secret", f"id={key},src={path}"]
        for path in volumes:
            command += ["--volume", f"{path}:{path}:ro"]
        started = time.monotonic()
        done = self._run(*command, str(context), check=check)
        if done.returncode != 0:
            raise BuildFailed(done.stdout + done.stderr)
        return time.monotonic() - started

    def prune(self) -> None:
        """Drop images nothing is built on any more (earlier versions of changed steps); the
        layers the tagged images stand on stay, and with them the cache."""
        self.podman("image", "prune", "--force", check=False)

    def size(self, image: str) -> int:
        return int(self.podman("image", "inspect", "--format", "{{.Size}}", image).stdout.strip())

    def labels(self, image: str) -> dict[str, str]:
        return json.loads(self.podman("image", "inspect", "--format", "{{json .Labels}}", image).stdout) or {}

    @staticmethod
    def _run_options(network: str, env: Mapping[str, str], init: bool = True) -> list[str]:
        # runc refuses podman's default limits here: the host's own, explicitly.
        limit = subprocess.run(["bash", "-c", "ulimit -Hn"], capture_output=True, text=True).stdout.strip()
        options = ["--init"] if init else []
        options += ["--network", network, "--ulimit", f"nofile={limit}:{limit}", "--ulimit", "nproc=4096:4096"]
        for key, value in env.items():
            options += ["-e", f"{key}={value}"]
        return options

    def run_once(self, image: str, env: Mapping[str, str] = {}, network: str = "none") -> subprocess.CompletedProcess[str]:
        """Run ``image``'s command to its end; its exit status and output."""
        return self.podman("run", "--rm", *self._run_options(network, env), image, check=False)

    @contextmanager
    def running(self, image: str, port: int, env: Mapping[str, str] = {}, network: str = "host",
                args: Sequence[str] = (), init: bool = True) -> Iterator[Container]:  # fmt: skip
        """A container of ``image`` serving on ``port`` (host networking: port publishing would
        rewrite the host's firewall; ``network="none"`` for a container that must reach
        nothing: it is then reached through ``podman exec``). Stopped and removed afterwards."""
        command = self._run_options(network, {"PORT": str(port), **env}, init)
        container_id = self.podman("run", "-d", *command, *args, image).stdout.strip()
        try:
            yield Container(container_id, port, self)
        finally:
            self.podman("stop", "--time", "10", container_id, check=False)
            self.podman("rm", "-f", container_id, check=False)
