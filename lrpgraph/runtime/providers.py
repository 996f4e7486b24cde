"""onnxruntime execution providers for ExplainSession: CUDA when present (TF32 off unless asked for), else CPU."""

from lrpgraph.errors import LrpgraphError
from lrpgraph.ort import onnxruntime as ort

CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"


def cuda_options(tf32: bool = False, device_id: int = 0) -> dict:
    """CUDA provider options: TF32 off unless asked for (TF32 matmuls and convolutions change heatmaps by
    about 1e-3), on the given GPU."""
    return {"use_tf32": "1" if tf32 else "0", "device_id": str(int(device_id))}


def choose_providers(provider: "str | None", tf32: bool = False, device_id: int = 0) -> list:
    """The ORT provider list for provider None (CUDA when available), 'cpu' or 'cuda'; CUDA with
    cuda_options(tf32, device_id)."""
    available = ort.get_available_providers()
    name = None if provider is None else str(provider).lower()
    cuda = (CUDA, cuda_options(tf32, device_id))
    if name is None:
        return [cuda, CPU] if CUDA in available else [CPU]
    if name in ("cpu", CPU.lower()):
        return [CPU]
    if name in ("cuda", "gpu", CUDA.lower()):
        if CUDA not in available:
            raise LrpgraphError(
                "provider 'cuda' asked for, but this onnxruntime has no CUDAExecutionProvider "
                f"(available: {', '.join(available)}); install onnxruntime-gpu or use provider 'cpu'"
            )
        return [cuda, CPU]
    raise LrpgraphError(f"unknown provider {provider!r}; use 'cpu', 'cuda' or leave it out to pick CUDA when present")
