"""``python -m bench.quiet MODULE ARGS...``: run ``python -m MODULE ARGS...`` with log records
below WARNING dropped, so no system under test pays for per-task INFO lines (several peers log
every task by default; streamworker runs with LOG_LEVEL=warning). ``logging.disable`` is not
undone by the frameworks' own ``dictConfig``."""

from __future__ import annotations

import logging
import runpy
import sys

if __name__ == "__main__":
    logging.disable(logging.INFO)
    module = sys.argv[1]
    sys.argv = [module, *sys.argv[2:]]
    runpy.run_module(module, run_name="__main__", alter_sys=True)
