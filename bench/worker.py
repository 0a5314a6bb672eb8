"""Running one timed measurement in a fresh process, as a user's re-run would be."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any


def run_worker(script: str, kind: str, *args: Any) -> dict[str, float]:
    """Run ``python SCRIPT worker KIND ARGS-as-JSON``; the JSON of its last output line."""
    command = [sys.executable, script, "worker", kind, json.dumps(args)]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode:
        raise RuntimeError(f"worker {kind} failed:\n{done.stderr}")
    result: dict[str, float] = json.loads(done.stdout.strip().splitlines()[-1])
    return result
