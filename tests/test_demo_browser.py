"""The demo in a real browser: `demo.py` on 127.0.0.1 with a tiny checkpoint, driven through Debian's headless Chromium.

Needs `apt-get install -y chromium chromium-driver` (CI installs them); skipped with the reason when they are absent.
Selenium talks to Debian's chromedriver directly, so nothing is downloaded.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from selenium import webdriver
from selenium.common.exceptions import StaleElementReferenceException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support.ui import WebDriverWait

from chatbridge.config import TrainConfig
from chatbridge.models.loading import save_chatbridge_checkpoint
from tests.conftest import REPO
from tests.media import write_image, write_wav
from tests.tiny_sizes import SMALL

CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")
CHROMIUM_FLAGS = (
    "--headless --no-sandbox --disable-gpu --disable-quic --no-first-run --disable-background-networking "
    "--disable-component-update --disable-sync --window-size=1100,900"
).split()
SERVER_START_SECONDS = 45
ANSWER_SECONDS = 30

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(
        CHROMIUM is None or CHROMEDRIVER is None,
        reason="needs Debian's headless Chromium: apt-get install -y chromium chromium-driver",
    ),
]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_until_serving(url: str, server: subprocess.Popen, log: Path) -> None:
    """Poll the page until it answers; fail with the server's log if it exits or takes too long."""
    deadline = time.monotonic() + SERVER_START_SECONDS
    while time.monotonic() < deadline:
        if server.poll() is not None:
            pytest.fail(f"demo.py exited with {server.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            time.sleep(0.25)
    pytest.fail(f"demo.py did not serve {url} within {SERVER_START_SECONDS} s:\n{log.read_text()[-3000:]}")


@pytest.fixture
def demo_url(tmp_path, tiny_model, tiny_config, tiny_llm_dir) -> Iterator[str]:
    """`demo.py` serving a tiny random checkpoint on a free local port (its uploads under tmp_path)."""
    save_chatbridge_checkpoint(tiny_model, TrainConfig(model=tiny_config), tmp_path / "ckpt")
    port, log = free_port(), tmp_path / "demo.log"
    command = [
        sys.executable,
        str(REPO / "demo.py"),
        "--cfg-path",
        str(REPO / "eval_configs" / "chatbridge_tiny_eval.yaml"),
        "--port",
        str(port),
        "--options",
        *SMALL,
        f"model.llm.path={tiny_llm_dir}",
        f"model.checkpoint={tmp_path / 'ckpt'}",
        "generation.max_new_tokens=16",
    ]
    env = os.environ | {"GRADIO_TEMP_DIR": str(tmp_path / "uploads")}
    with log.open("w") as output:
        server = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=output, stderr=subprocess.STDOUT)
    try:
        wait_until_serving(f"http://127.0.0.1:{port}/", server, log)
        yield f"http://127.0.0.1:{port}/"
    finally:
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()


@pytest.fixture
def browser(tmp_path) -> Iterator[webdriver.Chrome]:
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in [*CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'chromium-profile'}"]:
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def answer_text(page: webdriver.Chrome) -> str:
    return "".join(bubble.text for bubble in page.find_elements(By.CSS_SELECTOR, "#chat .bot")).strip()


def textbox(page: webdriver.Chrome):
    return page.find_element(By.CSS_SELECTOR, "#message textarea")


def test_an_image_and_a_sound_in_one_message_get_a_streamed_answer(demo_url, browser, tmp_path):
    image = write_image(tmp_path / "red_square.png", 64, (200, 40, 40))
    sound = write_wav(tmp_path / "beep.wav", seconds=1.0, sample_rate=16000, freq=880.0)
    browser.get(demo_url)
    # The chat re-renders while it streams: an element found a moment ago may be gone, so look again.
    wait = WebDriverWait(browser, ANSWER_SECONDS, ignored_exceptions=(StaleElementReferenceException,))
    upload = wait.until(lambda page: page.find_element(By.CSS_SELECTOR, "#message input[type=file]"))
    upload.send_keys(f"{image}\n{sound}")
    wait.until(lambda page: len(page.find_elements(By.CSS_SELECTOR, "#message .thumbnail-item")) == 2)
    textbox(browser).send_keys("What do you see and hear?", Keys.ENTER)

    wait.until(answer_text)  # the first streamed piece
    wait.until(lambda page: textbox(page).is_enabled())  # unlocked again: the answer is complete
    browser.save_screenshot(str(tmp_path / "demo.png"))
    asked = browser.find_elements(By.CSS_SELECTOR, "#chat .user")[-1]
    assert "What do you see and hear?" in asked.text and asked.find_elements(By.TAG_NAME, "img")
    assert answer_text(browser) and not answer_text(browser).startswith("⚠️")
    assert (tmp_path / "demo.png").stat().st_size > 0
