"""Notebook 04 in a real JupyterLab, driven by headless Chromium: run every cell,
type a Chinese message into the chat box, see a reply stream in. Saves a screenshot.

Needs Debian's chromium (`apt-get install chromium`) and `pip install -e '.[browser]'`;
run with `make browser-test` (a few minutes: the notebook runs for real)."""
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from conftest import REPO
from labkit.messages import label

pytestmark = pytest.mark.browser
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
# Without these, Chromium keeps trying to reach Google's hosts, which a closed network refuses.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
TOKEN = "labkit-browser-test"
QUESTION = "法国的首都是哪里？"
KERNEL_IDLE = ("(() => { const w = window.jupyterapp && window.jupyterapp.shell.currentWidget;"
               " const k = w && w.sessionContext && w.sessionContext.session && w.sessionContext.session.kernel;"
               " return k && k.status === 'idle'; })()")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """JupyterLab serving a copy of notebook 04 with the reference solution in it."""
    if not Path(CHROMIUM).exists():
        pytest.fail("no Chromium: apt-get install chromium (Debian's package; Playwright's own download is "
                    "not used)")
    if not subprocess.run(["fc-list", ":lang=zh", "family"], capture_output=True, text=True).stdout.strip():
        pytest.fail("no Chinese font: the screenshot would show every Chinese label as empty boxes. "
                    "apt-get install fonts-noto-cjk")
    folder = tmp_path_factory.mktemp("lab")
    shutil.copy(REPO / "source" / "llm_lab" / "04_chat.ipynb", folder / "04_chat.ipynb")
    port = free_port()
    log = open(folder / "jupyter.log", "w")
    server = subprocess.Popen(
        [sys.executable, "-m", "jupyter", "lab", "--no-browser", f"--port={port}", "--ip=127.0.0.1",
         f"--IdentityProvider.token={TOKEN}", f"--ServerApp.root_dir={folder}", "--LabApp.expose_app_in_browser=True",
         *(["--allow-root"] if os.geteuid() == 0 else [])],
        stdout=log, stderr=subprocess.STDOUT, env={**{k: v for k, v in os.environ.items() if k != "LABKIT_LANG"},  # both languages, as the test expects
             "JUPYTER_CONFIG_DIR": str(folder / "config")})
    url = f"http://127.0.0.1:{port}"
    for _ in range(120):
        if server.poll() is not None:
            break
        try:
            urllib.request.urlopen(f"{url}/api/status?token={TOKEN}", timeout=1)
            break
        except OSError:
            time.sleep(0.5)
    else:
        server.kill()
        pytest.fail(f"JupyterLab did not start: {(folder / 'jupyter.log').read_text()[-2000:]}")
    yield url, folder
    server.terminate()
    server.wait(timeout=30)
    log.close()


def test_chat_box_streams_a_reply(lab):
    from playwright.sync_api import expect, sync_playwright

    url, folder = lab
    screenshot = Path(os.environ.get("LABKIT_SCREENSHOT", folder / "chat_box.png"))
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.goto(f"{url}/lab/tree/04_chat.ipynb?token={TOKEN}")
        # Run All does nothing until the notebook's kernel is up and idle.
        page.wait_for_function(KERNEL_IDLE, timeout=180_000)
        page.evaluate("window.jupyterapp.commands.execute('notebook:run-all-cells')")  # resolves when all ran
        message = page.get_by_placeholder(label("chat.placeholder"), exact=True)
        expect(message).to_be_visible(timeout=600_000)
        if page.get_by_role("button", name="No", exact=True).is_visible():  # JupyterLab's "notify about news?" toast
            page.get_by_role("button", name="No", exact=True).click()
        message.fill(QUESTION)  # Chinese typed into the box: the students' language
        page.get_by_role("button", name=label("chat.send"), exact=True).click()
        transcript = page.locator(".labkit-transcript").last
        expect(transcript).to_contain_text(QUESTION, timeout=30_000)
        reply = transcript.locator(".labkit-assistant").last
        done = page.get_by_text("tokens/s, first token after")
        seen = []  # the reply as it grows: streamed text shows up in several states
        deadline = time.monotonic() + 300
        while not done.is_visible() and time.monotonic() < deadline:
            if reply.count():
                text = reply.inner_text()
                if not seen or text != seen[-1]:
                    seen.append(text)
            time.sleep(0.05)
        expect(done).to_be_visible(timeout=1000)
        final = reply.inner_text()
        graphs = page.locator(".labkit-graphs select").last  # the student's INT8 first, FP32 and fused beside it
        options = [o.replace("\xa0", " ") for o in graphs.locator("option").all_inner_texts()]  # ipywidgets: no-break spaces
        transcript.scroll_into_view_if_needed()
        page.screenshot(path=str(screenshot), full_page=False)
        browser.close()
    assert len(final.split(":", 1)[1].strip()) > 10, final  # "<model>: <answer>"
    assert options == [label("chat.graph_mine"), label("chat.graph_fp32"), label("chat.graph_fused")], options
    partial = [t for t in seen if t != final and t.split(":", 1)[1].strip() not in ("", "…")]
    assert partial, f"the reply never showed up part-written; states seen: {seen}"
    print(f"screenshot: {screenshot}")
