"""Subprocess entry for timing: ``python -m hwprune.runtime.worker`` < request.json > result.json.

Reads one JSON request (see ``hwprune.runtime.bench._request``) on stdin and prints one JSON line on stdout:
``{"results": [[stats, ...] per model]}``, or ``{"error": {"type": ..., "message": ...}}`` with exit
code 3 for a ``HwpruneError``. Any other exception exits non-zero with its traceback on stderr.
"""

from __future__ import annotations

import json
import sys

from hwprune.base.errors import HwpruneError
from hwprune.runtime.bench import run_request

__all__ = ["main"]


def main() -> int:
    """Run the request from stdin; return the process exit code."""
    req = json.loads(sys.stdin.read())
    try:
        results = run_request(req)
    except HwpruneError as exc:
        print(json.dumps({"error": {"type": type(exc).__name__, "message": str(exc)}}))
        return 3
    print(json.dumps({"results": results}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
