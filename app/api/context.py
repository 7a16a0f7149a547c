"""The application context: every long-lived object of one app, typed, built once, reached one way.

`create_app` builds the parts the middleware needs at construction (settings, metrics, the lifecycle, admission
counts, the request memory budget); the lifespan adds the engine, the registry, the data plane and the rest and
publishes the whole as `app.state.context`. Routes take it as `ContextDep` (app/api/deps.py), the fast dispatcher
hands it to the same handlers (app/api/endpoints.py); nothing else reads `app.state`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from starlette.requests import HTTPConnection

if TYPE_CHECKING:
    from app.api.v2.statistics import InferenceStatistics
    from app.core.budget import MemoryBudget
    from app.core.control import ModelControl
    from app.core.engine import InferenceEngine
    from app.core.registry import ModelRegistry
    from app.core.service import InferenceService
    from app.core.validation import Limits
    from app.runtime.lifecycle import Lifecycle
    from app.runtime.memory import MallocTrimmer
    from app.runtime.metrics import Metrics
    from app.runtime.offload import Offload
    from app.settings import Settings


@dataclass(frozen=True)
class AppContext:
    """What one app serves with, from its lifespan's start to its end."""

    settings: Settings
    metrics: Metrics
    lifecycle: Lifecycle
    request_memory: MemoryBudget
    image_memory: MemoryBudget
    inference_memory: MemoryBudget
    engine: InferenceEngine
    registry: ModelRegistry
    service: InferenceService
    offload: Offload
    trimmer: MallocTrimmer
    v2_statistics: InferenceStatistics
    limits: Limits
    control: ModelControl


def context_of(connection: HTTPConnection) -> AppContext:
    """The context of the app serving this request."""
    context: AppContext = connection.app.state.context
    return context
