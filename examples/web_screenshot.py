"""Screenshot of the demo site (docs/web.png): `lrpgraph demo --web`, served on 127.0.0.1, opened in Debian's
chromium (WebGPU through its software adapter, SwiftShader), one bundled sample explained.

    python examples/web_screenshot.py [--out docs/web.png] [--sample 09_ankle_boot_0000.png]
"""

import argparse
import functools
import http.server
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

from playwright.sync_api import sync_playwright

FLAGS = ["--enable-unsafe-webgpu", "--enable-features=Vulkan", "--use-webgpu-adapter=swiftshader"]


class Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="docs/web.png")
    parser.add_argument("--sample", default="09_ankle_boot_0000.png")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, "-m", "lrpgraph.cli", "demo", "--web", "--out", tmp], check=True,
                       stdout=subprocess.DEVNULL)
        site = Path(tmp) / "site"
        handler = functools.partial(Quiet, directory=str(site))
        httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=httpd.serve_forever, daemon=True).start()
        try:
            with sync_playwright() as playwright:
                browser = playwright.chromium.launch(executable_path=shutil.which("chromium"), args=FLAGS)
                page = browser.new_page(viewport={"width": 1100, "height": 560})
                page.goto(f"http://127.0.0.1:{httpd.server_port}/index.html")
                page.wait_for_function("window.pageReady !== undefined", timeout=60_000)
                page.set_input_files("#file", str(site / "samples" / args.sample))
                page.wait_for_function("window.lastResult && window.lastResult.name", timeout=60_000)
                page.screenshot(path=args.out)
                print(f"{args.out}: backend {page.text_content('#backend')}; {page.text_content('#status')}")
                browser.close()
        finally:
            httpd.shutdown()
            httpd.server_close()


if __name__ == "__main__":
    main()
