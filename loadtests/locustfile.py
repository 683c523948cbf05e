"""Locust entry point for slm-gateway (or any OpenAI-compatible server).

    locust -f loadtests/locustfile.py --host http://127.0.0.1:8000
    locust -f loadtests/locustfile.py --host ... StreamChatUser      # one traffic kind
    LOADTEST_SHAPE=ramp locust -f loadtests/locustfile.py --host ... --headless

User classes live in loadtests/users/; see docs/loadtests.md for the settings.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

# Locust puts only this file's folder on sys.path; the user classes import as ``loadtests.*``.
_REPO_ROOT = str(Path(__file__).resolve().parent.parent)
if _REPO_ROOT not in sys.path:
    sys.path.insert(0, _REPO_ROOT)

from loadtests.users.chat import ChatUser  # noqa: E402
from loadtests.users.completions import CompletionsUser  # noqa: E402
from loadtests.users.mixed import MixedModelsUser  # noqa: E402
from loadtests.users.stream import StreamChatUser  # noqa: E402

__all__ = ["ChatUser", "CompletionsUser", "MixedModelsUser", "StreamChatUser"]

# Locust runs any LoadTestShape it finds in this module, so the ramp is only imported on request.
if os.environ.get("LOADTEST_SHAPE", "").lower() == "ramp":
    from loadtests.shapes import RampShape

    __all__ += ["RampShape"]
