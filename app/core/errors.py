"""Domain errors: every failure the service reports, with its HTTP status, a stable machine-readable type and a
human message. The core raises these (never `HTTPException`), whatever the protocol; `app.api.errors` renders
them, once, in each protocol's shape. No web imports here.
"""

from __future__ import annotations

from typing import Any


class ServiceError(Exception):
    """A failure with its HTTP status, a stable machine-readable type and a human message."""

    status: int = 500
    type: str = "internal_error"

    def __init__(self, message: str, details: dict[str, Any] | None = None, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.message = message
        self.details = details or {}
        self.headers = headers or {}


class BadRequest(ServiceError):
    status, type = 400, "bad_request"


class InvalidJSON(ServiceError):
    status, type = 400, "invalid_json"


class InvalidImage(ServiceError):
    status, type = 400, "invalid_image"


class InvalidNpy(ServiceError):
    status, type = 400, "invalid_npy"


class ModelNotFound(ServiceError):
    status, type = 404, "model_not_found"


class TaskNotSupported(ServiceError):
    status, type = 404, "task_not_supported"


class RouteNotFound(ServiceError):
    status, type = 404, "not_found"


class MethodNotAllowed(ServiceError):
    status, type = 405, "method_not_allowed"


class NotAcceptable(ServiceError):
    status, type = 406, "not_acceptable"


class PayloadTooLarge(ServiceError):
    status, type = 413, "payload_too_large"


class UnsupportedMediaType(ServiceError):
    status, type = 415, "unsupported_media_type"


class InvalidInput(ServiceError):
    """The body parsed but does not fit the model (shape, type, dtype)."""

    status, type = 422, "invalid_input"


class ValueOutOfRange(ServiceError):
    status, type = 422, "value_out_of_range"


class NonFiniteValue(ServiceError):
    status, type = 422, "non_finite_value"


class ModelUnavailable(ServiceError):
    """The model has a card but did not load (or has not loaded yet)."""

    status, type = 503, "model_unavailable"


class InferenceError(ServiceError):
    """ONNX Runtime failed, or returned something the card does not allow (wrong shape, non-finite)."""

    status, type = 500, "inference_error"


class Overloaded(ServiceError):
    """Too many requests already wait for the model (its bounded queue is full): retry after `Retry-After`."""

    status, type = 503, "overloaded"
    retry_after_seconds = 1

    def __init__(self, message: str, details: dict[str, Any] | None = None, headers: dict[str, str] | None = None):
        super().__init__(message, details, {"Retry-After": str(self.retry_after_seconds), **(headers or {})})


class InferenceTimeout(ServiceError):
    """The request's inference deadline passed (waiting in the queue plus computing); its slot is freed."""

    status, type = 504, "inference_timeout"


class ModelControlDisabled(ServiceError):
    """Load, unload and promote are refused: the service runs with `AE_MODEL_CONTROL=none` (as Triton's 403)."""

    status, type = 403, "model_control_disabled"


class ModelNotLoaded(ServiceError):
    """The version exists on disk but does not serve here (promote needs a loaded version)."""

    status, type = 409, "model_not_loaded"


class SeveralWorkers(ServiceError):
    """The model-control API would act on one worker process of several: refused."""

    status, type = 409, "several_workers"


class ModelLoadFailed(ServiceError):
    """A version on disk was refused at load (the reason says why); what served before still serves."""

    status, type = 422, "model_load_failed"
