"""Runtime operations: metrics, logs, memory trimming, the offload pool, the shutdown lifecycle."""
