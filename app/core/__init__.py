"""The service's core, with no web imports: model cards, the task table, the registry, the engine and batcher, the
data plane, validation, memory budgets, image decoding."""
