"""The environment for a gateway started as a real process by a test.

Owns ``gateway_env``: the test runner's environment without any gateway setting it may
carry (so a developer's own AUTH_TOKEN or REDIS_URL never leaks into a test), plus the given
values. Test processes opt out of the one-per-machine lock unless a test is about it.
"""

import os
from pathlib import Path

from server.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
_SETTINGS = {name.upper() for name in Settings.model_fields}


def gateway_env(**values: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _SETTINGS}
    env.update(SINGLE_INSTANCE="off", PYTHONPATH=str(ROOT))
    env.update(PACING_MIN_GAP_MS="0", PACING_JITTER_MS="0")  # test_pacing paces on purpose
    env.update(values)
    return env
