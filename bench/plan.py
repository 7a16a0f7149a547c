"""Which variant runs which case at which concurrency, and what a run measured.

Variants (each is a server, or a route on one):
- `ours`: `python -m app`, production settings, 1 worker (the default dynamic batching on);
- `noop-raw` / `noop-parse`: the ceilings on the same server (`/bench/noop-raw`, `/bench/noop-parse`);
- `no-batching`: the same service with `AE_BATCHING=0`, 1 worker;
- `2-workers`: the same service with 2 uvicorn workers;
- `mlserver`: Seldon MLServer (default settings) with `bench/mlserver_runtime.py` on the same ONNX file;
- `mlserver-batching`: the same with MLServer's adaptive batching on (our batch size and delay);
- `tutorial`: the FastAPI + pydantic + ONNX Runtime app of the blog posts (`bench/peers/tutorial_app.py`);
- `bentoml`: a minimal BentoML 1.4 service (`bench/peers/bentoml_service.py`), `bentoml serve`, 1 worker;
- `echo`: the external ceiling, a bare ASGI echo under uvicorn (`bench/peers/echo.py`), outside the service.
Every server runs for the whole benchmark (idle ones cost no CPU), so variants interleave cell by cell.
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from dataclasses import dataclass, field

from bench.cases import Case
from bench.load import BareResult, LoadResult

OURS = "ours"
NOOP_RAW = "noop-raw"
NOOP_PARSE = "noop-parse"
NO_BATCHING = "no-batching"
TWO_WORKERS = "2-workers"
MLSERVER = "mlserver"
MLSERVER_BATCHING = "mlserver-batching"
TUTORIAL = "tutorial"
BENTOML = "bentoml"
ECHO = "echo"
FLOOR = "floor"
VARIANTS = (OURS, NOOP_RAW, NOOP_PARSE, ECHO, FLOOR, NO_BATCHING, TWO_WORKERS, MLSERVER, MLSERVER_BATCHING, TUTORIAL,
            BENTOML)  # fmt: skip
SERVER_OF = {OURS: OURS, NOOP_RAW: OURS, NOOP_PARSE: OURS, NO_BATCHING: NO_BATCHING, TWO_WORKERS: TWO_WORKERS,
             MLSERVER: MLSERVER, MLSERVER_BATCHING: MLSERVER_BATCHING, TUTORIAL: TUTORIAL, BENTOML: BENTOML,
             ECHO: ECHO, FLOOR: FLOOR}  # fmt: skip
OWN_SERVERS = (OURS, NO_BATCHING, TWO_WORKERS)
"""Servers of the service itself (with its metrics: in-flight gauge, batch sizes); the others are peers."""
PEERS = (MLSERVER, MLSERVER_BATCHING, TUTORIAL, BENTOML)
"""The other model servers, compared with `ours` case by case (ours / peer)."""
PATH_OF = {NOOP_RAW: "/bench/noop-raw", NOOP_PARSE: "/bench/noop-parse", ECHO: "/echo"}
ENCODE_PATH_OF = {TUTORIAL: "/encode", BENTOML: "/encode"}
"""Where a peer takes the `/v1/encode` JSON body `{"inputs": [[...]]}` (the V2 cases keep their path)."""
NPY_ENCODE_CASES = {"encode-npy-64": 64, "encode-npy-512": 512}
"""The `.npy` encode cases (name -> rows) issue 19's workers target takes the best of (ours and bare ORT alike)."""
PARALLEL_BARE_CASES = NPY_ENCODE_CASES
"""Cases whose bare runtime is also measured with one one-thread caller per usable CPU (issue 19's workers target)."""
TWO_WORKER_CASES = ("encode-json-1", "v2-json-1", *NPY_ENCODE_CASES, "denoise-png-28")
JSON_ENCODE_CASES = ("encode-json-1", "encode-json-64")
V2_JSON_CASES = ("v2-json-1", "v2-json-64")
PEER_CASES = {TUTORIAL: JSON_ENCODE_CASES + V2_JSON_CASES, BENTOML: JSON_ENCODE_CASES}
"""The cases the tutorial app and BentoML serve: the /v1 JSON encode body (and V2 JSON for the tutorial)."""


def path_of(variant: str, case: Case) -> str:
    """The route `variant` takes `case`'s body on."""
    if variant in ENCODE_PATH_OF and case.name in JSON_ENCODE_CASES:
        return ENCODE_PATH_OF[variant]
    return PATH_OF.get(variant, case.path)


def applies(variant: str, case: Case, concurrency: int, levels: tuple[int, ...]) -> bool:
    """The matrix: every case on `ours` at every level; the side-by-side variants where they answer a question
    (the targets of issue 6), to keep a full run within ~15 minutes."""
    top = max(levels)
    if variant == OURS:
        return True
    if variant in (NOOP_RAW, NOOP_PARSE, ECHO):
        return case.ceilings and (case.name == "encode-json-1" or concurrency == top)
    if variant == FLOOR:  # the least one Python process can do for the 1-row JSON encode (bench/peers/floor.py)
        return case.name == "encode-json-1"
    if variant == NO_BATCHING:
        return case.rows == 1 and (case.name == "encode-json-1" or concurrency >= min(8, top))
    if variant == TWO_WORKERS:
        return case.name in TWO_WORKER_CASES and (case.name == "encode-json-1" or concurrency == top)
    if variant == MLSERVER:
        return case.peer
    if variant == MLSERVER_BATCHING:  # batching only matters with concurrent requests
        return case.peer and concurrency >= min(8, top)
    if variant in PEER_CASES:  # the 1-row cases at every level (the comparison), 64 rows at the top only
        return case.name in PEER_CASES[variant] and (case.rows == 1 or concurrency == top)
    raise ValueError(variant)


@dataclass(frozen=True)
class Cell:
    """One wrk run."""

    round: int
    variant: str
    case: str
    concurrency: int
    result: LoadResult
    rows: int
    batch_rows: float | None = None
    """Mean rows per ONNX Runtime call the server formed for this case's graph during the run."""
    queue_ms: float | None = None
    """Mean time a request of this graph waited in the batcher's queue during the run."""
    compute_ms: float | None = None
    """Mean time inside ONNX Runtime per call of this graph during the run."""

    @property
    def rows_per_s(self) -> float:
        return self.result.rps * self.rows


@dataclass
class Results:
    cells: list[Cell] = field(default_factory=list)
    bare: dict[tuple[str, int], list[BareResult]] = field(default_factory=lambda: defaultdict(list))
    """(case, batch) -> one result per round."""
    bare_callers: dict[tuple[str, int], list[BareResult]] = field(default_factory=lambda: defaultdict(list))
    """(case, batch) -> one result per round of as many concurrent one-thread callers as usable CPUs
    (`PARALLEL_BARE_CASES` only): the bound for that many workers."""

    def get(self, variant: str, case: str, concurrency: int) -> list[Cell]:
        return [c for c in self.cells if (c.variant, c.case, c.concurrency) == (variant, case, concurrency)]

    def rounds(self) -> list[int]:
        return sorted({c.round for c in self.cells})

    def one(self, variant: str, case: str, concurrency: int, round_: int) -> Cell | None:
        for c in self.cells:
            if (c.round, c.variant, c.case, c.concurrency) == (round_, variant, case, concurrency):
                return c
        return None

    def ratio(self, a: tuple[str, str, int], b: tuple[str, str, int], metric: str = "rows_per_s") -> float | None:
        """Median over rounds of a/b, each round's pair measured minutes apart at most (interleaved)."""
        ratios = []
        for r in self.rounds():
            x, y = self.one(*a, r), self.one(*b, r)
            if x and y:
                num, den = _metric(x, metric), _metric(y, metric)
                if den > 0:
                    ratios.append(num / den)
        return statistics.median(ratios) if ratios else None

    def bare_median(self, case: str, batch: int, callers: bool = False) -> BareResult | None:
        runs = (self.bare_callers if callers else self.bare).get((case, batch))
        if not runs:
            return None
        return sorted(runs, key=lambda b: b.rows_per_s)[len(runs) // 2]


def _metric(cell: Cell, metric: str) -> float:
    if metric == "rows_per_s":
        return cell.rows_per_s
    if metric == "rps":
        return cell.result.rps
    if metric == "p99_ms":
        return cell.result.p99_ms
    if metric == "p50_ms":
        return cell.result.p50_ms
    raise ValueError(metric)


def median_of(cells: list[Cell], metric: str) -> float:
    return statistics.median(_metric(c, metric) for c in cells)
