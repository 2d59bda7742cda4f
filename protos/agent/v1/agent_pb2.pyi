from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ProtocolVersion(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PROTOCOL_VERSION_UNSPECIFIED: _ClassVar[ProtocolVersion]
    PROTOCOL_VERSION_CURRENT: _ClassVar[ProtocolVersion]

class ArtifactKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ARTIFACT_KIND_UNSPECIFIED: _ClassVar[ArtifactKind]
    ARTIFACT_KIND_PTE: _ClassVar[ArtifactKind]
    ARTIFACT_KIND_TFLITE: _ClassVar[ArtifactKind]

class DType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DTYPE_UNSPECIFIED: _ClassVar[DType]
    DTYPE_FLOAT32: _ClassVar[DType]
    DTYPE_FLOAT16: _ClassVar[DType]
    DTYPE_INT8: _ClassVar[DType]
    DTYPE_UINT8: _ClassVar[DType]
    DTYPE_INT32: _ClassVar[DType]
    DTYPE_INT64: _ClassVar[DType]
    DTYPE_BOOL: _ClassVar[DType]
PROTOCOL_VERSION_UNSPECIFIED: ProtocolVersion
PROTOCOL_VERSION_CURRENT: ProtocolVersion
ARTIFACT_KIND_UNSPECIFIED: ArtifactKind
ARTIFACT_KIND_PTE: ArtifactKind
ARTIFACT_KIND_TFLITE: ArtifactKind
DTYPE_UNSPECIFIED: DType
DTYPE_FLOAT32: DType
DTYPE_FLOAT16: DType
DTYPE_INT8: DType
DTYPE_UINT8: DType
DTYPE_INT32: DType
DTYPE_INT64: DType
DTYPE_BOOL: DType

class GetInfoRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class RuntimeInfo(_message.Message):
    __slots__ = ("name", "version", "available", "artifact_kind", "unavailable_reason")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    AVAILABLE_FIELD_NUMBER: _ClassVar[int]
    ARTIFACT_KIND_FIELD_NUMBER: _ClassVar[int]
    UNAVAILABLE_REASON_FIELD_NUMBER: _ClassVar[int]
    name: str
    version: str
    available: bool
    artifact_kind: ArtifactKind
    unavailable_reason: str
    def __init__(self, name: _Optional[str] = ..., version: _Optional[str] = ..., available: _Optional[bool] = ..., artifact_kind: _Optional[_Union[ArtifactKind, str]] = ..., unavailable_reason: _Optional[str] = ...) -> None: ...

class Temperature(_message.Message):
    __slots__ = ("zone", "celsius")
    ZONE_FIELD_NUMBER: _ClassVar[int]
    CELSIUS_FIELD_NUMBER: _ClassVar[int]
    zone: str
    celsius: float
    def __init__(self, zone: _Optional[str] = ..., celsius: _Optional[float] = ...) -> None: ...

class DeviceInfo(_message.Message):
    __slots__ = ("agent_version", "protocol_version", "fingerprint", "hostname", "machine", "os", "board", "cpu_model", "cpu_count", "governor", "cpu_freq_mhz", "cpu_freq_min_mhz", "cpu_freq_max_mhz", "memory_total_bytes", "memory_available_bytes", "temperatures", "runtimes", "energy_meters", "max_artifact_bytes", "store_bytes_used", "store_capacity_bytes", "queue_depth", "queue_capacity", "energy_unavailable_reason")
    AGENT_VERSION_FIELD_NUMBER: _ClassVar[int]
    PROTOCOL_VERSION_FIELD_NUMBER: _ClassVar[int]
    FINGERPRINT_FIELD_NUMBER: _ClassVar[int]
    HOSTNAME_FIELD_NUMBER: _ClassVar[int]
    MACHINE_FIELD_NUMBER: _ClassVar[int]
    OS_FIELD_NUMBER: _ClassVar[int]
    BOARD_FIELD_NUMBER: _ClassVar[int]
    CPU_MODEL_FIELD_NUMBER: _ClassVar[int]
    CPU_COUNT_FIELD_NUMBER: _ClassVar[int]
    GOVERNOR_FIELD_NUMBER: _ClassVar[int]
    CPU_FREQ_MHZ_FIELD_NUMBER: _ClassVar[int]
    CPU_FREQ_MIN_MHZ_FIELD_NUMBER: _ClassVar[int]
    CPU_FREQ_MAX_MHZ_FIELD_NUMBER: _ClassVar[int]
    MEMORY_TOTAL_BYTES_FIELD_NUMBER: _ClassVar[int]
    MEMORY_AVAILABLE_BYTES_FIELD_NUMBER: _ClassVar[int]
    TEMPERATURES_FIELD_NUMBER: _ClassVar[int]
    RUNTIMES_FIELD_NUMBER: _ClassVar[int]
    ENERGY_METERS_FIELD_NUMBER: _ClassVar[int]
    MAX_ARTIFACT_BYTES_FIELD_NUMBER: _ClassVar[int]
    STORE_BYTES_USED_FIELD_NUMBER: _ClassVar[int]
    STORE_CAPACITY_BYTES_FIELD_NUMBER: _ClassVar[int]
    QUEUE_DEPTH_FIELD_NUMBER: _ClassVar[int]
    QUEUE_CAPACITY_FIELD_NUMBER: _ClassVar[int]
    ENERGY_UNAVAILABLE_REASON_FIELD_NUMBER: _ClassVar[int]
    agent_version: str
    protocol_version: int
    fingerprint: str
    hostname: str
    machine: str
    os: str
    board: str
    cpu_model: str
    cpu_count: int
    governor: str
    cpu_freq_mhz: _containers.RepeatedScalarFieldContainer[float]
    cpu_freq_min_mhz: float
    cpu_freq_max_mhz: float
    memory_total_bytes: int
    memory_available_bytes: int
    temperatures: _containers.RepeatedCompositeFieldContainer[Temperature]
    runtimes: _containers.RepeatedCompositeFieldContainer[RuntimeInfo]
    energy_meters: _containers.RepeatedScalarFieldContainer[str]
    max_artifact_bytes: int
    store_bytes_used: int
    store_capacity_bytes: int
    queue_depth: int
    queue_capacity: int
    energy_unavailable_reason: str
    def __init__(self, agent_version: _Optional[str] = ..., protocol_version: _Optional[int] = ..., fingerprint: _Optional[str] = ..., hostname: _Optional[str] = ..., machine: _Optional[str] = ..., os: _Optional[str] = ..., board: _Optional[str] = ..., cpu_model: _Optional[str] = ..., cpu_count: _Optional[int] = ..., governor: _Optional[str] = ..., cpu_freq_mhz: _Optional[_Iterable[float]] = ..., cpu_freq_min_mhz: _Optional[float] = ..., cpu_freq_max_mhz: _Optional[float] = ..., memory_total_bytes: _Optional[int] = ..., memory_available_bytes: _Optional[int] = ..., temperatures: _Optional[_Iterable[_Union[Temperature, _Mapping]]] = ..., runtimes: _Optional[_Iterable[_Union[RuntimeInfo, _Mapping]]] = ..., energy_meters: _Optional[_Iterable[str]] = ..., max_artifact_bytes: _Optional[int] = ..., store_bytes_used: _Optional[int] = ..., store_capacity_bytes: _Optional[int] = ..., queue_depth: _Optional[int] = ..., queue_capacity: _Optional[int] = ..., energy_unavailable_reason: _Optional[str] = ...) -> None: ...

class HasArtifactRequest(_message.Message):
    __slots__ = ("sha256",)
    SHA256_FIELD_NUMBER: _ClassVar[int]
    sha256: str
    def __init__(self, sha256: _Optional[str] = ...) -> None: ...

class HasArtifactResponse(_message.Message):
    __slots__ = ("present", "size_bytes")
    PRESENT_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    present: bool
    size_bytes: int
    def __init__(self, present: _Optional[bool] = ..., size_bytes: _Optional[int] = ...) -> None: ...

class ArtifactHeader(_message.Message):
    __slots__ = ("sha256", "size_bytes", "kind", "name")
    SHA256_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    sha256: str
    size_bytes: int
    kind: ArtifactKind
    name: str
    def __init__(self, sha256: _Optional[str] = ..., size_bytes: _Optional[int] = ..., kind: _Optional[_Union[ArtifactKind, str]] = ..., name: _Optional[str] = ...) -> None: ...

class ArtifactChunk(_message.Message):
    __slots__ = ("header", "data")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    header: ArtifactHeader
    data: bytes
    def __init__(self, header: _Optional[_Union[ArtifactHeader, _Mapping]] = ..., data: _Optional[bytes] = ...) -> None: ...

class UploadArtifactResponse(_message.Message):
    __slots__ = ("sha256", "size_bytes", "already_present")
    SHA256_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    ALREADY_PRESENT_FIELD_NUMBER: _ClassVar[int]
    sha256: str
    size_bytes: int
    already_present: bool
    def __init__(self, sha256: _Optional[str] = ..., size_bytes: _Optional[int] = ..., already_present: _Optional[bool] = ...) -> None: ...

class Tensor(_message.Message):
    __slots__ = ("shape", "dtype", "data")
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    shape: _containers.RepeatedScalarFieldContainer[int]
    dtype: DType
    data: bytes
    def __init__(self, shape: _Optional[_Iterable[int]] = ..., dtype: _Optional[_Union[DType, str]] = ..., data: _Optional[bytes] = ...) -> None: ...

class BenchPolicy(_message.Message):
    __slots__ = ("warmup_runs", "warmup_seconds", "min_runs", "min_seconds", "max_runs", "max_seconds", "max_temperature_c", "cooldown_timeout_seconds")
    WARMUP_RUNS_FIELD_NUMBER: _ClassVar[int]
    WARMUP_SECONDS_FIELD_NUMBER: _ClassVar[int]
    MIN_RUNS_FIELD_NUMBER: _ClassVar[int]
    MIN_SECONDS_FIELD_NUMBER: _ClassVar[int]
    MAX_RUNS_FIELD_NUMBER: _ClassVar[int]
    MAX_SECONDS_FIELD_NUMBER: _ClassVar[int]
    MAX_TEMPERATURE_C_FIELD_NUMBER: _ClassVar[int]
    COOLDOWN_TIMEOUT_SECONDS_FIELD_NUMBER: _ClassVar[int]
    warmup_runs: int
    warmup_seconds: float
    min_runs: int
    min_seconds: float
    max_runs: int
    max_seconds: float
    max_temperature_c: float
    cooldown_timeout_seconds: float
    def __init__(self, warmup_runs: _Optional[int] = ..., warmup_seconds: _Optional[float] = ..., min_runs: _Optional[int] = ..., min_seconds: _Optional[float] = ..., max_runs: _Optional[int] = ..., max_seconds: _Optional[float] = ..., max_temperature_c: _Optional[float] = ..., cooldown_timeout_seconds: _Optional[float] = ...) -> None: ...

class BenchmarkRequest(_message.Message):
    __slots__ = ("artifact_sha256", "runtime", "inputs", "input_seed", "threads", "policy", "return_outputs", "job_id", "timeout_seconds", "measure_energy")
    ARTIFACT_SHA256_FIELD_NUMBER: _ClassVar[int]
    RUNTIME_FIELD_NUMBER: _ClassVar[int]
    INPUTS_FIELD_NUMBER: _ClassVar[int]
    INPUT_SEED_FIELD_NUMBER: _ClassVar[int]
    THREADS_FIELD_NUMBER: _ClassVar[int]
    POLICY_FIELD_NUMBER: _ClassVar[int]
    RETURN_OUTPUTS_FIELD_NUMBER: _ClassVar[int]
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_SECONDS_FIELD_NUMBER: _ClassVar[int]
    MEASURE_ENERGY_FIELD_NUMBER: _ClassVar[int]
    artifact_sha256: str
    runtime: str
    inputs: _containers.RepeatedCompositeFieldContainer[Tensor]
    input_seed: int
    threads: int
    policy: BenchPolicy
    return_outputs: bool
    job_id: str
    timeout_seconds: float
    measure_energy: bool
    def __init__(self, artifact_sha256: _Optional[str] = ..., runtime: _Optional[str] = ..., inputs: _Optional[_Iterable[_Union[Tensor, _Mapping]]] = ..., input_seed: _Optional[int] = ..., threads: _Optional[int] = ..., policy: _Optional[_Union[BenchPolicy, _Mapping]] = ..., return_outputs: _Optional[bool] = ..., job_id: _Optional[str] = ..., timeout_seconds: _Optional[float] = ..., measure_energy: _Optional[bool] = ...) -> None: ...

class LatencyStats(_message.Message):
    __slots__ = ("count", "mean_ms", "std_ms", "cv", "min_ms", "p50_ms", "p90_ms", "p99_ms", "max_ms")
    COUNT_FIELD_NUMBER: _ClassVar[int]
    MEAN_MS_FIELD_NUMBER: _ClassVar[int]
    STD_MS_FIELD_NUMBER: _ClassVar[int]
    CV_FIELD_NUMBER: _ClassVar[int]
    MIN_MS_FIELD_NUMBER: _ClassVar[int]
    P50_MS_FIELD_NUMBER: _ClassVar[int]
    P90_MS_FIELD_NUMBER: _ClassVar[int]
    P99_MS_FIELD_NUMBER: _ClassVar[int]
    MAX_MS_FIELD_NUMBER: _ClassVar[int]
    count: int
    mean_ms: float
    std_ms: float
    cv: float
    min_ms: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    def __init__(self, count: _Optional[int] = ..., mean_ms: _Optional[float] = ..., std_ms: _Optional[float] = ..., cv: _Optional[float] = ..., min_ms: _Optional[float] = ..., p50_ms: _Optional[float] = ..., p90_ms: _Optional[float] = ..., p99_ms: _Optional[float] = ..., max_ms: _Optional[float] = ...) -> None: ...

class Energy(_message.Message):
    __slots__ = ("available", "meter", "method", "unavailable_reason", "sample_count", "mean_power_w", "idle_power_w", "joules_per_inference", "joules_per_inference_idle_subtracted")
    AVAILABLE_FIELD_NUMBER: _ClassVar[int]
    METER_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    UNAVAILABLE_REASON_FIELD_NUMBER: _ClassVar[int]
    SAMPLE_COUNT_FIELD_NUMBER: _ClassVar[int]
    MEAN_POWER_W_FIELD_NUMBER: _ClassVar[int]
    IDLE_POWER_W_FIELD_NUMBER: _ClassVar[int]
    JOULES_PER_INFERENCE_FIELD_NUMBER: _ClassVar[int]
    JOULES_PER_INFERENCE_IDLE_SUBTRACTED_FIELD_NUMBER: _ClassVar[int]
    available: bool
    meter: str
    method: str
    unavailable_reason: str
    sample_count: int
    mean_power_w: float
    idle_power_w: float
    joules_per_inference: float
    joules_per_inference_idle_subtracted: float
    def __init__(self, available: _Optional[bool] = ..., meter: _Optional[str] = ..., method: _Optional[str] = ..., unavailable_reason: _Optional[str] = ..., sample_count: _Optional[int] = ..., mean_power_w: _Optional[float] = ..., idle_power_w: _Optional[float] = ..., joules_per_inference: _Optional[float] = ..., joules_per_inference_idle_subtracted: _Optional[float] = ...) -> None: ...

class BenchmarkResult(_message.Message):
    __slots__ = ("job_id", "artifact_sha256", "runtime", "runtime_version", "threads", "latencies_ms", "stats", "load_ms", "first_run_ms", "warmup_runs", "timed_window_s", "peak_rss_bytes", "outputs", "output_sha256", "temperatures_before", "temperatures_after", "throttled", "throttle_reason", "energy", "fingerprint", "queued_s", "load_cached", "load_average_1m", "warmup_s")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    ARTIFACT_SHA256_FIELD_NUMBER: _ClassVar[int]
    RUNTIME_FIELD_NUMBER: _ClassVar[int]
    RUNTIME_VERSION_FIELD_NUMBER: _ClassVar[int]
    THREADS_FIELD_NUMBER: _ClassVar[int]
    LATENCIES_MS_FIELD_NUMBER: _ClassVar[int]
    STATS_FIELD_NUMBER: _ClassVar[int]
    LOAD_MS_FIELD_NUMBER: _ClassVar[int]
    FIRST_RUN_MS_FIELD_NUMBER: _ClassVar[int]
    WARMUP_RUNS_FIELD_NUMBER: _ClassVar[int]
    TIMED_WINDOW_S_FIELD_NUMBER: _ClassVar[int]
    PEAK_RSS_BYTES_FIELD_NUMBER: _ClassVar[int]
    OUTPUTS_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_SHA256_FIELD_NUMBER: _ClassVar[int]
    TEMPERATURES_BEFORE_FIELD_NUMBER: _ClassVar[int]
    TEMPERATURES_AFTER_FIELD_NUMBER: _ClassVar[int]
    THROTTLED_FIELD_NUMBER: _ClassVar[int]
    THROTTLE_REASON_FIELD_NUMBER: _ClassVar[int]
    ENERGY_FIELD_NUMBER: _ClassVar[int]
    FINGERPRINT_FIELD_NUMBER: _ClassVar[int]
    QUEUED_S_FIELD_NUMBER: _ClassVar[int]
    LOAD_CACHED_FIELD_NUMBER: _ClassVar[int]
    LOAD_AVERAGE_1M_FIELD_NUMBER: _ClassVar[int]
    WARMUP_S_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    artifact_sha256: str
    runtime: str
    runtime_version: str
    threads: int
    latencies_ms: _containers.RepeatedScalarFieldContainer[float]
    stats: LatencyStats
    load_ms: float
    first_run_ms: float
    warmup_runs: int
    timed_window_s: float
    peak_rss_bytes: int
    outputs: _containers.RepeatedCompositeFieldContainer[Tensor]
    output_sha256: _containers.RepeatedScalarFieldContainer[str]
    temperatures_before: _containers.RepeatedCompositeFieldContainer[Temperature]
    temperatures_after: _containers.RepeatedCompositeFieldContainer[Temperature]
    throttled: bool
    throttle_reason: str
    energy: Energy
    fingerprint: str
    queued_s: float
    load_cached: bool
    load_average_1m: float
    warmup_s: float
    def __init__(self, job_id: _Optional[str] = ..., artifact_sha256: _Optional[str] = ..., runtime: _Optional[str] = ..., runtime_version: _Optional[str] = ..., threads: _Optional[int] = ..., latencies_ms: _Optional[_Iterable[float]] = ..., stats: _Optional[_Union[LatencyStats, _Mapping]] = ..., load_ms: _Optional[float] = ..., first_run_ms: _Optional[float] = ..., warmup_runs: _Optional[int] = ..., timed_window_s: _Optional[float] = ..., peak_rss_bytes: _Optional[int] = ..., outputs: _Optional[_Iterable[_Union[Tensor, _Mapping]]] = ..., output_sha256: _Optional[_Iterable[str]] = ..., temperatures_before: _Optional[_Iterable[_Union[Temperature, _Mapping]]] = ..., temperatures_after: _Optional[_Iterable[_Union[Temperature, _Mapping]]] = ..., throttled: _Optional[bool] = ..., throttle_reason: _Optional[str] = ..., energy: _Optional[_Union[Energy, _Mapping]] = ..., fingerprint: _Optional[str] = ..., queued_s: _Optional[float] = ..., load_cached: _Optional[bool] = ..., load_average_1m: _Optional[float] = ..., warmup_s: _Optional[float] = ...) -> None: ...
