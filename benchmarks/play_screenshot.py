"""Drive ``lapo play`` in a real headless Chromium: load the page, press keys, save a screenshot.

Starts ``lapo play --run RUN`` on a free loopback port and Chromium with the DevTools Protocol
on another; presses ``--keys`` one by one (each waits for the page to show the new step),
then saves ``Page.captureScreenshot`` to ``--out`` and prints what the page shows as JSON.

Needs Chromium (Debian: ``apt-get install chromium``) and ``websocket-client``
(``pip install "lapo[screenshot]"``); never downloads a browser.

    python benchmarks/play_screenshot.py --run RUN --out docs/play.png \\
        --keys ArrowRight,ArrowRight,ArrowUp,ArrowRight,ArrowRight
"""

from __future__ import annotations

import argparse
import base64
import itertools
import json
import re
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

# DevTools key events: key -> (code, Windows virtual key code)
KEYS = {
    "ArrowLeft": ("ArrowLeft", 37),
    "ArrowUp": ("ArrowUp", 38),
    "ArrowRight": ("ArrowRight", 39),
    "ArrowDown": ("ArrowDown", 40),
    " ": ("Space", 32),
    **{c: (f"Key{c.upper()}", ord(c.upper())) for c in "abcdefghijklmnopqrstuvwxyz"},
    **{d: (f"Digit{d}", ord(d)) for d in "0123456789"},
}
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
    "--remote-allow-origins=*",
]


class DevTools:
    """A minimal Chrome DevTools Protocol client over one page's websocket."""

    def __init__(self, ws_url: str) -> None:
        import websocket  # websocket-client: pip install "lapo[screenshot]"

        self.ws = websocket.create_connection(ws_url, timeout=60, suppress_origin=True)
        self.ids = itertools.count(1)

    def call(self, method: str, **params) -> dict:
        """Send ``method`` and wait for its answer (events in between are dropped)."""
        i = next(self.ids)
        self.ws.send(json.dumps({"id": i, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv())
            if msg.get("id") == i:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg.get("result", {})

    def evaluate(self, expression: str):  # noqa: ANN201 - any JSON value
        r = self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        return r.get("result", {}).get("value")

    def wait_for(self, expression: str, timeout: float = 60.0) -> None:
        deadline = time.time() + timeout
        while not self.evaluate(expression):
            if time.time() > deadline:
                raise TimeoutError(f"the page never showed {expression}")
            time.sleep(0.1)

    def press(self, key: str) -> None:
        code, vk = KEYS[key]
        common = {"key": key, "code": code, "windowsVirtualKeyCode": vk}
        text = {"text": key} if len(key) == 1 else {}
        self.call("Input.dispatchKeyEvent", type="keyDown", **common, **text)
        self.call("Input.dispatchKeyEvent", type="keyUp", **common)


def start_play(run: str, data: str | None, windows: int) -> tuple[subprocess.Popen, str]:
    """``lapo play`` on a free port: the process and the URL it printed."""
    cmd = [sys.executable, "-m", "lapo", "play", "--run", run, "--port", "0", "--no-browser"]
    cmd += ["--windows", str(windows)] + (["--data", data] if data else [])
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    line = proc.stdout.readline()  # the URL, once the session is ready
    found = re.search(r"http://\S+/", line)
    if not found:
        proc.kill()
        raise SystemExit(f"lapo play did not start: {line!r}")
    return proc, found.group(0)


def start_chromium(
    chromium: str, url: str, profile: Path, size: str
) -> tuple[subprocess.Popen, str]:
    """Headless Chromium on ``url``: the process and the page's DevTools websocket URL."""
    flags = CHROMIUM_FLAGS + [f"--user-data-dir={profile}", f"--window-size={size}"]
    proc = subprocess.Popen(
        [chromium, *flags, "--remote-debugging-port=0", url],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    port_file = profile / "DevToolsActivePort"
    deadline = time.time() + 60
    while not port_file.is_file() or not port_file.read_text().strip():
        if time.time() > deadline or proc.poll() is not None:
            proc.kill()
            raise SystemExit("chromium did not open its DevTools port")
        time.sleep(0.1)
    port = port_file.read_text().split()[0]
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=30) as r:
        pages = [t for t in json.loads(r.read()) if t["type"] == "page"]
    return proc, pages[0]["webSocketDebuggerUrl"]


def screenshot(args: argparse.Namespace) -> dict:
    play, url = start_play(args.run, args.data, args.windows)
    with tempfile.TemporaryDirectory() as profile:
        browser, ws_url = start_chromium(args.chromium, url, Path(profile), args.size)
        try:
            dt = DevTools(ws_url)
            dt.wait_for("typeof state !== 'undefined' && state !== null && !busy")
            step = dt.evaluate("state.step")
            for key in [k if k != "space" else " " for k in args.keys.split(",") if k]:
                dt.press(key)
                if key.lower() not in ("r", "z"):
                    step += 1
                    dt.wait_for(f"state.step === {step} && !busy")
            time.sleep(0.5)  # the frames' images decode asynchronously
            shot = dt.call("Page.captureScreenshot", format="png")
            Path(args.out).parent.mkdir(parents=True, exist_ok=True)
            Path(args.out).write_bytes(base64.b64decode(shot["data"]))
            shown = dt.evaluate(
                "JSON.stringify({step: state.step, buttons: state.buttons.map(b => b.label), "
                "moves: state.history.map(h => h.move), spread: state.spread, "
                "ignores_latent: state.ignores_latent, "
                "warning: document.getElementById('warning').textContent})"
            )
            dt.ws.close()
        finally:
            browser.terminate()
            browser.wait(timeout=30)
            play.terminate()
            play.wait(timeout=30)
    return {"out": args.out, "url": url, **json.loads(shown)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", required=True, help="stage-1 run folder")
    p.add_argument("--data", help="dataset (default: the run's own)")
    p.add_argument("--out", default="docs/play.png", help="screenshot PNG")
    p.add_argument("--keys", default="ArrowRight,ArrowRight,ArrowUp,ArrowRight,ArrowRight",
                   help="comma-separated KeyboardEvent keys (space: 'space')")  # fmt: skip
    p.add_argument("--windows", type=int, default=2000, help="lapo play --windows")
    p.add_argument("--size", default="1280,900", help="browser window WIDTH,HEIGHT")
    p.add_argument("--chromium", default="/usr/bin/chromium", help="Chromium binary")
    print(json.dumps(screenshot(p.parse_args()), indent=1))


if __name__ == "__main__":
    main()
