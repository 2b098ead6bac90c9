from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Tensor(_message.Message):
    __slots__ = ("data", "dtype", "shape")
    DATA_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    data: bytes
    dtype: str
    shape: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, data: _Optional[bytes] = ..., dtype: _Optional[str] = ..., shape: _Optional[_Iterable[int]] = ...) -> None: ...

class CombineRequest(_message.Message):
    __slots__ = ("layer", "hidden", "expert_ids", "weights")
    LAYER_FIELD_NUMBER: _ClassVar[int]
    HIDDEN_FIELD_NUMBER: _ClassVar[int]
    EXPERT_IDS_FIELD_NUMBER: _ClassVar[int]
    WEIGHTS_FIELD_NUMBER: _ClassVar[int]
    layer: int
    hidden: Tensor
    expert_ids: Tensor
    weights: Tensor
    def __init__(self, layer: _Optional[int] = ..., hidden: _Optional[_Union[Tensor, _Mapping]] = ..., expert_ids: _Optional[_Union[Tensor, _Mapping]] = ..., weights: _Optional[_Union[Tensor, _Mapping]] = ...) -> None: ...

class CombineResponse(_message.Message):
    __slots__ = ("output",)
    OUTPUT_FIELD_NUMBER: _ClassVar[int]
    output: Tensor
    def __init__(self, output: _Optional[_Union[Tensor, _Mapping]] = ...) -> None: ...

class InfoRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ServerInfo(_message.Message):
    __slots__ = ("model_fingerprint", "model_type", "layers", "expert_ids", "dtype", "hidden_size", "num_experts", "group", "deployment", "device", "max_inflight", "max_message_bytes", "shm_endpoint", "shm_token")
    MODEL_FINGERPRINT_FIELD_NUMBER: _ClassVar[int]
    MODEL_TYPE_FIELD_NUMBER: _ClassVar[int]
    LAYERS_FIELD_NUMBER: _ClassVar[int]
    EXPERT_IDS_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    HIDDEN_SIZE_FIELD_NUMBER: _ClassVar[int]
    NUM_EXPERTS_FIELD_NUMBER: _ClassVar[int]
    GROUP_FIELD_NUMBER: _ClassVar[int]
    DEPLOYMENT_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    MAX_INFLIGHT_FIELD_NUMBER: _ClassVar[int]
    MAX_MESSAGE_BYTES_FIELD_NUMBER: _ClassVar[int]
    SHM_ENDPOINT_FIELD_NUMBER: _ClassVar[int]
    SHM_TOKEN_FIELD_NUMBER: _ClassVar[int]
    model_fingerprint: str
    model_type: str
    layers: _containers.RepeatedScalarFieldContainer[int]
    expert_ids: _containers.RepeatedScalarFieldContainer[int]
    dtype: str
    hidden_size: int
    num_experts: int
    group: str
    deployment: str
    device: str
    max_inflight: int
    max_message_bytes: int
    shm_endpoint: str
    shm_token: bytes
    def __init__(self, model_fingerprint: _Optional[str] = ..., model_type: _Optional[str] = ..., layers: _Optional[_Iterable[int]] = ..., expert_ids: _Optional[_Iterable[int]] = ..., dtype: _Optional[str] = ..., hidden_size: _Optional[int] = ..., num_experts: _Optional[int] = ..., group: _Optional[str] = ..., deployment: _Optional[str] = ..., device: _Optional[str] = ..., max_inflight: _Optional[int] = ..., max_message_bytes: _Optional[int] = ..., shm_endpoint: _Optional[str] = ..., shm_token: _Optional[bytes] = ...) -> None: ...
