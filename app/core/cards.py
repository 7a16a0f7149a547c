"""The model card (`models/<name>/card.json`) as typed objects.

The exporter writes the card; the service reads what it needs to serve and passes the rest through to
`GET /v1/models/{name}`. Unknown keys are kept, so a newer card still loads.
"""

from __future__ import annotations

import errno
import math
import os
import re
import stat
from pathlib import Path
from typing import Any, Literal, get_args

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

CARD_FILE = "card.json"
SUPPORTED_SCHEMA_VERSIONS = (1,)
# `gray`: a colour image model's gray specialist (photo), which the denoise task runs for gray images.
GraphRole = Literal["encoder", "decoder", "full", "gray"]
GRAPH_ROLES: tuple[str, ...] = get_args(GraphRole)
Layout = Literal["vector", "image", "sequence"]
MODEL_NAME_PATTERN = r"^[a-z0-9][a-z0-9._-]{0,63}$"

# ONNX Runtime's type strings for the dtypes a card may declare.
ORT_TYPES = {
    "float32": "tensor(float)",
    "float64": "tensor(double)",
    "int64": "tensor(int64)",
    "uint8": "tensor(uint8)",
}
NUMPY_DTYPES: dict[str, np.dtype[Any]] = {name: np.dtype(name) for name in ("float32", "float64", "int64", "uint8")}


class CardError(ValueError):
    """The card is missing, unreadable or inconsistent; the message says what."""


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True)


class TensorSpec(_Open):
    """One graph input or output: shape entries are ints (fixed) or names (dynamic axes such as "batch")."""

    name: str
    shape: list[int | str]
    dtype: str = "float32"
    range: list[float | None] | None = None
    layout: str = ""
    description: str = ""

    @field_validator("range")
    @classmethod
    def _two_sided(cls, value: list[float | None] | None) -> list[float | None] | None:
        if value is not None and len(value) != 2:
            raise ValueError("range must be [low, high] (either may be null)")
        return value

    @field_validator("dtype")
    @classmethod
    def _known_dtype(cls, value: str) -> str:
        if value not in NUMPY_DTYPES:
            raise ValueError(f"dtype {value!r} is not one of {sorted(NUMPY_DTYPES)}")
        return value

    @property
    def low(self) -> float:
        return -math.inf if self.range is None or self.range[0] is None else float(self.range[0])

    @property
    def high(self) -> float:
        return math.inf if self.range is None or self.range[1] is None else float(self.range[1])

    @property
    def bounded(self) -> bool:
        return math.isfinite(self.low) or math.isfinite(self.high)

    @property
    def numpy_dtype(self) -> np.dtype[Any]:
        return NUMPY_DTYPES[self.dtype]

    @property
    def sample_shape(self) -> list[int | str]:
        """The shape without its leading batch axis."""
        return self.shape[1:]


class GraphCard(_Open):
    file: str
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    bytes: int | None = None
    description: str = ""
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    opset: int | None = None

    @field_validator("file")
    @classmethod
    def _plain_file_name(cls, value: str) -> str:
        # A card names a file in its own folder: no directories, no parent references, ONNX only.
        if "/" in value or "\\" in value or value in ("", ".", "..") or not value.endswith(".onnx"):
            raise ValueError(f"graph file {value!r} must be a plain *.onnx file name in the model's folder")
        return value

    def output(self, name: str) -> TensorSpec | None:
        return next((t for t in self.outputs if t.name == name), None)


class ImageSection(_Open):
    height: int | None = None
    width: int | None = None
    channels: int = 1
    min_side: int | None = None


class SequenceSection(_Open):
    channels: int
    channel_names: list[str] = []
    window: int
    stride: int
    min_length: int = 1


class InputSection(_Open):
    layout: Layout
    range: list[float | None] | None = None
    image: ImageSection | None = None
    fully_convolutional: bool = False
    sequence: SequenceSection | None = None
    polarity: str | None = None


class AnomalySection(_Open):
    """How `score` flags anomalies: the training's threshold, and (cards written since `training fit`) the
    validation scores' quantiles a request may pick another threshold from."""

    score: str = ""
    threshold: float
    threshold_rule: str = ""
    quantile: float | None = Field(default=None, ge=0.0, le=1.0)
    """The quantile of the validation scores `threshold` is."""
    validation_quantiles: dict[str, float] = {}
    """Named quantiles of the validation scores ("0.99": value)."""
    validation_score_quantiles: list[float] = []
    """The validation scores' quantiles at 0, 1/(n-1), ..., 1 (n = the list's length): any quantile by
    interpolation."""

    @field_validator("validation_quantiles")
    @classmethod
    def _quantile_keys(cls, value: dict[str, float]) -> dict[str, float]:
        for key in value:
            try:
                q = float(key)
            except ValueError:
                raise ValueError(f"validation_quantiles: key {key!r} is not a number") from None
            if not 0.0 <= q <= 1.0:
                raise ValueError(f"validation_quantiles: key {key!r} is not in [0, 1]")
        return value

    def threshold_at(self, quantile: float) -> float | None:
        """The validation scores' `quantile`: a named one exactly, else interpolated on the stored grid; None
        when the card records neither."""
        for key, value in self.validation_quantiles.items():
            if math.isclose(float(key), quantile, rel_tol=0.0, abs_tol=1e-12):
                return float(value)
        grid = self.validation_score_quantiles
        if len(grid) < 2:
            return None
        return float(np.interp(quantile, np.linspace(0.0, 1.0, len(grid)), grid))

    def quantiles_offered(self) -> str:
        """What `?quantile=` accepts on this card, said in an error message."""
        if len(self.validation_score_quantiles) >= 2:
            return "any quantile in [0, 1]"
        if self.validation_quantiles:
            return "one of " + ", ".join(sorted(self.validation_quantiles, key=float))
        return "none: the card records no validation quantiles (pass threshold= instead)"


class ForecastSection(_Open):
    horizon: int
    window: int
    step_seconds: float | None = None


class ServingSection(_Open):
    """Optional per-model serving knobs (dynamic batching, queue bound, deadline); the settings of the same names
    (`AE_BATCHING`, ...) win when set in the environment. See `app/settings.py` for each knob's meaning."""

    batching: bool | None = None
    batch_max_rows: int | None = Field(default=None, ge=1)
    batch_max_values: int | None = Field(default=None, ge=1)
    batch_max_delay_ms: float | None = Field(default=None, ge=0.0, le=1000.0)
    queue_max_requests: int | None = Field(default=None, ge=1)
    inference_timeout_seconds: float | None = Field(default=None, gt=0.0)


class ModelCard(_Open):
    schema_version: int
    name: str = Field(pattern=MODEL_NAME_PATTERN)
    version: str
    kind: str = ""
    description: str = ""
    tasks: list[str]
    graphs: dict[GraphRole, GraphCard]
    input: InputSection
    latent: dict[str, Any] | None = None
    anomaly: AnomalySection | None = None
    forecast: ForecastSection | None = None
    preprocessing: dict[str, Any] | None = None
    serving: ServingSection | None = None
    metrics: dict[str, Any] = {}
    training: dict[str, Any] = {}
    data: dict[str, Any] = {}
    provenance: dict[str, Any] = {}
    artifacts: list[str] = []

    @field_validator("schema_version")
    @classmethod
    def _supported(cls, value: int) -> int:
        if value not in SUPPORTED_SCHEMA_VERSIONS:
            raise ValueError(
                f"card schema_version {value} is not supported (this service reads {SUPPORTED_SCHEMA_VERSIONS})"
            )
        return value

    @field_validator("version", mode="before")
    @classmethod
    def _version_text(cls, value: object) -> object:
        return str(value) if isinstance(value, int) else value


def read_regular_file(path: Path) -> bytes:
    """The bytes of `path` if it is a regular file (symlinks to one included); OSError otherwise. Opened without
    blocking and checked before reading: a named pipe or device in place of a model file would block `open()`
    or `read()` for ever (start-up hung, SIGTERM ignored)."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, "not a regular file")
        with os.fdopen(fd, "rb", closefd=False) as f:
            return f.read()
    finally:
        os.close(fd)


def read_card(folder: Path, name: str | None = None) -> ModelCard:
    """Parse and validate `folder/card.json` of model `name` (the folder's name by default; a version folder
    `models/<name>/<n>/` passes it); raises CardError with a readable reason (paths relative to the models
    directory: reasons reach `/readyz`, which needs no key)."""
    name = folder.name if name is None else name
    shown = f"{name}/{CARD_FILE}" if name == folder.name else f"{name}/{folder.name}/{CARD_FILE}"
    try:
        raw = read_regular_file(folder / CARD_FILE)
    except OSError as exc:
        raise CardError(f"cannot read {shown}: {exc.strerror or exc}") from exc
    try:
        card = ModelCard.model_validate_json(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ()))
        raise CardError(f"{shown}: invalid card at {where or 'top level'}: {first.get('msg')}") from exc
    if card.name != name:
        raise CardError(f"{shown}: card name {display_name(card.name)!r} differs from its folder name {name!r}")
    return card


DISPLAY_NAME_CHARS = 64


def display_name(name: str) -> str:
    """A client-given name as answers and logs show it: at most 64 characters (a 60 KB name in a URL used to be
    echoed whole in the 404 and the log line)."""
    if len(name) <= DISPLAY_NAME_CHARS:
        return name
    return f"{name[:DISPLAY_NAME_CHARS]}...({len(name) - DISPLAY_NAME_CHARS} more characters)"


def name_is_valid(name: str) -> bool:
    return re.fullmatch(MODEL_NAME_PATTERN, name) is not None


def check_input(card: ModelCard) -> None:
    """The input section fits the layout it declares (the tasks' own checks are `app.core.tasks.check_card`)."""
    if card.input.layout == "sequence" and card.input.sequence is None:
        raise CardError("input layout 'sequence' needs input.sequence (channels, window, stride)")
    # A vector model may have an image form (MNIST's 784 numbers are 28x28 pixels: `input.image` gives its height
    # and width, and image uploads are then accepted); a table's rows have none, so only images need the section.
    if card.input.layout == "image" and card.input.image is None:
        raise CardError("input layout 'image' needs input.image (height, width, channels)")


def window_starts(steps: int, window: int, stride: int) -> list[int]:
    """Start of every sliding window over a series of `steps` (the last one ends at the series' end); one window
    for a short series. Serving scores series in these windows and training computes its thresholds over them:
    one definition for both, or the anomaly scores would silently change."""
    if steps <= window:
        return [0]
    starts = list(range(0, steps - window + 1, stride))
    if starts[-1] != steps - window:
        starts.append(steps - window)
    return starts
