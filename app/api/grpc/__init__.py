"""Triton's `inference.GRPCInferenceService` (a superset of KServe's `grpc_predict_v2`) over the same registry,
engine and data plane as `/v1` and `/v2`: `tensors.py` (protobuf <-> numpy), `servicer.py` (the RPCs)."""
