"""Which ONNX Runtime execution providers to ask for, and what the session really ended up using.

ONNX Runtime accepts a provider it does not have with only a warning, and a GPU build whose CUDA libraries
are missing silently runs on CPU. So the request is filtered by what the runtime offers, and after the session
is created its actual providers are compared with the request: any difference is reported, never hidden.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"
# Preference when the operator does not choose: the GPU when there is one, then the CPU.
DEFAULT_PREFERENCE = (CUDA, CPU)


@dataclass(frozen=True)
class ProviderPlan:
    """What was requested, what the runtime offers, and what will be passed to the session."""

    requested: tuple[str, ...]
    available: tuple[str, ...]
    chosen: tuple[str, ...]
    skipped: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class ProviderReport:
    """The plan plus the session's real providers (`session.get_providers()`)."""

    plan: ProviderPlan
    used: tuple[str, ...]
    notes: tuple[str, ...] = field(default=())

    @property
    def fallback(self) -> bool:
        """True when the preferred requested provider is not the one the session runs on."""
        return bool(self.plan.requested) and (not self.used or self.used[0] != self.plan.requested[0])

    def as_dict(self) -> dict[str, object]:
        return {
            "requested": list(self.plan.requested),
            "available": list(self.plan.available),
            "used": list(self.used),
            "fallback": self.fallback,
            "notes": [*self.plan.notes, *self.notes],
        }


def plan_providers(requested: Sequence[str] | None, available: Sequence[str]) -> ProviderPlan:
    """Keep the requested providers the runtime offers, in order; CPU is the last resort.

    `requested=None` is the default preference: CUDA when the runtime offers it, then CPU.
    """
    offered = tuple(available)
    if requested:
        wanted = tuple(dict.fromkeys(requested))
    else:
        wanted = tuple(p for p in DEFAULT_PREFERENCE if p in offered or p == CPU)
    chosen = tuple(p for p in wanted if p in offered)
    skipped = tuple(p for p in wanted if p not in offered)
    notes = [f"{p} requested but this ONNX Runtime build does not offer it (offered: {list(offered)})" for p in skipped]
    if not chosen:
        chosen = (CPU,)
        notes.append(f"none of the requested providers {list(wanted)} is available; using {CPU}")
    return ProviderPlan(requested=wanted, available=offered, chosen=chosen, skipped=skipped, notes=tuple(notes))


def report_providers(plan: ProviderPlan, used: Sequence[str]) -> ProviderReport:
    """Compare what the session runs on with the plan and say how they differ."""
    used_t = tuple(used)
    running_on = used_t[0] if used_t else "nothing"
    notes = tuple(
        f"{p} was passed to ONNX Runtime but the session does not use it (its libraries or device are "
        f"missing): running on {running_on}"
        for p in plan.chosen
        if p not in used_t
    )
    return ProviderReport(plan=plan, used=used_t, notes=notes)
