import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def cli(tmp_path):
    """Run `raymlops ...` as a user would, in a fresh process, with storage under tmp_path."""

    def run(*args: str, timeout: float = 300, env: dict | None = None) -> subprocess.CompletedProcess:
        full_env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}  # a local Ray unless env says
        full_env |= {"RAYMLOPS_STORAGE": str(tmp_path / "store")} | (env or {})
        return subprocess.run(
            [sys.executable, "-m", "raymlops.cli", *args],
            cwd=ROOT,
            env=full_env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    return run
