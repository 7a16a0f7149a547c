"""The Open Inference Protocol (KServe V2 / Triton HTTP): bodies, data plane, schemas, routes, statistics."""
