"""The process's log configuration (snnrm/obs/logging.py), run in a child process: it is global state."""

from __future__ import annotations

import subprocess
import sys

CHILD = """
import logging, structlog
from snnrm.obs.logging import MalformedRequestFilter, configure_logging
configure_logging("console")
assert any(isinstance(f, MalformedRequestFilter) for f in logging.getLogger("aiohttp.server").filters)
def handler(token):
    raise RuntimeError("boom")
try:
    handler("s3cr3t-bearer-token")
except RuntimeError:
    structlog.get_logger("t").exception("handler failed")
    logging.getLogger("aiohttp.server").exception("Unhandled exception")
"""


def test_tracebacks_name_the_error_but_print_no_local_variables() -> None:
    """A traceback is worth its frames; the values of their locals (bodies, bearer tokens) stay out of the log."""
    out = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True, timeout=60, check=False)
    assert out.returncode == 0, out.stderr
    assert out.stderr.count("RuntimeError: boom") == 2  # structlog's and a stdlib logger's
    assert "s3cr3t-bearer-token" not in out.stderr
