"""Driving tritonclient from a separate process (its protos cannot share ours' process).

`run_client(script, **args)` runs `script` with `grpcclient`, `np`, `ARGS` and an
`OUT` dict in scope and returns `OUT` after the script ends.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from typing import Any

from tests.helpers.procs import ROOT

_PRELUDE = """
import json, sys
import numpy as np
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException
ARGS = json.loads(sys.argv[1])
OUT = {}

def status(call):
    try:
        call()
    except InferenceServerException as exc:
        return [exc.status(), exc.message()]
    return ["OK", ""]
"""
_MARK = "@@liveml-result@@"


def run_client(script: str, timeout: float = 240, **args: Any) -> dict[str, Any]:
    code = _PRELUDE + textwrap.dedent(script) + f"\nprint({_MARK!r} + json.dumps(OUT))\n"
    done = subprocess.run(
        [sys.executable, "-c", code, json.dumps(args)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert done.returncode == 0, f"client failed:\n{done.stdout}\n{done.stderr}"
    line = next(line for line in done.stdout.splitlines() if line.startswith(_MARK))
    result: dict[str, Any] = json.loads(line[len(_MARK) :])
    return result
