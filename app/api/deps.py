"""Typed dependencies: the application context (app/api/context.py) and its parts, handed to routes by FastAPI.

They are `async def` on purpose: FastAPI runs a plain `def` dependency in the thread pool, a thread hop per
dependency per request for what is an attribute lookup.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from app.api.context import AppContext, context_of
from app.api.v2.statistics import InferenceStatistics
from app.core.control import ModelControl
from app.core.engine import InferenceEngine
from app.core.registry import ModelRegistry
from app.core.service import InferenceService
from app.runtime.lifecycle import Lifecycle
from app.runtime.metrics import Metrics
from app.settings import Settings


async def get_context(request: Request) -> AppContext:
    return context_of(request)


async def get_settings(request: Request) -> Settings:
    return context_of(request).settings


async def get_registry(request: Request) -> ModelRegistry:
    return context_of(request).registry


async def get_service(request: Request) -> InferenceService:
    return context_of(request).service


async def get_metrics(request: Request) -> Metrics:
    return context_of(request).metrics


async def get_engine(request: Request) -> InferenceEngine:
    return context_of(request).engine


async def get_lifecycle(request: Request) -> Lifecycle:
    return context_of(request).lifecycle


async def get_statistics(request: Request) -> InferenceStatistics:
    return context_of(request).v2_statistics


async def get_control(request: Request) -> ModelControl:
    return context_of(request).control


ContextDep = Annotated[AppContext, Depends(get_context)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
RegistryDep = Annotated[ModelRegistry, Depends(get_registry)]
ServiceDep = Annotated[InferenceService, Depends(get_service)]
MetricsDep = Annotated[Metrics, Depends(get_metrics)]
EngineDep = Annotated[InferenceEngine, Depends(get_engine)]
LifecycleDep = Annotated[Lifecycle, Depends(get_lifecycle)]
StatisticsDep = Annotated[InferenceStatistics, Depends(get_statistics)]
ControlDep = Annotated[ModelControl, Depends(get_control)]
