"""Pages lrpgraph writes, opened in the real browser (Debian's chromium driven by playwright, as test_web.py),
with attack payloads in the strings that come from outside: an image file name, a class label (from
`convert --labels` and from the model's metadata), a token string from tokenizer.json, the model's file name.
No script runs (the test listens for dialogs and for the payload's side effect) and the text is visible as
written. The web site's Content-Security-Policy lets onnxruntime-web run (no violation while it explains a
sample) and blocks an inline script injected into the page."""

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from PIL import Image

from lrpgraph import metadata
from lrpgraph.cli import main
from lrpgraph.pipeline import convert
from lrpgraph.files import save
from lrpgraph.web import build_site
import test_web  # skips this module too without chromium or node
from test_web import DEMO, wait_for

browser, ort_web, server = test_web.browser, test_web.ort_web, test_web.server  # its fixtures, shared

NAME = "<img src=x onerror=alert(1)>"  # a file name cannot hold '/'
TEXT = "</title></b><script>alert(2);window.pwned=1</script><img src=x onerror=\"window.pwned=1\">"
WATCH = ("window.pwned = undefined; window.violations = [];"
         "document.addEventListener('securitypolicyviolation', e => window.violations.push(e.violatedDirective));")


def _page(browser, url):
    """A browser page at url; returns (page, dialogs it opened)."""
    page = browser.new_page()
    dialogs = []
    page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
    page.add_init_script(WATCH)
    page.goto(url)
    return page, dialogs


def _nothing_ran(page, dialogs):
    page.wait_for_timeout(300)  # an onerror handler fires once the broken image has failed
    assert dialogs == [] and page.evaluate("window.pwned") is None
    assert page.evaluate("document.querySelectorAll('[onerror], script:not([src]):not([type])').length") == 0


def test_explain_page_shows_a_hostile_file_name_and_label_as_text(browser, tmp_path):
    labels = tmp_path / "labels.txt"
    labels.write_text("\n".join(f"{TEXT}{i}" for i in range(10)), encoding="utf-8")
    model = tmp_path / "model.lrp.onnx"
    runner = CliRunner()
    result = runner.invoke(main, ["convert", str(DEMO / "model.onnx"), "-o", str(model), "--labels", str(labels)])
    assert result.exit_code == 0, result.output
    images = tmp_path / "images"
    images.mkdir()
    shutil.copyfile(next((DEMO / "images").glob("*.png")), images / f"{NAME}.png")
    result = runner.invoke(main, ["explain", str(model), str(images), "-o", str(tmp_path / "out"), "--html", "-q"])
    assert result.exit_code == 0, result.output
    page, dialogs = _page(browser, (tmp_path / "out" / "index.html").as_uri())
    body = page.inner_text("body")
    assert f"{NAME}.png" in body and TEXT in body, body[:400]
    _nothing_ran(page, dialogs)
    assert page.locator("img").count() >= 2
    page.close()


def test_token_page_shows_hostile_token_strings_as_text(browser, tmp_path):
    sys.path.insert(0, str(Path(__file__).parent / "transformers"))
    pytest.importorskip("transformers")
    import transformer_models as tm

    ids, mask, types = tm.text_batch(n=1)
    model = tmp_path / "bert.lrp.onnx"
    save(convert(tm.export_text_model(tm.bert(seed=0), ids, mask, types), composite="attn-lrp"), model)
    vocab = {"model": {"vocab": {f"{TEXT}{i}": i for i in range(120)}}}
    (tmp_path / "tokenizer.json").write_text(json.dumps(vocab), encoding="utf-8")
    np.save(tmp_path / f"{NAME}.npy", ids.numpy())
    result = CliRunner().invoke(main, ["explain", str(model), str(tmp_path / f"{NAME}.npy"), "--vocab",
                                       str(tmp_path / "tokenizer.json"), "-o", str(tmp_path / "tok")])
    assert result.exit_code == 0, result.output
    page, dialogs = _page(browser, (tmp_path / "tok" / "index.html").as_uri())
    body = page.inner_text("body")
    assert f"{TEXT}{int(ids[0, 1])}" in body and f"{NAME}.npy" in body, body[:400]
    _nothing_ran(page, dialogs)
    page.close()


def test_web_site_shows_hostile_metadata_and_names_as_text_under_its_csp(ort_web, server, browser):
    root, url = server
    model = convert(onnx.load(DEMO / "model.onnx"), preprocess={"mode": "L"})
    metadata.write(model, metadata.LABELS, [f"{TEXT}{i}" for i in range(10)])
    path = root / f"{NAME}.lrp.onnx"
    save(model, path)
    samples = root / "hostile_samples"
    samples.mkdir()
    Image.open(next((DEMO / "images").glob("*.png"))).save(samples / f"{NAME}.png")
    build_site(path, root / "hostile", [samples])
    page, dialogs = _page(browser, f"{url}/hostile/index.html?backend=wasm")
    wait_for(page, "window.pageReady !== undefined")
    assert page.inner_text("#title") == f"lrpgraph: {NAME}.lrp.onnx"
    button = page.locator("#samples button")
    assert button.inner_text() == f"{NAME}.png"
    page.evaluate("window.lastResult = null")
    button.click()
    wait_for(page, "window.lastResult !== null")
    assert "error" not in page.evaluate("window.lastResult")
    assert TEXT in page.inner_text("#top5") and TEXT in page.inner_text("#status")
    _nothing_ran(page, dialogs)
    assert page.evaluate("window.violations") == []  # onnxruntime-web ran (WASM) without breaking the policy
    page.evaluate("() => { const s = document.createElement('script'); s.textContent = 'window.pwned = 1';"
                  " document.body.appendChild(s); }")
    page.wait_for_timeout(200)
    assert page.evaluate("window.pwned") is None and "script-src-elem" in page.evaluate("window.violations")
    page.close()


def test_json_embedded_in_a_page_stays_data(browser, tmp_path):
    from lrpgraph.runtime.html_safe import script_json, text

    data = {"labels": [TEXT, "\u2028", NAME], "file": f"{NAME}.png"}
    page_text = (f"<!doctype html><html><head><meta charset='utf-8'><title>{text(TEXT)}</title></head><body>"
                 f"<p id='name'>{text(NAME)}</p>{script_json(data, 'data')}</body></html>")
    (tmp_path / "page.html").write_text(page_text, encoding="utf-8")
    page, dialogs = _page(browser, (tmp_path / "page.html").as_uri())
    assert page.evaluate("JSON.parse(document.getElementById('data').textContent)") == data
    assert page.inner_text("#name") == NAME and page.title() == TEXT
    assert page.evaluate("document.querySelectorAll('[onerror], script:not([src]):not([type])').length") == 0
    page.wait_for_timeout(300)
    assert dialogs == [] and page.evaluate("window.pwned") is None
    page.close()


def _small_net(channels_out, flat):
    """A small conv net with random weights as ONNX bytes: a toy detector ([N, 4 + 2, H * W]: boxes and two class
    scores per pixel, flat) or segmenter ([N, channels_out, H, W])."""
    import torch

    from zennit_ref import export

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(),
                                            torch.nn.Conv2d(8, channels_out, 1))

        def forward(self, x):
            y = self.conv(x)
            return y.flatten(2) if flat else y

    torch.manual_seed(0)
    return export(Net(), torch.rand(2, 3, 8, 8))


@pytest.mark.parametrize("kind", ["detect", "region"])
def test_detector_and_region_pages_show_hostile_names_and_labels_as_text(browser, tmp_path, kind):
    pytest.importorskip("torch")
    detect = kind == "detect"
    labels = [f"{TEXT}{i}" for i in range(2 if detect else 3)]
    model = tmp_path / f"{kind}.lrp.onnx"
    save(convert(_small_net(6 if detect else 3, detect), target="index" if detect else "seed", labels=labels), model)
    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(3)
    for i in range(2):
        Image.fromarray((rng.random((8, 8, 3)) * 255).astype(np.uint8)).save(images / f"{NAME}{i}.png")
    how = ["--decode", "yolo", "--score", "0", "--top", "2"] if detect else ["--region", "0", "--region", "1",
                                                                             "--region", "2"]
    result = CliRunner().invoke(main, ["explain", str(model), str(images), "--out", str(tmp_path / "out"), *how])
    assert result.exit_code == 0, result.output
    records = [json.loads((tmp_path / "out" / f"{NAME}{i}.json").read_text()) for i in range(2)]
    shown = [d["label"] for r in records for d in r["detections" if detect else "regions"]]
    assert shown and set(shown) <= set(labels)
    page, dialogs = _page(browser, (tmp_path / "out" / "index.html").as_uri())
    body = page.inner_text("body")
    assert f"{NAME}0.png" in body and f"{NAME}1.png" in body and shown[0] in body, body[:400]
    _nothing_ran(page, dialogs)
    assert page.locator("img").count() == sum(len(r["heatmaps"]) for r in records) > 0
    assert page.evaluate("[...document.images].every(i => i.complete && i.naturalWidth > 0)")
    page.close()
