"""The REST API under /v1, health, models, the demo page and the benchmark ceilings."""
