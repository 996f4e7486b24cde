"""The CUDA path of ExplainSession: provider options (TF32 off unless asked for, the chosen GPU), and, where
a GPU and onnxruntime-gpu are present, the CUDA session against the CPU session on a converted CNN."""

import numpy as np
import onnxruntime as ort
import pytest
import torch
from torch import nn

import lrpgraph
from lrpgraph.errors import LrpgraphError
from lrpgraph.runtime.session import CPU, CUDA, ExplainSession, choose_providers, cuda_options
from zennit_ref import export, l1


def cuda_missing():
    """Why the GPU comparison cannot run here, or None when it can."""
    if CUDA not in ort.get_available_providers():
        return f"onnxruntime has no CUDAExecutionProvider here (providers: {', '.join(ort.get_available_providers())})"
    if not torch.cuda.is_available():
        return "torch sees no CUDA device"
    return None


def test_cuda_options_keep_tf32_off_unless_asked():
    assert cuda_options() == {"use_tf32": "0", "device_id": "0"}
    assert cuda_options(tf32=True, device_id=1) == {"use_tf32": "1", "device_id": "1"}
    if CUDA in ort.get_available_providers():
        assert choose_providers("cuda") == [(CUDA, {"use_tf32": "0", "device_id": "0"}), CPU]
    else:
        assert choose_providers(None) == [CPU]
        with pytest.raises(LrpgraphError, match="no CUDAExecutionProvider"):
            choose_providers("cuda", tf32=True)


def test_device_id_is_checked():
    with pytest.raises(LrpgraphError, match="device_id must be a GPU index"):
        ExplainSession(b"", device_id=-1)


def small_cnn():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
                        nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                        nn.Linear(16, 10))
    with torch.no_grad():
        net[1].running_mean.uniform_(-0.5, 0.5)
        net[1].running_var.uniform_(0.5, 2.0)
    return export(net.eval(), torch.rand(2, 3, 32, 32))


def test_cuda_session_matches_cpu_session():
    reason = cuda_missing()
    if reason:
        print(f"CUDA session test skipped: {reason}")
        pytest.skip(reason)
    converted = lrpgraph.convert(small_cnn(), composite="epsilon-plus", target="index")
    x = np.random.default_rng(0).random((4, 3, 32, 32), dtype=np.float32)
    cpu = ExplainSession(converted, provider="cpu")
    gpu = ExplainSession(converted, provider="cuda")
    assert gpu.device == "cuda" and gpu.providers[0] == CUDA
    options = gpu.ort_session.get_provider_options()[CUDA]
    assert options["use_tf32"] == "0"
    logits_cpu, heat_cpu = cpu.explain(x, target=3)
    logits_gpu, heat_gpu = gpu.explain(x, target=3)  # numpy in, numpy out
    assert l1(logits_gpu, logits_cpu) <= 1e-5 and l1(heat_gpu, heat_cpu) <= 1e-5
    on_gpu = torch.from_numpy(x).cuda()
    logits_t, heat_t = gpu.explain(on_gpu, target=3)  # torch in, IO binding, results on the input's device
    assert heat_t.device == on_gpu.device and logits_t.device == on_gpu.device
    assert l1(heat_t.cpu().numpy(), heat_cpu) <= 1e-5
