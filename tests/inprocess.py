"""An in-process gateway (uvicorn in a thread) whose accounting records the test can inspect."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import uvicorn
import yaml

from gateway.accounting.journal import Settlement
from gateway.app import build_app
from gateway.core.record import RequestRecord
from gateway.settings import GatewaySettings
from tests.gateway_process import free_port


class RecordingSink:
    """Accounting sink keeping records in memory (the real stores are tested on their own)."""

    def __init__(self) -> None:
        self.records: list[RequestRecord] = []

    async def start(self) -> None:
        return None

    async def submit(self, record: RequestRecord, settle: Settlement | None = None) -> None:
        self.records.append(record)

    def settled(self, request_id: str) -> None:
        return None

    async def close(self) -> None:
        return None


class NoMetrics:
    def observe(self, record: RequestRecord) -> None:
        return None

    def render(self) -> tuple[bytes, str]:
        return b"", "text/plain"


class InProcessGateway:
    def __init__(self, policy: dict[str, Any], workdir: Path) -> None:
        policy_path = workdir / "policy.yaml"
        policy_path.write_text(yaml.safe_dump(policy))
        self.sink = RecordingSink()
        self.app = build_app(GatewaySettings(policy_path=policy_path, data_dir=workdir / "data"),
                             accounting=self.sink, metrics=NoMetrics())
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._server = uvicorn.Server(uvicorn.Config(self.app, host="127.0.0.1", port=self.port, log_level="warning"))
        self._thread = threading.Thread(target=self._server.run, daemon=True)

    def start(self) -> InProcessGateway:
        self._thread.start()
        deadline = time.monotonic() + 180
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("in-process gateway did not start")
            time.sleep(0.05)
        return self

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=60)

    @property
    def state(self) -> Any:
        return self.app.state.gateway

    def wait_records(self, count: int, timeout: float = 10.0) -> list[RequestRecord]:
        deadline = time.monotonic() + timeout
        while len(self.sink.records) < count and time.monotonic() < deadline:
            time.sleep(0.05)
        return self.sink.records
