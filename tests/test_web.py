"""`lrpgraph web` in a real browser: Debian's chromium driven by playwright, the site served on 127.0.0.1.

Each bundled sample goes through the page's file input; the page's input tensor must equal
lrpgraph.runtime.images' exactly, and its relevance (onnxruntime-web, WASM) must equal Python
onnxruntime's within 1e-4 L1 relative, with the same predicted class. WebGPU runs on chromium's
software adapter (SwiftShader)."""

import functools
import http.server
import shutil
import subprocess
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lrpgraph.pipeline import convert
from lrpgraph.files import save
from lrpgraph.runtime.images import list_images, load_image
from lrpgraph.runtime.session import ExplainSession
from lrpgraph.web import HERE, build_site

DEMO = Path(__file__).resolve().parents[1] / "lrpgraph" / "data" / "demo"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
SWIFTSHADER = ["--enable-unsafe-webgpu", "--enable-features=Vulkan", "--use-webgpu-adapter=swiftshader"]
TIMEOUT_MS = 180_000  # generous: the 28 MB WASM compiles slowly on a loaded machine

if not CHROMIUM or not shutil.which("node"):
    missing = "chromium" if not CHROMIUM else "node"
    print(f"test_web skipped: {missing} is not installed (make test installs it)")
    pytest.skip(f"{missing} is not installed (make test installs it)", allow_module_level=True)


@pytest.fixture(scope="module")
def ort_web():
    if not (HERE / "node_modules" / "onnxruntime-web").is_dir():
        subprocess.run(["npm", "ci", "--no-audit", "--no-fund"], cwd=HERE, check=True, timeout=600)


def _site(tmp, name, preprocess, webgpu=False, samples=(), source=DEMO / "model.onnx"):
    labels = (DEMO / "labels.txt").read_text().split("\n")[:10]
    model = tmp / f"{name}.lrp.onnx"
    save(convert(str(source), labels=labels, preprocess=preprocess, webgpu=webgpu), model)
    return model, build_site(model, tmp / name, samples or [DEMO / "images"])


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("web")
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Quiet, directory=str(root)))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{httpd.server_port}"
    httpd.shutdown()
    httpd.server_close()
    thread.join(timeout=10)


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        instance = playwright.chromium.launch(executable_path=CHROMIUM, args=SWIFTSHADER)
        yield instance
        instance.close()


def wait_for(page, expression, timeout_ms=TIMEOUT_MS):
    """Poll a JS expression until it is true. (page.wait_for_function evaluates a string in the page, which the
    site's Content-Security-Policy forbids; page.evaluate runs through the debugger protocol.)"""
    waited = 0
    while not page.evaluate(expression):
        if waited > timeout_ms:
            raise TimeoutError(f"{expression} still false after {timeout_ms} ms")
        page.wait_for_timeout(100)
        waited += 100


def _open(browser, url, query=""):
    page = browser.new_page()
    page.goto(f"{url}/index.html{query}")
    wait_for(page, "window.pageReady !== undefined")
    return page


def _explain(page, file):
    page.evaluate("window.lastResult = null")
    page.set_input_files("#file", str(file))
    wait_for(page, "window.lastResult !== null")
    result = page.evaluate("window.lastResult")
    assert "error" not in result, result
    return result


def _check_against_python(page, model, files, preprocess_exact=True):
    session = ExplainSession(str(model), provider="cpu")
    worst = 0.0
    for file in files:
        result = _explain(page, file)
        x = load_image(file, session.preprocess, session.input_shape)
        if preprocess_exact:
            page_input = np.asarray(result["input"], np.float32).reshape(x.shape)
            np.testing.assert_array_equal(page_input, x, err_msg=file.name)
        logits, relevance = session.explain(x[None])
        web = np.asarray(result["relevance"], np.float64).reshape(relevance.shape)
        l1 = np.abs(web - relevance).sum() / np.abs(relevance).sum()
        assert l1 <= 1e-4, (file.name, l1)
        assert result["predicted"] == int(np.argmax(logits[0])), file.name
        worst = max(worst, l1)
    print(f"{model.name} on {page.evaluate('window.pageReady')}: {len(files)} images, largest L1 {worst:.1e}")


def test_samples_wasm(ort_web, server, browser, tmp_path):
    root, url = server
    model, _ = _site(root, "plain", {"mode": "L"})
    page = _open(browser, f"{url}/plain", "?backend=wasm")
    assert page.evaluate("window.pageReady") == "wasm"
    files = list_images(DEMO / "images")
    assert len(files) == 12
    _check_against_python(page, model, files)
    assert page.locator("#top5 li").count() == 5
    page.close()


def test_resize_crop_normalise(ort_web, server, browser, tmp_path):
    """RGB files of other sizes: PIL's RGB -> L, antialiased bilinear resize along one axis (shrinking and
    growing), centre crop with zero fill, mean/std, and an RGB model (BGR order, per-channel mean/std): the
    page's input tensor equals Python's exactly.
    (Resizes along both axes are left out: Pillow 13 runs its two passes in an order it picks itself.)"""
    root, url = server
    rng = np.random.default_rng(0)
    files = []
    for w, h in ((97, 30), (30, 61), (30, 22)):
        files.append(tmp_path / f"rgb_{w}x{h}.png")
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(files[-1])
    model, _ = _site(root, "resized", {"mode": "L", "resize": [30, 30], "crop": 28, "mean": [0.3], "std": [0.35]})
    page = _open(browser, f"{url}/resized", "?backend=wasm")
    _check_against_python(page, model, files[:2])
    page.close()
    model, _ = _site(root, "cropped", {"mode": "L", "crop": 28})  # 30 x 22 -> 28 x 28: zero rows added
    page = _open(browser, f"{url}/cropped", "?backend=wasm")
    _check_against_python(page, model, files[2:])
    page.close()
    rgb = {"mode": "RGB", "crop": 28, "channel_order": "BGR", "mean": [0.4, 0.5, 0.6], "std": [0.2, 0.3, 0.25]}
    model, _ = _site(root, "rgb", rgb, source=_rgb_model(root / "rgb.onnx"))
    page = _open(browser, f"{url}/rgb", "?backend=wasm")
    _check_against_python(page, model, files[2:])
    page.close()


def _ceil_mode_model(path):
    """A small CNN whose MaxPool has ceil_mode (26 -> 14 windows, not 13), then AveragePool and Linear."""
    import torch

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 6, 3), torch.nn.ReLU(), torch.nn.MaxPool2d(3, 2, 1, ceil_mode=True),
                              torch.nn.AvgPool2d(2), torch.nn.Flatten(), torch.nn.Linear(6 * 7 * 7, 10)).eval()
    torch.onnx.export(net, (torch.rand(1, 1, 28, 28),), str(path), dynamo=False, opset_version=17,
                      input_names=["image"], dynamic_axes={"image": {0: "n"}})
    return path


def _rgb_model(path):
    """A small CNN on RGB input [3, 28, 28]."""
    import torch

    torch.manual_seed(1)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 6, 3, padding=1), torch.nn.ReLU(), torch.nn.AvgPool2d(4),
                              torch.nn.Flatten(), torch.nn.Linear(6 * 7 * 7, 10)).eval()
    torch.onnx.export(net, (torch.rand(1, 3, 28, 28),), str(path), dynamo=False, opset_version=17,
                      input_names=["image"], dynamic_axes={"image": {0: "n"}})
    return path


def test_webgpu(ort_web, server, browser):
    """With --webgpu the graph runs on onnxruntime-web's WebGPU backend (SwiftShader here), ceil_mode MaxPool
    included; without it the MaxPool indices it cannot compute send the page to WASM, and it says why."""
    root, url = server
    ceil, _ = _site(root, "ceil", {"mode": "L"}, webgpu=True, source=_ceil_mode_model(root / "ceil.onnx"))
    _site(root, "nogpu", {"mode": "L"})
    page = _open(browser, f"{url}/ceil")
    if page.evaluate("window.pageReady") != "webgpu" and "no WebGPU adapter" in page.text_content("#backend"):
        pytest.skip(f"chromium has no WebGPU adapter here: {page.text_content('#backend')}")
    assert page.evaluate("window.pageReady") == "webgpu", page.text_content("#backend")
    _check_against_python(page, ceil, list_images(DEMO / "images")[:4])
    page.close()
    page = _open(browser, f"{url}/nogpu")
    assert page.evaluate("window.pageReady") == "wasm"
    assert "MaxPool with indices" in page.text_content("#backend")
    page.close()
