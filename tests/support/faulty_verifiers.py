"""A code verifier that fails on purpose, behind the station's CodeVerifier port: the containment path."""

from __future__ import annotations

from station.domain.model import CodeStatus, CodeVerdict


class RaisingOnPayload:
    """A ``CodeVerifier`` that raises on one payload and leaves every other one to the next verifier."""

    name = "raising-on-one-payload"

    def __init__(self, payload: bytes) -> None:
        self.payload, self.raised = payload, 0

    def verify(self, payload: bytes, now_wall: float) -> CodeVerdict:
        if payload == self.payload:
            self.raised += 1
            raise TypeError("unhashable type: 'list'")
        return CodeVerdict(CodeStatus.INVALID, None, "unknown_format", self.name)
