from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Int64List(_message.Message):
    __slots__ = ("values",)
    VALUES_FIELD_NUMBER: _ClassVar[int]
    values: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, values: _Optional[_Iterable[int]] = ...) -> None: ...

class StringList(_message.Message):
    __slots__ = ("values",)
    VALUES_FIELD_NUMBER: _ClassVar[int]
    values: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, values: _Optional[_Iterable[str]] = ...) -> None: ...

class DoubleList(_message.Message):
    __slots__ = ("values",)
    VALUES_FIELD_NUMBER: _ClassVar[int]
    values: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, values: _Optional[_Iterable[float]] = ...) -> None: ...

class BoolList(_message.Message):
    __slots__ = ("values",)
    VALUES_FIELD_NUMBER: _ClassVar[int]
    values: _containers.RepeatedScalarFieldContainer[bool]
    def __init__(self, values: _Optional[_Iterable[bool]] = ...) -> None: ...

class BytesList(_message.Message):
    __slots__ = ("values",)
    VALUES_FIELD_NUMBER: _ClassVar[int]
    values: _containers.RepeatedScalarFieldContainer[bytes]
    def __init__(self, values: _Optional[_Iterable[bytes]] = ...) -> None: ...

class EntityColumn(_message.Message):
    __slots__ = ("int64s", "strings")
    INT64S_FIELD_NUMBER: _ClassVar[int]
    STRINGS_FIELD_NUMBER: _ClassVar[int]
    int64s: Int64List
    strings: StringList
    def __init__(self, int64s: _Optional[_Union[Int64List, _Mapping]] = ..., strings: _Optional[_Union[StringList, _Mapping]] = ...) -> None: ...

class PredictOptions(_message.Message):
    __slots__ = ("return_features", "return_feature_status")
    RETURN_FEATURES_FIELD_NUMBER: _ClassVar[int]
    RETURN_FEATURE_STATUS_FIELD_NUMBER: _ClassVar[int]
    return_features: bool
    return_feature_status: bool
    def __init__(self, return_features: _Optional[bool] = ..., return_feature_status: _Optional[bool] = ...) -> None: ...

class PredictRequest(_message.Message):
    __slots__ = ("model", "version", "entities", "request_features", "options")
    class EntitiesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: EntityColumn
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[EntityColumn, _Mapping]] = ...) -> None: ...
    class RequestFeaturesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: DoubleList
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[DoubleList, _Mapping]] = ...) -> None: ...
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    ENTITIES_FIELD_NUMBER: _ClassVar[int]
    REQUEST_FEATURES_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    model: str
    version: str
    entities: _containers.MessageMap[str, EntityColumn]
    request_features: _containers.MessageMap[str, DoubleList]
    options: PredictOptions
    def __init__(self, model: _Optional[str] = ..., version: _Optional[str] = ..., entities: _Optional[_Mapping[str, EntityColumn]] = ..., request_features: _Optional[_Mapping[str, DoubleList]] = ..., options: _Optional[_Union[PredictOptions, _Mapping]] = ...) -> None: ...

class FeatureStatus(_message.Message):
    __slots__ = ("present", "missing", "stale")
    PRESENT_FIELD_NUMBER: _ClassVar[int]
    MISSING_FIELD_NUMBER: _ClassVar[int]
    STALE_FIELD_NUMBER: _ClassVar[int]
    present: int
    missing: int
    stale: int
    def __init__(self, present: _Optional[int] = ..., missing: _Optional[int] = ..., stale: _Optional[int] = ...) -> None: ...

class FeatureMatrix(_message.Message):
    __slots__ = ("names", "values")
    NAMES_FIELD_NUMBER: _ClassVar[int]
    VALUES_FIELD_NUMBER: _ClassVar[int]
    names: _containers.RepeatedScalarFieldContainer[str]
    values: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, names: _Optional[_Iterable[str]] = ..., values: _Optional[_Iterable[float]] = ...) -> None: ...

class PredictResponse(_message.Message):
    __slots__ = ("model", "version", "rows", "outputs", "scores", "feature_status", "features", "row_versions", "degraded")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    ROWS_FIELD_NUMBER: _ClassVar[int]
    OUTPUTS_FIELD_NUMBER: _ClassVar[int]
    SCORES_FIELD_NUMBER: _ClassVar[int]
    FEATURE_STATUS_FIELD_NUMBER: _ClassVar[int]
    FEATURES_FIELD_NUMBER: _ClassVar[int]
    ROW_VERSIONS_FIELD_NUMBER: _ClassVar[int]
    DEGRADED_FIELD_NUMBER: _ClassVar[int]
    model: str
    version: str
    rows: int
    outputs: int
    scores: _containers.RepeatedScalarFieldContainer[float]
    feature_status: _containers.RepeatedCompositeFieldContainer[FeatureStatus]
    features: FeatureMatrix
    row_versions: _containers.RepeatedScalarFieldContainer[str]
    degraded: bool
    def __init__(self, model: _Optional[str] = ..., version: _Optional[str] = ..., rows: _Optional[int] = ..., outputs: _Optional[int] = ..., scores: _Optional[_Iterable[float]] = ..., feature_status: _Optional[_Iterable[_Union[FeatureStatus, _Mapping]]] = ..., features: _Optional[_Union[FeatureMatrix, _Mapping]] = ..., row_versions: _Optional[_Iterable[str]] = ..., degraded: _Optional[bool] = ...) -> None: ...

class GetOnlineFeaturesRequest(_message.Message):
    __slots__ = ("feature_service", "entities", "request_features")
    class EntitiesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: EntityColumn
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[EntityColumn, _Mapping]] = ...) -> None: ...
    class RequestFeaturesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: DoubleList
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[DoubleList, _Mapping]] = ...) -> None: ...
    FEATURE_SERVICE_FIELD_NUMBER: _ClassVar[int]
    ENTITIES_FIELD_NUMBER: _ClassVar[int]
    REQUEST_FEATURES_FIELD_NUMBER: _ClassVar[int]
    feature_service: str
    entities: _containers.MessageMap[str, EntityColumn]
    request_features: _containers.MessageMap[str, DoubleList]
    def __init__(self, feature_service: _Optional[str] = ..., entities: _Optional[_Mapping[str, EntityColumn]] = ..., request_features: _Optional[_Mapping[str, DoubleList]] = ...) -> None: ...

class TypedColumn(_message.Message):
    __slots__ = ("name", "dtype", "present", "lengths", "int64s", "doubles", "bools", "strings", "bytes")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    PRESENT_FIELD_NUMBER: _ClassVar[int]
    LENGTHS_FIELD_NUMBER: _ClassVar[int]
    INT64S_FIELD_NUMBER: _ClassVar[int]
    DOUBLES_FIELD_NUMBER: _ClassVar[int]
    BOOLS_FIELD_NUMBER: _ClassVar[int]
    STRINGS_FIELD_NUMBER: _ClassVar[int]
    BYTES_FIELD_NUMBER: _ClassVar[int]
    name: str
    dtype: str
    present: _containers.RepeatedScalarFieldContainer[bool]
    lengths: _containers.RepeatedScalarFieldContainer[int]
    int64s: Int64List
    doubles: DoubleList
    bools: BoolList
    strings: StringList
    bytes: BytesList
    def __init__(self, name: _Optional[str] = ..., dtype: _Optional[str] = ..., present: _Optional[_Iterable[bool]] = ..., lengths: _Optional[_Iterable[int]] = ..., int64s: _Optional[_Union[Int64List, _Mapping]] = ..., doubles: _Optional[_Union[DoubleList, _Mapping]] = ..., bools: _Optional[_Union[BoolList, _Mapping]] = ..., strings: _Optional[_Union[StringList, _Mapping]] = ..., bytes: _Optional[_Union[BytesList, _Mapping]] = ...) -> None: ...

class GetOnlineFeaturesResponse(_message.Message):
    __slots__ = ("features", "feature_status", "columns")
    FEATURES_FIELD_NUMBER: _ClassVar[int]
    FEATURE_STATUS_FIELD_NUMBER: _ClassVar[int]
    COLUMNS_FIELD_NUMBER: _ClassVar[int]
    features: FeatureMatrix
    feature_status: _containers.RepeatedCompositeFieldContainer[FeatureStatus]
    columns: _containers.RepeatedCompositeFieldContainer[TypedColumn]
    def __init__(self, features: _Optional[_Union[FeatureMatrix, _Mapping]] = ..., feature_status: _Optional[_Iterable[_Union[FeatureStatus, _Mapping]]] = ..., columns: _Optional[_Iterable[_Union[TypedColumn, _Mapping]]] = ...) -> None: ...

class ListFeatureServicesRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class FeatureServiceInfo(_message.Message):
    __slots__ = ("name", "served", "error", "features", "dtypes", "entities", "request_features")
    NAME_FIELD_NUMBER: _ClassVar[int]
    SERVED_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    FEATURES_FIELD_NUMBER: _ClassVar[int]
    DTYPES_FIELD_NUMBER: _ClassVar[int]
    ENTITIES_FIELD_NUMBER: _ClassVar[int]
    REQUEST_FEATURES_FIELD_NUMBER: _ClassVar[int]
    name: str
    served: bool
    error: str
    features: _containers.RepeatedScalarFieldContainer[str]
    dtypes: _containers.RepeatedScalarFieldContainer[str]
    entities: _containers.RepeatedScalarFieldContainer[str]
    request_features: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, name: _Optional[str] = ..., served: _Optional[bool] = ..., error: _Optional[str] = ..., features: _Optional[_Iterable[str]] = ..., dtypes: _Optional[_Iterable[str]] = ..., entities: _Optional[_Iterable[str]] = ..., request_features: _Optional[_Iterable[str]] = ...) -> None: ...

class ListFeatureServicesResponse(_message.Message):
    __slots__ = ("services",)
    SERVICES_FIELD_NUMBER: _ClassVar[int]
    services: _containers.RepeatedCompositeFieldContainer[FeatureServiceInfo]
    def __init__(self, services: _Optional[_Iterable[_Union[FeatureServiceInfo, _Mapping]]] = ...) -> None: ...

class ListModelsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ModelInfo(_message.Message):
    __slots__ = ("name", "version", "kind", "feature_service", "features", "request_features", "entities", "device", "versions", "outputs")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    FEATURE_SERVICE_FIELD_NUMBER: _ClassVar[int]
    FEATURES_FIELD_NUMBER: _ClassVar[int]
    REQUEST_FEATURES_FIELD_NUMBER: _ClassVar[int]
    ENTITIES_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    VERSIONS_FIELD_NUMBER: _ClassVar[int]
    OUTPUTS_FIELD_NUMBER: _ClassVar[int]
    name: str
    version: str
    kind: str
    feature_service: str
    features: _containers.RepeatedScalarFieldContainer[str]
    request_features: _containers.RepeatedScalarFieldContainer[str]
    entities: _containers.RepeatedScalarFieldContainer[str]
    device: str
    versions: _containers.RepeatedScalarFieldContainer[str]
    outputs: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, name: _Optional[str] = ..., version: _Optional[str] = ..., kind: _Optional[str] = ..., feature_service: _Optional[str] = ..., features: _Optional[_Iterable[str]] = ..., request_features: _Optional[_Iterable[str]] = ..., entities: _Optional[_Iterable[str]] = ..., device: _Optional[str] = ..., versions: _Optional[_Iterable[str]] = ..., outputs: _Optional[_Iterable[str]] = ...) -> None: ...

class ListModelsResponse(_message.Message):
    __slots__ = ("models",)
    MODELS_FIELD_NUMBER: _ClassVar[int]
    models: _containers.RepeatedCompositeFieldContainer[ModelInfo]
    def __init__(self, models: _Optional[_Iterable[_Union[ModelInfo, _Mapping]]] = ...) -> None: ...
