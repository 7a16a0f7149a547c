"""The benchmark's plan and arithmetic: which variant runs which case, ratios within a round, then the median."""

from __future__ import annotations

from bench.cases import build_cases
from bench.load import LoadResult
from bench.plan import FLOOR, MLSERVER, NO_BATCHING, NOOP_PARSE, NOOP_RAW, OURS, VARIANTS, Cell, Results, applies
from tests.app.conftest import MODELS_DIR

LEVELS = (1, 8, 32)


def cell(round_: int, variant: str, requests: int, rows: int = 1) -> Cell:
    result = LoadResult(requests=requests, seconds=1.0, errors=0, p50_ms=1.0, p99_ms=2.0, mean_ms=1.0)
    return Cell(round_, variant, "encode-json-1", 32, result, rows)


def test_every_case_runs_on_ours_and_the_side_variants_where_they_answer_a_target() -> None:
    cases = {c.name: c for c in build_cases(MODELS_DIR)}
    assert all(applies(OURS, case, level, LEVELS) for case in cases.values() for level in LEVELS)
    # The ceilings take the /v1 JSON and .npy bodies only (noop-parse uses the /v1 parser).
    assert {n for n, c in cases.items() if applies(NOOP_PARSE, c, 32, LEVELS)} == {
        "encode-json-1", "encode-json-64", "encode-npy-64",
    }  # fmt: skip
    assert applies(NOOP_RAW, cases["encode-json-1"], 1, LEVELS)
    assert {n for n, c in cases.items() if applies(FLOOR, c, 1, LEVELS)} == {"encode-json-1"}
    # The peer only gets the V2 JSON requests it can parse; batching off only the 1-row requests.
    assert {n for n, c in cases.items() if applies(MLSERVER, c, 32, LEVELS)} == {"v2-json-1", "v2-json-64"}
    assert all(cases[n].rows == 1 for n in cases if applies(NO_BATCHING, cases[n], 32, LEVELS))
    assert set(VARIANTS) >= {OURS, NOOP_RAW, NOOP_PARSE, NO_BATCHING, MLSERVER}


def test_ratios_are_taken_within_a_round_then_the_median() -> None:
    """Round 2 ran 3x slower for everyone (drift): the per-round ratio is unaffected."""
    results = Results()
    for round_, (ours, peer) in enumerate([(1000, 500), (330, 165), (2000, 900)], start=1):
        results.cells += [cell(round_, OURS, ours), cell(round_, MLSERVER, peer)]
    ratio = results.ratio((OURS, "encode-json-1", 32), (MLSERVER, "encode-json-1", 32), "rps")
    assert ratio == 2.0
    assert results.ratio((OURS, "encode-json-1", 32), (NO_BATCHING, "encode-json-1", 32)) is None


def test_rows_per_second_counts_rows_not_requests() -> None:
    assert cell(1, OURS, 100, rows=64).rows_per_s == 6400
