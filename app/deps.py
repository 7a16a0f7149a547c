"""Typed dependencies: the app-wide objects the lifespan creates, handed to routes by FastAPI.

They are `async def` on purpose: FastAPI runs a plain `def` dependency in the thread pool, a thread hop per
dependency per request for what is an attribute lookup.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from app.inference import InferenceEngine
from app.lifecycle import Lifecycle
from app.metrics import Metrics
from app.registry import ModelRegistry
from app.service import InferenceService
from app.settings import Settings


async def get_settings(request: Request) -> Settings:
    return request.app.state.settings  # type: ignore[no-any-return]


async def get_registry(request: Request) -> ModelRegistry:
    return request.app.state.registry  # type: ignore[no-any-return]


async def get_service(request: Request) -> InferenceService:
    return request.app.state.service  # type: ignore[no-any-return]


async def get_metrics(request: Request) -> Metrics:
    return request.app.state.metrics  # type: ignore[no-any-return]


async def get_engine(request: Request) -> InferenceEngine:
    return request.app.state.engine  # type: ignore[no-any-return]


async def get_lifecycle(request: Request) -> Lifecycle:
    return request.app.state.lifecycle  # type: ignore[no-any-return]


SettingsDep = Annotated[Settings, Depends(get_settings)]
RegistryDep = Annotated[ModelRegistry, Depends(get_registry)]
ServiceDep = Annotated[InferenceService, Depends(get_service)]
MetricsDep = Annotated[Metrics, Depends(get_metrics)]
EngineDep = Annotated[InferenceEngine, Depends(get_engine)]
LifecycleDep = Annotated[Lifecycle, Depends(get_lifecycle)]
