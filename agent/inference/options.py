"""Runtime options: threads, XNNPACK, ONNX Runtime execution providers. Part of the agent's config tree."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

DEFAULT_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")


class RuntimeOptions(BaseModel):
    """How the inference runtimes are set up."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    num_threads: int | None = Field(
        None,
        ge=1,
        le=64,
        description="Intra-op threads for the runtime; None lets the runtime choose (all cores).",
    )
    xnnpack: bool = Field(
        True, description="LiteRT: apply the XNNPACK delegate (fast float and INT8 kernels)."
    )
    providers: tuple[str, ...] = Field(
        DEFAULT_PROVIDERS,
        description="ONNX Runtime execution providers in order of preference; those not installed are skipped, "
        "and CPUExecutionProvider is always the last resort.",
    )
    spinning: bool = Field(
        False,
        description="ONNX Runtime: let idle worker threads spin (lower latency, burns CPU an edge device needs).",
    )
    tensorrt_fp16: bool = Field(False, description="ONNX Runtime TensorRT provider: allow FP16 kernels.")
    tensorrt_cache_dir: str | None = Field(
        None,
        description="ONNX Runtime TensorRT provider: folder for built engines (saves minutes at each start).",
    )
