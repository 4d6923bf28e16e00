"""A real Label Studio (PyPI `label-studio` 1.23) for end-to-end tests: installed once in its own
cached virtual environment (scripts/label-studio-venv), started on a loopback port with a fresh
data directory, a user and a known legacy token (PROTOCOL.md §8)."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import urllib3

from tests.servers import free_port, stop_group

__all__ = ["LEGACY_TOKEN", "LabelStudioServer"]

ROOT = Path(__file__).parent.parent
LEGACY_TOKEN = "0123456789abcdef0123456789abcdef01234567"
USER, PASSWORD = "admin@example.com", "Passw0rd!x"


def label_studio_venv() -> Path:
    done = subprocess.run([str(ROOT / "scripts" / "label-studio-venv")], capture_output=True, text=True, timeout=1800)
    if done.returncode != 0:
        raise RuntimeError(f"installing Label Studio failed:\n{done.stderr}")
    return Path(done.stdout.strip().splitlines()[-1])


class LabelStudioServer:
    def __init__(self, data_dir: Path) -> None:
        venv = label_studio_venv()
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = data_dir / "label-studio.log"
        data_dir.mkdir(parents=True, exist_ok=True)
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith(("LABEL_STUDIO", "DJANGO"))},
            "LABEL_STUDIO_BASE_DATA_DIR": str(data_dir / "data"),
            # Backends and webhooks on loopback (refused by default: PROTOCOL.md §0.1).
            "ML_BLOCK_LOCAL_IP": "false",
            "SSRF_PROTECTION_ENABLED": "false",
            "LABEL_STUDIO_HOST": self.url,
        }
        command = [
            str(venv / "bin" / "label-studio"), "start", "--no-browser", "--internal-host", "127.0.0.1",
            "-p", str(self.port), "--username", USER, "--password", PASSWORD,
            "--user-token", LEGACY_TOKEN, "--enable-legacy-api-token",
        ]  # fmt: skip
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen(command, env=env, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True)
        self.http = urllib3.PoolManager(retries=False, timeout=urllib3.Timeout(connect=2, read=120))

    def wait_ready(self, timeout: float = 300) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"Label Studio exited: {self.log_path.read_text()[-3000:]}")
            try:
                if self.http.request("GET", self.url + "/health", timeout=2).status == 200:
                    return
            except urllib3.exceptions.HTTPError:
                pass
            time.sleep(0.5)
        raise TimeoutError(f"Label Studio did not start: {self.log_path.read_text()[-3000:]}")

    def api(self, method: str, path: str, body: object = None, **kwargs: object) -> urllib3.BaseHTTPResponse:
        headers = {"Authorization": f"Token {LEGACY_TOKEN}"}
        if body is not None:
            kwargs["json"] = body
        return self.http.request(method, self.url + path, headers=headers, **kwargs)  # type: ignore[arg-type]

    def close(self) -> None:
        stop_group(self.proc)
        self._log.close()
