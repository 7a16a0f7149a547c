"""The Open Inference Protocol's data plane: V2 model names onto the registry's graphs, metadata and Triton
config from the card (which the registry has checked against the ONNX graph), and inference through the same
`InferenceEngine.run` as `/v1` (no second copy of model code).

Naming: every graph of every model is a V2 model `<model>.<role>` (`dense.encoder`, `dense.decoder`,
`dense.full`), and the bare model name (`dense`) is an alias of its full graph, so a client that only knows
"the model" gets input -> reconstruction. Versions are the registry's (`app.core.versions`): a name without a
version is the model's default version.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from app import __version__
from app.api.v2.protocol import InferRequest, OutputTensor, RequestedOutput, datatype_of
from app.api.v2.schemas import (
    BatchingConfig,
    ConfigTensor,
    InstanceGroup,
    MetadataTensor,
    ModelConfigResponse,
    ModelMetadataResponse,
    ServerMetadataResponse,
)
from app.core.cards import GRAPH_ROLES, ModelCard, TensorSpec, display_name
from app.core.engine import GraphSession, InferenceEngine, check_shape
from app.core.errors import BadRequest, InvalidInput, ModelNotFound, ModelUnavailable
from app.core.registry import ModelEntry, ModelRegistry
from app.core.validation import Limits, fit_array
from app.settings import Settings

SERVER_NAME = "ae-serve"
EXTENSIONS = ["binary_tensor_data", "model_configuration", "statistics", "model_repository"]
PLATFORM = "onnxruntime_onnx"
BACKEND = "onnxruntime"
ALIAS_ROLE = "full"
ENDPOINT = "v2"  # the `endpoint` label of the engine's metrics
BATCH_AXIS = "batch"
TRITON_TYPES = {"FP32": "TYPE_FP32", "FP64": "TYPE_FP64", "INT64": "TYPE_INT64", "UINT8": "TYPE_UINT8"}


@dataclass(frozen=True)
class V2Model:
    """One V2 model: a graph of a registry entry, under the name the client used."""

    name: str
    entry: ModelEntry
    graph: GraphSession
    versions: tuple[str, ...] = ()
    """Every version of the model that serves (the metadata's `versions`)."""

    @property
    def card(self) -> ModelCard:
        assert self.entry.card is not None
        return self.entry.card

    @property
    def version(self) -> str:
        return str(self.entry.version)


@dataclass(frozen=True)
class InferPlan:
    """A checked request: the graph's feeds and the outputs to return (with their encoding)."""

    feeds: dict[str, np.ndarray]
    outputs: list[RequestedOutput]
    rows: int  # samples in the request (1 for a graph without a batch axis)


def server_metadata() -> ServerMetadataResponse:
    return ServerMetadataResponse(name=SERVER_NAME, version=__version__, extensions=EXTENSIONS)


def model_names(registry: ModelRegistry) -> list[str]:
    """Every V2 model name the registry can serve (aliases first, then `<model>.<role>`)."""
    names: list[str] = []
    for entry in registry.entries():
        if entry.card is None:
            names.append(entry.name)
            continue
        if ALIAS_ROLE in entry.card.graphs:
            names.append(entry.name)
        names.extend(f"{entry.name}.{role}" for role in entry.card.graphs)
    return names


def served_models(registry: ModelRegistry) -> list[tuple[str, str]]:
    """`(V2 name, version)` of every graph that serves now (aliases included)."""
    served: list[tuple[str, str]] = []
    for record in registry.models():
        for entry in record.versions.values():
            if not entry.ready:
                continue
            version = str(entry.version)
            if ALIAS_ROLE in entry.graphs:
                served.append((entry.name, version))
            served.extend((f"{entry.name}.{role}", version) for role in entry.graphs)
    return served


def locate(registry: ModelRegistry, name: str) -> tuple[ModelEntry, str]:
    """The registry entry and graph role a V2 name designates, whatever the model's status (404 if none)."""
    if registry.knows(name):
        return registry.get(name), ALIAS_ROLE
    model, dot, role = name.rpartition(".")
    if dot and role in GRAPH_ROLES and registry.knows(model):
        return registry.get(model), role
    known = ", ".join(model_names(registry)) or "none"
    raise ModelNotFound(
        f"unknown model {display_name(name)!r}; V2 models are named <model>.<graph> ({'|'.join(GRAPH_ROLES)}), or "
        f"<model> for its full graph: {known}",
        {"model": display_name(name)},
    )


def resolve(registry: ModelRegistry, name: str, version: str | None = None) -> V2Model:
    """The V2 model to serve (the default version without `version`): 404 for an unknown name, graph or version,
    503 when that version did not load."""
    entry, role = locate(registry, name)
    entry = registry.serving(entry.name, version)
    card = entry.card
    assert card is not None
    graph = entry.graphs.get(role)
    if graph is None:
        raise ModelNotFound(
            f"model {entry.name!r} has no {role} graph; its V2 models: "
            + ", ".join(f"{entry.name}.{r}" for r in card.graphs),
            {"model": display_name(name)},
        )
    record = registry.record(entry.name)
    versions = tuple(str(number) for number, other in record.versions.items() if other.ready)
    return V2Model(name=name, entry=entry, graph=graph, versions=versions)


def version_states(registry: ModelRegistry) -> dict[str, dict[str, str]]:
    """Each model's versions (as the policy selected them) and their state."""
    return {
        record.name: {str(number): entry.status.value for number, entry in record.versions.items()}
        for record in registry.models()
    }


def check_ready(registry: ModelRegistry) -> None:
    """503 naming what is not ready, unless every required model serves."""
    state = registry.readiness()
    if not state.ready:
        what = "; ".join(f"{k}: {v}" for k, v in state.not_ready.items())
        raise ModelUnavailable(f"not ready: {what}", {"not_ready": state.not_ready})


# -- metadata -----------------------------------------------------------------------------------------------
def _metadata_tensor(spec: TensorSpec) -> MetadataTensor:
    return MetadataTensor(
        name=spec.name,
        datatype=datatype_of(spec.numpy_dtype),
        shape=[d if isinstance(d, int) else -1 for d in spec.shape],
    )


def model_metadata(model: V2Model) -> ModelMetadataResponse:
    """Name, versions, platform and tensors (batch and other dynamic axes as -1)."""
    return ModelMetadataResponse(
        name=model.name,
        versions=list(model.versions),
        platform=PLATFORM,
        inputs=[_metadata_tensor(s) for s in model.graph.inputs],
        outputs=[_metadata_tensor(s) for s in model.graph.outputs],
    )


def _batched(graph: GraphSession) -> bool:
    return all(spec.shape and spec.shape[0] == BATCH_AXIS for spec in (*graph.inputs, *graph.outputs))


def model_config(model: V2Model, settings: Settings, engine: InferenceEngine) -> ModelConfigResponse:
    """Triton's model configuration, as perf_analyzer and model_analyzer read it: dims exclude the batch axis
    when the model batches (`max_batch_size` > 0), dynamic axes are -1, and `dynamic_batching` is present when
    the engine merges requests to this graph."""
    batched = _batched(model.graph)

    def tensor(spec: TensorSpec, with_format: bool) -> ConfigTensor:
        shape = spec.shape[1:] if batched else spec.shape
        return ConfigTensor(
            name=spec.name,
            data_type=TRITON_TYPES[datatype_of(spec.numpy_dtype)],
            dims=[d if isinstance(d, int) else -1 for d in shape],
            format="FORMAT_NONE" if with_format else None,
        )

    policy = engine.policy(model.graph)
    return ModelConfigResponse(
        name=model.name,
        platform=PLATFORM,
        backend=BACKEND,
        max_batch_size=settings.max_batch_rows if batched else 0,
        input=[tensor(s, True) for s in model.graph.inputs],
        output=[tensor(s, False) for s in model.graph.outputs],
        instance_group=[InstanceGroup(count=engine.concurrency, kind="KIND_CPU")],
        dynamic_batching=BatchingConfig(
            max_queue_delay_microseconds=round(policy.max_delay_seconds * 1e6),
            preferred_batch_size=[policy.max_rows],
        )
        if policy.batching
        else None,
    )


# -- inference ----------------------------------------------------------------------------------------------
def plan_inference(model: V2Model, request: InferRequest, limits: Limits) -> InferPlan:
    """Match the request to the graph: input names, datatypes, shapes, sizes and values (the same checks as
    `/v1`), and the outputs asked for. Raises 4xx errors naming the tensor."""
    graph = model.graph
    expected = [spec.name for spec in graph.inputs]
    unknown = [name for name in request.inputs if name not in expected]
    if unknown:
        raise BadRequest(
            f"unknown input(s) {unknown} for model {model.name!r}; it takes {expected}",
            {"inputs": expected},
        )
    missing = [name for name in expected if name not in request.inputs]
    if missing:
        raise BadRequest(f"missing input(s) {missing} for model {model.name!r}; it takes {expected}")
    feeds: dict[str, np.ndarray] = {}
    for spec in graph.inputs:
        array = request.inputs[spec.name]
        want = datatype_of(spec.numpy_dtype)
        got = request.datatypes[spec.name]
        if got != want:
            raise BadRequest(
                f"input {spec.name!r}: datatype {got} does not match model {model.name!r}, which takes {want}",
                {"input": spec.name, "datatype": got, "expected": want},
            )
        problem = check_shape(spec, array.shape, {})
        if problem:
            wanted = [d if isinstance(d, int) else -1 for d in spec.shape]
            raise InvalidInput(
                f"input {spec.name!r} of model {model.name!r} has shape {list(array.shape)}, expected {wanted} "
                "(-1: any size)",
                {"input": spec.name, "shape": list(array.shape), "expected": wanted},
            )
        if spec.shape and spec.shape[0] == BATCH_AXIS:
            rows = array.shape[0]
            if rows == 0:
                raise InvalidInput(f"input {spec.name!r}: empty batch (shape {list(array.shape)})")
            limits.check_rows(rows, f"input {spec.name!r} holds")
        feeds[spec.name] = fit_array(model.card, spec, array, spec.name, limits)
    first = graph.inputs[0]
    rows = int(feeds[first.name].shape[0]) if first.shape and first.shape[0] == BATCH_AXIS else 1
    return InferPlan(feeds=feeds, outputs=_select_outputs(model, request), rows=rows)


def _select_outputs(model: V2Model, request: InferRequest) -> list[RequestedOutput]:
    names = [spec.name for spec in model.graph.outputs]
    if request.outputs is None:
        return [RequestedOutput(name, request.binary_output) for name in names]
    for output in request.outputs:
        if output.name not in names:
            raise BadRequest(
                f"unknown output {output.name!r} for model {model.name!r}; its outputs are {names}",
                {"output": output.name, "outputs": names},
            )
    return request.outputs


async def run_inference(model: V2Model, plan: InferPlan, engine: InferenceEngine) -> list[OutputTensor]:
    """Run the graph through the engine; the outputs asked for, in the order asked."""
    results = await engine.run(model.graph, plan.feeds, ENDPOINT)
    return [OutputTensor(o.name, results[o.name], o.binary) for o in plan.outputs]
