"""The operator's memory of each MoEDeployment: its latest body (from watch events) and its own status.

kopf's watch feeds `track`/`forget` (an on.event handler, which needs no finalizer); the reconcile
handler and the refresh loop both read and write an object's `ObjectState` under its lock, so neither
overwrites the other's status with a stale copy.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any


@dataclass
class ObjectState:
    """One CR's status as the operator last wrote it (conditions, groups with history)."""
    conditions: list[dict[str, Any]]
    groups: list[dict[str, Any]]
    lock: threading.Lock = field(default_factory=threading.Lock)
    last_refresh: float | None = None  # monotonic seconds of the last refresh pass
    reshaping: str | None = None  # why a retired layout's groups are still kept (reconcile decides)

    def as_status(self) -> dict[str, Any]:
        return {"conditions": self.conditions, "groups": self.groups}


class Tracked:
    """Every watched MoEDeployment by (namespace, name): latest body and ObjectState."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._bodies: dict[tuple[str, str], dict[str, Any]] = {}
        self._states: dict[tuple[str, str], ObjectState] = {}

    def track(self, body: dict[str, Any]) -> None:
        meta = body["metadata"]
        with self._lock:
            self._bodies[(meta["namespace"], meta["name"])] = body

    def forget(self, namespace: str, name: str) -> None:
        with self._lock:
            self._bodies.pop((namespace, name), None)
            self._states.pop((namespace, name), None)

    def bodies(self) -> list[dict[str, Any]]:
        with self._lock:
            return list(self._bodies.values())

    def state(self, namespace: str, name: str, status: dict[str, Any]) -> ObjectState:
        """This CR's ObjectState, seeded from `.status` on first sight (so a restart keeps the history)."""
        with self._lock:
            key = (namespace, name)
            if key not in self._states:
                self._states[key] = ObjectState(conditions=list(status.get("conditions") or []),
                                                groups=list(status.get("groups") or []))
            return self._states[key]
