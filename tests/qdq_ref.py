"""An independent reference for quantized (QDQ) models: zennit's rules on a torch copy of the QDQ graph whose
layers hold the dequantized weights and whose activations are replayed from the int8 model itself.

The activations come from onnxruntime running the quantized model with its QDQ semantics (QuantizeLinear and
DequantizeLinear as written, fusion off: session.disable_quant_qdq), every DequantizeLinear output exposed.
Each one is replayed in torch with an identity backward (a Q -> DQ pair passes relevance), and so are
elementwise ops with a constant (lrpgraph's affine 'pass'); Conv, Gemm, the residual Add (zennit's Sum),
average pooling and max pooling are zennit's own modules and rules."""

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnx import helper, numpy_helper
from zennit.layer import Sum

AFFINE = ("Add", "Sub", "Mul", "Div")


def quantize(source, path, calibration, per_channel, activations="QInt8", weights="QInt8"):
    """onnxruntime.quantization.quantize_static (QDQ format) with calibration batches [N, C, H, W]."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    name = onnx.load(str(source)).graph.input[0].name

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.batches = iter([{name: calibration[i:i + 1]} for i in range(len(calibration))])

        def get_next(self):
            return next(self.batches, None)

    prepared = str(path) + ".pre.onnx"
    quant_pre_process(str(source), prepared)
    quantize_static(prepared, str(path), Reader(), quant_format=QuantFormat.QDQ, per_channel=per_channel,
                    activation_type=QuantType[activations], weight_type=QuantType[weights])
    return path


def dequantized(q, scale, zero_point, axis):
    q, scale = np.asarray(q, np.float64), np.asarray(scale, np.float64)
    zero_point = np.zeros_like(scale) if zero_point is None else np.asarray(zero_point, np.float64)
    if scale.size > 1:
        shape = [1] * q.ndim
        shape[axis] = -1
        scale, zero_point = scale.reshape(shape), zero_point.reshape(shape)
    else:
        scale, zero_point = scale.reshape(()), zero_point.reshape(())
    return (q - zero_point) * scale


def recorded_activations(model, x):
    """{DequantizeLinear output: value} of the QDQ model on x, onnxruntime without QDQ fusion."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    inits = {i.name for i in model.graph.initializer}
    names = [n.output[0] for n in model.graph.node if n.op_type == "DequantizeLinear" and n.input[0] not in inits]
    outputs = {o.name for o in model.graph.output}
    model.graph.output.extend(helper.make_tensor_value_info(t, onnx.TensorProto.FLOAT, None)
                              for t in names if t not in outputs)
    options = ort.SessionOptions()
    options.add_session_config_entry("session.disable_quant_qdq", "1")
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    values = session.run(names, {model.graph.input[0].name: np.asarray(x, np.float32)})
    return dict(zip(names, values))


class Replay(torch.autograd.Function):
    """Forward: a recorded value. Backward: the incoming gradient unchanged."""

    @staticmethod
    def forward(ctx, x, value):
        return value.clone()

    @staticmethod
    def backward(ctx, grad):
        return grad, None


class QDQGraph(torch.nn.Module):
    """The QDQ graph in torch (float64): Conv, Gemm, MaxPool, average pools, residual Add, Relu, Flatten,
    Reshape, affine ops with constants, and Q -> DQ pairs, which replay the recorded activations."""

    def __init__(self, model):
        super().__init__()
        self.graph = model.graph
        consts = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
        for node in model.graph.node:  # dequantize the weights, in float64
            if node.op_type == "DequantizeLinear" and node.input[0] in consts:
                args = [consts.get(t) if t else None for t in node.input] + [None]
                axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
                consts[node.output[0]] = dequantized(args[0], args[1], args[2], axis)
        self.consts = consts
        self.layers = torch.nn.ModuleDict()
        for i, node in enumerate(model.graph.node):
            layer = self._layer(node)
            if layer is not None:
                self.layers[str(i)] = layer

    def _layer(self, node):
        a = {x.name: helper.get_attribute_value(x) for x in node.attribute}
        c = self.consts
        if node.op_type == "Conv":
            w = torch.tensor(c[node.input[1]])
            pads = a.get("pads", [0, 0, 0, 0])
            assert pads[:2] == pads[2:], "symmetric padding only"
            conv = torch.nn.Conv2d(w.shape[1] * a.get("group", 1), w.shape[0], w.shape[2:], a.get("strides", 1),
                                   pads[:2], a.get("dilations", 1), a.get("group", 1), len(node.input) > 2)
            conv.weight.data = w
            if len(node.input) > 2:
                conv.bias.data = torch.tensor(c[node.input[2]])
            return conv.double()
        if node.op_type == "Gemm":
            w = torch.tensor(c[node.input[1]])
            linear = torch.nn.Linear(w.shape[1], w.shape[0]) if a.get("transB") else torch.nn.Linear(*w.shape)
            linear.weight.data = w if a.get("transB") else w.T.contiguous()
            linear.bias.data = torch.tensor(c[node.input[2]])
            return linear.double()
        if node.op_type == "MaxPool":
            pads = a.get("pads", [0, 0, 0, 0])
            return torch.nn.MaxPool2d(a["kernel_shape"], a.get("strides"), pads[:2], ceil_mode=bool(a.get("ceil_mode")))
        if node.op_type in ("GlobalAveragePool", "ReduceMean"):
            return torch.nn.AdaptiveAvgPool2d(1)
        if node.op_type == "Add" and not any(t in c for t in node.input):
            return Sum()
        if node.op_type == "Relu":
            return torch.nn.ReLU()
        return None

    def forward(self, x, recorded):
        env = {self.graph.input[0].name: x}
        for i, node in enumerate(self.graph.node):
            if node.op_type == "DequantizeLinear" and node.input[0] in self.consts or node.op_type == "QuantizeLinear":
                continue
            inputs = [env.get(t) for t in node.input]
            layer = self.layers[str(i)] if str(i) in self.layers else None
            if node.op_type == "DequantizeLinear":  # of an activation: the pair before it passes relevance
                value = torch.tensor(recorded[node.output[0]], dtype=torch.float64)
                out = Replay.apply(self._pair_input(node, env), value)
            elif node.op_type == "Add" and isinstance(layer, Sum):
                out = layer(torch.stack(inputs[:2], dim=-1))
            elif node.op_type in AFFINE:  # with a constant: 'pass', as lrpgraph's affine rule
                dynamic = inputs[0] if inputs[0] is not None else inputs[1]
                out = Replay.apply(dynamic, self._affine(node, inputs))
            elif node.op_type == "ReduceMean" or node.op_type == "GlobalAveragePool":
                out = layer(inputs[0])
            elif node.op_type in ("Flatten", "Reshape"):
                out = inputs[0].reshape(inputs[0].shape[0], -1)
            elif layer is not None:
                out = layer(inputs[0])
            else:
                raise NotImplementedError(node.op_type)
            env[node.output[0]] = out
        return env[self.graph.output[0].name]

    def _pair_input(self, node, env):
        """The tensor before the QuantizeLinear that feeds this DequantizeLinear."""
        q = next(n for n in self.graph.node if node.input[0] in n.output)
        return env[q.input[0]]

    def _affine(self, node, inputs):
        values = [torch.tensor(self.consts[t], dtype=torch.float64) if v is None else v
                  for t, v in zip(node.input, inputs)]
        return {"Add": torch.add, "Sub": torch.sub, "Mul": torch.mul, "Div": torch.div}[node.op_type](*values).detach()


def qdq_relevance(path, x, composite):
    """zennit's relevance of the QDQ model at path for x (float32 [N, C, H, W]), seed y_c at the top class."""
    model = onnx.load(str(path))
    recorded = recorded_activations(model, x)
    net = QDQGraph(model)
    inputs = torch.tensor(x, dtype=torch.float64, requires_grad=True)
    with composite.context(net) as modified:
        y = modified(inputs, recorded)
        top = y.argmax(1)
        seed = torch.zeros_like(y)
        seed[torch.arange(len(top)), top] = y[torch.arange(len(top)), top]
        (relevance,) = torch.autograd.grad(y, inputs, seed.detach())
    return y.detach().numpy(), relevance.numpy()
