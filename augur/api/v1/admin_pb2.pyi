from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ModelStatusRequest(_message.Message):
    __slots__ = ("model",)
    MODEL_FIELD_NUMBER: _ClassVar[int]
    model: str
    def __init__(self, model: _Optional[str] = ...) -> None: ...

class CanaryStatus(_message.Message):
    __slots__ = ("version", "weight", "sticky_key", "calls", "error_rate", "p99_ms", "psi")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_FIELD_NUMBER: _ClassVar[int]
    STICKY_KEY_FIELD_NUMBER: _ClassVar[int]
    CALLS_FIELD_NUMBER: _ClassVar[int]
    ERROR_RATE_FIELD_NUMBER: _ClassVar[int]
    P99_MS_FIELD_NUMBER: _ClassVar[int]
    PSI_FIELD_NUMBER: _ClassVar[int]
    version: str
    weight: float
    sticky_key: str
    calls: int
    error_rate: float
    p99_ms: float
    psi: float
    def __init__(self, version: _Optional[str] = ..., weight: _Optional[float] = ..., sticky_key: _Optional[str] = ..., calls: _Optional[int] = ..., error_rate: _Optional[float] = ..., p99_ms: _Optional[float] = ..., psi: _Optional[float] = ...) -> None: ...

class ShadowStatus(_message.Message):
    __slots__ = ("version", "threshold")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    version: str
    threshold: float
    def __init__(self, version: _Optional[str] = ..., threshold: _Optional[float] = ...) -> None: ...

class ModelState(_message.Message):
    __slots__ = ("name", "stable", "canary", "shadow", "aliases", "loaded", "published", "error", "last_rollback")
    class AliasesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    STABLE_FIELD_NUMBER: _ClassVar[int]
    CANARY_FIELD_NUMBER: _ClassVar[int]
    SHADOW_FIELD_NUMBER: _ClassVar[int]
    ALIASES_FIELD_NUMBER: _ClassVar[int]
    LOADED_FIELD_NUMBER: _ClassVar[int]
    PUBLISHED_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    LAST_ROLLBACK_FIELD_NUMBER: _ClassVar[int]
    name: str
    stable: str
    canary: CanaryStatus
    shadow: ShadowStatus
    aliases: _containers.ScalarMap[str, str]
    loaded: _containers.RepeatedScalarFieldContainer[str]
    published: _containers.RepeatedScalarFieldContainer[str]
    error: str
    last_rollback: str
    def __init__(self, name: _Optional[str] = ..., stable: _Optional[str] = ..., canary: _Optional[_Union[CanaryStatus, _Mapping]] = ..., shadow: _Optional[_Union[ShadowStatus, _Mapping]] = ..., aliases: _Optional[_Mapping[str, str]] = ..., loaded: _Optional[_Iterable[str]] = ..., published: _Optional[_Iterable[str]] = ..., error: _Optional[str] = ..., last_rollback: _Optional[str] = ...) -> None: ...

class ModelStatusResponse(_message.Message):
    __slots__ = ("models",)
    MODELS_FIELD_NUMBER: _ClassVar[int]
    models: _containers.RepeatedCompositeFieldContainer[ModelState]
    def __init__(self, models: _Optional[_Iterable[_Union[ModelState, _Mapping]]] = ...) -> None: ...

class PromoteRequest(_message.Message):
    __slots__ = ("model", "version")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    model: str
    version: str
    def __init__(self, model: _Optional[str] = ..., version: _Optional[str] = ...) -> None: ...

class SetCanaryRequest(_message.Message):
    __slots__ = ("model", "version", "weight")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_FIELD_NUMBER: _ClassVar[int]
    model: str
    version: str
    weight: float
    def __init__(self, model: _Optional[str] = ..., version: _Optional[str] = ..., weight: _Optional[float] = ...) -> None: ...

class SetShadowRequest(_message.Message):
    __slots__ = ("model", "version")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    model: str
    version: str
    def __init__(self, model: _Optional[str] = ..., version: _Optional[str] = ...) -> None: ...

class RollbackRequest(_message.Message):
    __slots__ = ("model", "reason")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    model: str
    reason: str
    def __init__(self, model: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class ReloadRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...
