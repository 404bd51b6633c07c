"""Headless Chromium driven through the DevTools protocol over a pipe, with the standard library.

`--remote-debugging-pipe` makes Chromium read protocol messages (JSON, each ended by a NUL byte)
from its file descriptor 3 and answer on 4: no port, no websocket, no package. The viewer's
tests and `eval/bench_view.py` open pages with it, run JavaScript in them and take screenshots.

    with Chromium() as browser:
        browser.open("file:///tmp/x.html", ready="document.body.dataset.ready")
        browser.eval("document.title"), browser.screenshot()  # -> str, PNG bytes

Debian's package: `apt-get install -y --no-install-recommends chromium`.
"""

import base64
import fcntl
import json
import os
import select
import shutil
import subprocess
import tempfile
import time

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--hide-scrollbars", "--remote-debugging-pipe"]


def find_chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


class Chromium:
    def __init__(self, width: int = 1280, height: int = 900, binary: str | None = None, timeout: float = 60.0):
        binary = binary or find_chromium()
        if binary is None:
            raise FileNotFoundError("no chromium on PATH (apt-get install -y --no-install-recommends chromium)")
        self.timeout, self._id, self._buffer = timeout, 0, b""
        self.profile = tempfile.mkdtemp(prefix="mamba-agent-chromium-")
        # Both ends the child needs go to fds 3 and 4; copies of them from 10 up so dup2 cannot clobber them.
        commands_r, self._commands = os.pipe()
        self._answers, answers_w = os.pipe()
        child_r, child_w = (fcntl.fcntl(fd, fcntl.F_DUPFD, 10) for fd in (commands_r, answers_w))

        def fds_3_and_4():
            os.dup2(child_r, 3)
            os.dup2(child_w, 4)

        self.process = subprocess.Popen(
            [binary, *FLAGS, f"--user-data-dir={self.profile}", f"--window-size={width},{height}", "about:blank"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            pass_fds=(3, 4), preexec_fn=fds_3_and_4)
        for fd in (commands_r, answers_w, child_r, child_w):
            os.close(fd)
        target = self.send("Target.createTarget", url="about:blank")["targetId"]
        self.session = self.send("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        self.send("Emulation.setDeviceMetricsOverride", width=width, height=height, deviceScaleFactor=1,
                  mobile=False, session=True)
        self.errors: list[str] = []  # uncaught JavaScript exceptions of the pages, as they happen
        self.send("Runtime.enable", session=True)

    def send(self, method: str, session: bool = False, **params) -> dict:
        """One protocol command; its result (events in between are skipped)."""
        self._id += 1
        message = {"id": self._id, "method": method, "params": params}
        if session:
            message["sessionId"] = self.session
        os.write(self._commands, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + self.timeout
        while True:
            while b"\0" not in self._buffer:
                left = deadline - time.monotonic()
                if left <= 0 or not select.select([self._answers], [], [], left)[0]:
                    raise TimeoutError(f"chromium did not answer {method} within {self.timeout:g} s")
                chunk = os.read(self._answers, 1 << 20)
                if not chunk:
                    raise RuntimeError(f"chromium exited (code {self.process.poll()}) during {method}")
                self._buffer += chunk
            line, self._buffer = self._buffer.split(b"\0", 1)
            answer = json.loads(line)
            if answer.get("method") == "Runtime.exceptionThrown":
                details = answer["params"]["exceptionDetails"]
                self.errors.append(details.get("exception", {}).get("description") or details.get("text", "?"))
            if answer.get("id") == self._id:
                if "error" in answer:
                    raise RuntimeError(f"{method}: {answer['error']}")
                return answer["result"]

    def eval(self, expression: str):
        """The value of a JavaScript expression in the page (promises awaited)."""
        result = self.send("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True,
                           session=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression}: {result['exceptionDetails'].get('exception', {}).get('description')}")
        return result["result"].get("value")

    def open(self, url: str, ready: str = "document.readyState === 'complete'", poll: float = 0.02) -> float:
        """Navigate to `url` and wait until the expression `ready` is truthy; seconds it took."""
        started = time.monotonic()
        self.send("Page.navigate", url=url, session=True)
        check = f"location.href === {json.dumps(url)} && (() => {{ try {{ return !!({ready}); }} catch {{ return false; }} }})()"
        while not self.eval(check):
            if time.monotonic() - started > self.timeout:
                raise TimeoutError(f"{url}: {ready} not true within {self.timeout:g} s")
            time.sleep(poll)
        return time.monotonic() - started

    def screenshot(self) -> bytes:
        """The viewport as PNG bytes, after the next frame is drawn."""
        self.eval("new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)))")
        return base64.b64decode(self.send("Page.captureScreenshot", format="png", session=True)["data"])

    def close(self) -> None:
        try:
            self.send("Browser.close")
        except (RuntimeError, TimeoutError, OSError):
            pass
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        for fd in (self._commands, self._answers):
            os.close(fd)
        shutil.rmtree(self.profile, ignore_errors=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
