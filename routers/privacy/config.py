"""Policy configuration of the privacy guard a ``rules`` model may run before its rules
(docs/rules-and-privacy.md)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from gateway.core.config import StrictModel

PrivacyDetector = Literal["email", "phone", "payment_card", "iban", "national_id", "secret"]
PrivacyAction = Literal["local_only", "redact", "block"]


class PrivacyPolicy(StrictModel):
    """What to do when a detector fires anywhere in the request (see docs/rules-and-privacy.md)."""

    detectors: tuple[PrivacyDetector, ...] = (
        "email", "phone", "payment_card", "iban", "national_id", "secret",
    )
    action: PrivacyAction = "local_only"
    per_detector: dict[PrivacyDetector, PrivacyAction] = Field(default_factory=dict)
    # Backend that local_only reroutes to (default: the first local, ready backend).
    local_backend: str | None = None
