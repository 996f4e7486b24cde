"""The ONNX -> torch importer (lrpgraph.train.importer) and the write-back (lrpgraph.train.export).

Exported torchvision models are cached in pytest's cache (keyed by torch and zennit_ref.py), since the
dynamo export of densenet121 alone takes a minute on a loaded 2-core machine; the imported graphs are
run single-threaded (OpenMP threads fighting over shared cores make torch's CPU convolutions 100x slower).

The importer (float32) and onnxruntime are each compared with the importer run in float64, under a fixed
1e-5 L1 bound, on well-conditioned cases: the
'seed' cases seed every class with its own logit times a random factor, so that the dense layer's
epsilon rule divides no relevance by a near-zero logit (a random seed on 1000 random logits makes a few
classes amplify float32 rounding by 1e4, and any two float32 implementations then differ by ~1e-3), and
epsilon and stabilizer are 0.01: at 1e-6 the norm rule of DenseNet's transition pooling (an average of
signed convolution outputs) divides by sums whose float32 rounding is amplified to 3e-4 (L1) in both
float32 implementations alike."""

import hashlib
import os

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper
from torch import nn

import lrpgraph
from lrpgraph.errors import LrpgraphError, NotConvertedError
from lrpgraph.train.export import write_back
from lrpgraph.train.importer import import_onnx
from lrpgraph.train.loss import heatmap_loss
from zennit_ref import export, l1, torchvision_model

REL = "relevance"
STABLE = dict(epsilon=0.01, stabilizer=0.01)  # see the module docstring



def cached_export(pytestconfig, name, make):
    """ONNX bytes of make() -> (model, example), exported once per torch version and zennit_ref.py."""
    import zennit_ref

    with open(zennit_ref.__file__, "rb") as f:
        key = hashlib.sha1(f.read() + torch.__version__.encode() + name.encode()).hexdigest()[:12]
    path = os.path.join(pytestconfig.cache.mkdir("lrpgraph-importer"), f"{name}-{key}.onnx")
    if not os.path.exists(path):
        model, example = make()
        export(model, example, path + ".tmp")
        os.replace(path + ".tmp", path)
    with open(path, "rb") as f:
        return f.read()


def session(model):
    data = model if isinstance(model, bytes) else model.SerializeToString()
    return ort.InferenceSession(data, providers=["CPUExecutionProvider"])


def ort_outputs(model, feeds):
    s = session(model)
    names = [o.name for o in s.get_outputs()]
    return dict(zip(names, s.run(None, {k: np.asarray(v) for k, v in feeds.items()})))


def assert_matches(module, feeds, ref, what):
    """The importer in float32 and onnxruntime (ref) each within 1e-5 (L1) of the importer run in float64: two
    independent implementations of the graph's ops, each held to a fixed bound against the exact result."""
    with torch.no_grad():
        ours = {k: v.numpy() for k, v in module.run(feeds).items()}
        exact = {k: v.numpy() for k, v in module.double().run(feeds).items()}
    module.float()
    errors = {f"{who} {name}": l1(np.asarray(values[name], np.float64), exact[name])
              for name in ref for who, values in (("torch", ours), ("onnxruntime", ref))}
    print(f"{what}: L1 against float64 {errors}")
    assert max(errors.values()) <= 1e-5, f"{what}: L1 {errors} against the float64 run exceeds 1e-5"


# ---- 1. torchvision models match onnxruntime ---------------------------------------------------------
ARCHS = ["resnet18", "densenet121", "mobilenet_v2"]


@pytest.fixture(scope="module", params=ARCHS)
def arch(request, pytestconfig):
    def make():
        return torchvision_model(request.param)[0], torch.rand(2, 3, 64, 64)

    return request.param, cached_export(pytestconfig, request.param, make)


@pytest.mark.parametrize("composite,target", [("epsilon-plus", "top"), ("epsilon-plus", "seed"), ("flex", "top"),
                                              ("flex", "seed")])
def test_torchvision_models_match_onnxruntime(arch, composite, target):
    name, plain = arch
    model = lrpgraph.convert(onnx.load_from_string(plain), composite=composite, target=target, **STABLE)
    module = import_onnx(model)
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    feeds = {module.image_input: x.numpy()}
    if target == "seed":  # each logit times a random factor (see the module docstring)
        logits = ort_outputs(plain, feeds)[session(plain).get_outputs()[0].name]
        factors = np.random.default_rng(0).standard_normal((2, 1000))
        feeds["relevance_seed"] = (logits * factors).astype(np.float32)
    assert_matches(module, feeds, ort_outputs(model, feeds), f"{name} {composite} {target}")
    with torch.no_grad():  # forward() gives the same as run()
        logits, relevance = module(x, seed=feeds.get("relevance_seed"))
    assert relevance.shape == x.shape and logits.shape == (2, 1000)


# ---- a small CNN with a residual add, a concat, overlapping max pooling and a standalone BatchNorm -------
class Small(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1)
        self.pool = nn.MaxPool2d(3, 2, 1)  # overlapping windows: a pixel can win several
        self.conv2 = nn.Conv2d(4, 4, 3, padding=1)
        self.conv3 = nn.Conv2d(4, 3, 1)
        self.bn = nn.BatchNorm2d(7)
        self.fc = nn.Linear(7, 5)

    def forward(self, x):
        a = self.pool(torch.relu(self.conv1(x)))
        r = torch.relu(a + self.conv2(a))
        c = torch.relu(self.bn(torch.cat([r, self.conv3(a)], 1)))
        return self.fc(c.mean((2, 3)))


def make_small():
    torch.manual_seed(0)
    model = Small().eval()
    with torch.no_grad():
        model.bn.running_mean.uniform_(-0.2, 0.2)
        model.bn.running_var.uniform_(0.5, 1.5)
        model.bn.weight.uniform_(0.5, 1.5)
        model.bn.bias.uniform_(-0.1, 0.1)
    return model, torch.rand(2, 3, 12, 12)


@pytest.fixture(scope="module")
def small(pytestconfig):
    return cached_export(pytestconfig, "small", make_small)


def image(n, seed=1):
    return torch.rand(n, 3, 12, 12, generator=torch.Generator().manual_seed(seed))


# ---- 2. gradients of a heatmap loss: finite differences, and both paths of a shared parameter -----------
def heatmap_objective(module, x, mask, target):
    logits, relevance = module(x, target=target)
    return (relevance * mask).sum() + 0.1 * logits.sum()


@pytest.mark.parametrize("composite", ["epsilon-plus", "flex"])
def test_weight_gradients_match_finite_differences(small, composite):
    module = import_onnx(lrpgraph.convert(onnx.load_from_string(small), composite=composite,
                                          target="index")).double()
    x, target = image(2).double(), torch.tensor([1, 3])
    mask = torch.randn(2, 3, 12, 12, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    loss = heatmap_objective(module, x, mask, target)
    params = dict(module.weights.items())
    grads = dict(zip(params, torch.autograd.grad(loss, list(params.values()))))
    checked = 0
    for key, p in params.items():
        i = int(grads[key].abs().argmax())  # the most sensitive entry of each weight tensor
        flat, h = p.data.view(-1), 1e-6
        with torch.no_grad():
            old = flat[i].item()
            flat[i] = old + h
            up = heatmap_objective(module, x, mask, target).item()
            flat[i] = old - h
            down = heatmap_objective(module, x, mask, target).item()
            flat[i] = old
        fd, g = (up - down) / (2 * h), grads[key].view(-1)[i].item()
        assert abs(fd - g) <= 1e-4 * abs(g) + 1e-9, f"{module.onnx_names[key]}[{i}]: autograd {g}, FD {fd}"
        checked += 1
    assert checked >= 6
    # a parameter read by the forward and the relevance path gets gradient from both, and they add up
    conv = next(k for k in params if module.onnx_names[k].startswith("conv1"))
    relevance_nodes = lambda name: name.startswith("lrp/")  # noqa: E731
    forward_nodes = lambda name: not name.startswith("lrp/")  # noqa: E731

    def grad_with(detach):
        logits, relevance = (module.run({module.image_input: x, "target": target}, detach=detach)[k]
                             for k in (module.logits_output, REL))
        return torch.autograd.grad((relevance * mask).sum() + 0.1 * logits.sum(), params[conv])[0]

    through_forward, through_relevance = grad_with(relevance_nodes), grad_with(forward_nodes)
    assert through_forward.abs().sum() > 0 and through_relevance.abs().sum() > 0
    torch.testing.assert_close(through_forward + through_relevance, grads[conv], rtol=1e-10, atol=1e-12)


def test_heatmap_loss_trains_the_weights(small):
    module = import_onnx(lrpgraph.convert(onnx.load_from_string(small), composite="flex", target="top"))
    mask = torch.zeros(2, 1, 12, 12)
    mask[..., 3:9, 3:9] = 1
    _, relevance = module(image(2))
    loss = heatmap_loss(relevance, mask).total
    loss.backward()
    grads = {module.onnx_names[k]: p.grad for k, p in module.weights.items()}
    assert all(torch.isfinite(g).all() for g in grads.values() if g is not None)
    # flex's heatmap (input x modified gradient of a one-hot seed) does not depend on the last bias
    assert [k for k, g in grads.items() if g is None or not g.abs().sum() > 0] == ["fc.bias"]


# ---- 3. write back ----------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_write_back_round_trip(small, tmp_path, dtype):
    plain_path, explained_path = tmp_path / "plain.onnx", tmp_path / "explained.onnx"
    plain_path.write_bytes(small)
    onnx.save(lrpgraph.convert(onnx.load_from_string(small), composite="flex", target="index"), explained_path)
    module = import_onnx(explained_path).to(dtype)
    before = {k: p.detach().clone() for k, p in module.weights.items()}
    optimizer = torch.optim.SGD(module.parameters(), lr=0.05)
    for _ in range(2):  # change the parameters by training
        optimizer.zero_grad()
        logits, relevance = module(image(2), target=torch.tensor([0, 4]))
        (nn.functional.cross_entropy(logits, torch.tensor([0, 4])) + relevance.abs().mean()).backward()
        optimizer.step()
    assert all(not torch.equal(before[k], p) for k, p in module.weights.items())
    out_plain, out_explained = tmp_path / "plain2.onnx", tmp_path / "explained2.onnx"
    report = write_back(module, plain_path, explained_path, out_plain, out_explained)
    assert report["written"]["plain"] == len(onnx.load(plain_path).graph.initializer) > 0
    assert max(report["errors"].values()) <= 1e-5
    # reload both in onnxruntime and compare with the module
    x, target = image(3, seed=7), torch.tensor([2, 0, 1])
    with torch.no_grad():
        logits, relevance = module(x, target=target)
    got = ort_outputs(out_explained.read_bytes(), {module.image_input: x.numpy(), "target": target.numpy()})
    assert logits.dtype == dtype and l1(got[module.logits_output], logits.numpy()) <= 1e-5
    assert l1(got[REL], relevance.numpy()) <= 1e-5
    plain_logits = ort_outputs(out_plain.read_bytes(), {module.image_input: x.numpy()})
    assert l1(next(iter(plain_logits.values())), logits.numpy()) <= 1e-5
    # the plain model's initializers equal the explained model's and the module's, bit for bit
    new = {i.name: onnx.numpy_helper.to_array(i) for i in onnx.load(out_explained).graph.initializer}
    for init in onnx.load(out_plain).graph.initializer:
        value = onnx.numpy_helper.to_array(init)
        assert value.tobytes() == new[init.name].tobytes()
        assert value.tobytes() == module.tensor(init.name).detach().numpy().astype(value.dtype).tobytes()


def test_write_back_refuses_another_model(small, tmp_path):
    plain_path = tmp_path / "plain.onnx"
    plain_path.write_bytes(small)
    onnx.save(lrpgraph.convert(onnx.load_from_string(small)), tmp_path / "explained.onnx")
    other = helper.make_model(helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                                                [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                                                [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])]))
    with pytest.raises(LrpgraphError, match="shares no initializer"):
        write_back(import_onnx(tmp_path / "explained.onnx"), _save(other, tmp_path / "other.onnx"),
                   tmp_path / "explained.onnx", tmp_path / "a.onnx", tmp_path / "b.onnx")


def _save(model, path):
    onnx.save(model, path)
    return path


# ---- 4. double, batch sizes, unconverted models ------------------------------------------------------
def test_double_and_batch_sizes(small):
    model = lrpgraph.convert(onnx.load_from_string(small), composite="epsilon-plus", target="index")
    module = import_onnx(model).double()
    assert all(t.dtype == torch.float64 for t in module.weights.values())
    assert all(t.dtype in (torch.float64, torch.int64) for t in module.consts.buffers())
    five, target = image(5, seed=4), torch.tensor([0, 1, 2, 3, 4])
    with torch.no_grad():
        logits, relevance = module(five, target=target)
        assert logits.dtype == relevance.dtype == torch.float64
        ref = ort_outputs(model, {module.image_input: five.numpy(), "target": target.numpy()})
        assert l1(logits.numpy(), ref[module.logits_output]) <= 1e-5 and l1(relevance.numpy(), ref[REL]) <= 1e-5
        for i in (0, 4):  # batch size 1 gives each sample's result: no coupling between samples
            one_logits, one = module(five[i:i + 1], target=target[i:i + 1])
            torch.testing.assert_close(one, relevance[i:i + 1], rtol=1e-12, atol=1e-14)
    with pytest.raises(LrpgraphError, match="target 'index'"):
        module(five)


def test_derived_input_is_computed_inside_the_run(small):
    """A seed computed from the logits inside one run gives what feeding that seed gives (in torch, and in
    onnxruntime); an input whose source depends on it is refused."""
    model = lrpgraph.convert(onnx.load_from_string(small), composite="epsilon-plus", target="seed", **STABLE)
    module = import_onnx(model)
    x, seed_input = image(4, seed=5), "relevance_seed"
    with torch.no_grad():
        out = module.run({module.image_input: x}, [module.logits_output, REL],
                         derived={seed_input: (module.logits_output, lambda y: y * (y == y.max(1, True).values))})
        logits = out[module.logits_output]
        feeds = {module.image_input: x.numpy(), seed_input: (logits * (logits == logits.max(1, True).values)).numpy()}
        fed = module.run(feeds, [REL])[REL]
    torch.testing.assert_close(out[REL], fed, rtol=1e-6, atol=1e-9)
    assert_matches(module, feeds, ort_outputs(model, feeds), "derived seed")
    with pytest.raises(LrpgraphError, match="the source depends on the input"):
        module.run({module.image_input: x}, [REL], derived={seed_input: (REL, lambda r: r)})


def test_unconverted_model_imports_for_the_plain_forward(small):
    module = import_onnx(small)
    assert module.config is None
    floats = {module.onnx_names[k] for k, b in module.consts.named_buffers() if b.is_floating_point()}
    assert floats == {"bn.running_mean", "bn.running_var"}  # every other float initializer is a parameter
    assert len(module.weights) == 10
    x = image(5)
    expected = next(iter(ort_outputs(small, {module.image_input: x.numpy()}).values()))
    with torch.no_grad():
        assert l1(module.logits(x).numpy(), expected) <= 1e-6
        assert l1(module.run({module.image_input: x})[module.logits_output].numpy(), expected) <= 1e-6
    with pytest.raises(NotConvertedError, match="not converted by lrpgraph"):
        module(x)


def test_unsupported_op_is_named():
    graph = helper.make_graph([helper.make_node("Hardmax", ["x"], ["y"], name="head")], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    with pytest.raises(LrpgraphError, match="'head' .*Hardmax"):
        import_onnx(helper.make_model(graph))


class Zoo(nn.Module):
    """The other activations, a squeeze-excitation gate, a padded average pool, a transpose, a softmax output."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 3, padding=1)
        self.prelu = nn.PReLU(6, 0.2)
        self.conv2 = nn.Conv2d(6, 6, 3, stride=2, padding=1)
        self.excite = nn.Conv2d(6, 6, 1)
        self.pool = nn.AvgPool2d(3, 2, 1, count_include_pad=False)
        self.fc = nn.Linear(54, 4)

    def forward(self, x):
        a = self.prelu(nn.functional.leaky_relu(self.conv1(x), 0.1))
        b = nn.functional.hardswish(self.conv2(a))
        c = nn.functional.relu6(b * torch.sigmoid(self.excite(b.mean((2, 3), keepdim=True))))
        d = torch.tanh(torch.flatten(self.pool(c).transpose(2, 3), 1))
        return torch.softmax(self.fc(d), 1)


@pytest.mark.parametrize("composite,target", [("epsilon-gamma-box", "top"), ("epsilon-alpha2-beta1", "index"),
                                              ("flex", "index"), ("epsilon-plus-flat", "seed")])
def test_other_ops_match_onnxruntime(pytestconfig, composite, target):
    plain = cached_export(pytestconfig, "zoo", lambda: (Zoo().eval(), torch.rand(2, 3, 12, 12)))
    model = lrpgraph.convert(onnx.load_from_string(plain), composite=composite, target=target)
    module = import_onnx(model)
    x = image(3, seed=5)
    feeds = {module.image_input: x.numpy(), "target": np.array([0, 3, 1]),
             "relevance_seed": np.random.default_rng(1).standard_normal((3, 4)).astype(np.float32)}
    feeds = {k: v for k, v in feeds.items() if k in {i.name for i in session(model).get_inputs()}}
    assert_matches(module, feeds, ort_outputs(model, feeds), f"zoo {composite} {target}")
    ops = {n.op_type for n in model.graph.node}
    assert {"PRelu", "LeakyRelu", "HardSwish", "Sigmoid", "Clip", "AveragePool", "Transpose", "Softmax"} <= ops
