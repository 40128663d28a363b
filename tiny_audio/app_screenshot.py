"""Screenshot of the demo page (app.py) after a real transcription, taken in headless Chromium.

    python -m tiny_audio.app_screenshot                            # model outputs/demo/, clicks the example clip
    python -m tiny_audio.app_screenshot --model DIR --clip a.flac --out docs/app.png

Starts `app.py` on a free localhost port, drives the page with Playwright and Debian's Chromium (no Playwright
browser download needed), waits for the run to finish and saves a full-page PNG. The helpers are shared with
tests/test_app.py.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
URL_PREFIX = "Tiny Audio demo: "
STATUS = "#status textarea, #status input"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def running_app(model: str | Path, *app_args: str, timeout_s: float = 120, env: dict | None = None):
    """Runs `python app.py --model MODEL` on a free localhost port; yields its URL, stops it on exit."""
    command = [sys.executable, str(ROOT / "app.py"), "--model", str(model), "--host", "127.0.0.1"]
    command += ["--port", str(free_port()), *app_args]
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "PYTHONUNBUFFERED": "1", **(env or {})}
    process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines, started = [], threading.Event()

    def read_output():  # keeps draining the pipe so the server never blocks on a full one
        for line in process.stdout:
            lines.append(line)
            if line.startswith(URL_PREFIX):
                started.set()

    threading.Thread(target=read_output, daemon=True).start()
    try:
        deadline = time.monotonic() + timeout_s
        while not started.wait(0.2):
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"app.py did not start ({' '.join(command)}):\n{''.join(lines)}")
        yield next(line for line in lines if line.startswith(URL_PREFIX))[len(URL_PREFIX) :].strip()
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@contextmanager
def chromium_page(width: int = 1280, height: int = 720):
    """A page in headless Debian Chromium driven by Playwright."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield browser.new_page(viewport={"width": width, "height": height})
        finally:
            browser.close()


def transcribe_in_page(page, url: str, clip: str | Path | None = None, timeout_s: float = 60) -> dict:
    """Opens the demo, uploads `clip` and presses Transcribe (or clicks the example clip when `clip` is None),
    waits until the status line says Done or Error; returns the page's transcript, status and error toasts."""
    page.goto(url)
    page.wait_for_selector("#transcribe", timeout=timeout_s * 1000)
    if clip is None:
        page.get_by_text("Example clip").first.click()
    else:
        page.locator("#audio input[type=file]").set_input_files(str(clip))
        page.locator("#audio audio, #audio .waveform-container, #audio [data-testid=waveform-Audio]").first.wait_for()
        page.click("#transcribe")
    page.wait_for_function(
        f"""() => {{
            const status = document.querySelector({STATUS!r});
            return status && /^(Done|Error)/.test(status.value);
        }}""",
        timeout=timeout_s * 1000,
    )
    page.wait_for_timeout(300)  # let the last streamed update and any error toast render
    return {
        "status": page.locator(STATUS).first.input_value(),
        "transcript": page.locator("#transcript textarea").input_value(),
        "errors": page.locator(".toast-body.error").all_inner_texts(),
    }


def screenshot(url: str, out: str | Path, clip: str | Path | None = None, timeout_s: float = 60) -> dict:
    """Transcribes in the page and saves a full-page PNG to `out`; returns what `transcribe_in_page` saw."""
    with chromium_page() as page:
        seen = transcribe_in_page(page, url, clip, timeout_s)
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(out), full_page=True)
    return seen


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=os.environ.get("ASR_MODEL", str(ROOT / "outputs" / "demo")))
    parser.add_argument("--clip", default=None, help="audio file to upload (default: click the page's example clip)")
    parser.add_argument("--out", default=str(ROOT / "docs" / "app.png"))
    parser.add_argument("--timeout", type=float, default=120, help="seconds to wait for the transcription")
    args = parser.parse_args(argv)
    with running_app(args.model) as url:
        seen = screenshot(url, args.out, args.clip, args.timeout)
    print(f"{args.out}: status {seen['status']!r}, transcript {seen['transcript']!r}")
    if not seen["status"].startswith("Done"):
        sys.exit(f"the transcription failed: {seen['status']}")


if __name__ == "__main__":
    main()
