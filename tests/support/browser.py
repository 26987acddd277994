"""A real headless browser for the console tests: Debian's ``chromium`` driven through the Chrome
DevTools Protocol over ``--remote-debugging-pipe`` (JSON messages separated by NUL on file
descriptors 3 and 4).  No driver binary, no Python package, no debugging port another local
process could attach to.

    with Browser(require_tool("chromium", "chromium"), tmp_path) as b:
        page = b.page(1280, 800)
        page.goto(url)
        page.fill("#token", token); page.click("button[type=submit]")
        page.wait("location.pathname === '/'")
        page.screenshot(path)
"""

from __future__ import annotations

import base64
import fcntl
import json
import os
import queue
import shutil
import subprocess
import threading
import time
from pathlib import Path

__all__ = ["Browser", "Page", "BrowserError"]


class BrowserError(AssertionError):
    pass


class Browser:
    def __init__(self, exe: str, workdir: Path, timeout: float = 20.0):
        self.exe, self.timeout = exe, timeout
        self.profile = Path(workdir) / "chromium-profile"
        self.profile.mkdir(parents=True, exist_ok=True)
        self._next_id = 0
        self._pending: dict[int, queue.Queue] = {}
        self._events: dict[str | None, list[dict]] = {}
        self._cv = threading.Condition()
        self._lock = threading.Lock()
        self.proc: subprocess.Popen | None = None

    def __enter__(self) -> Browser:
        to_chrome_r, self._to_chrome = os.pipe()
        self._from_chrome, from_chrome_w = os.pipe()
        # the browser's ends move above 9 first, so that mapping them onto 3 and 4 cannot clobber them
        low = (to_chrome_r, from_chrome_w)
        to_chrome_r, from_chrome_w = (fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10) for fd in low)
        for fd in low:
            os.close(fd)
        args = ["--headless=new", "--disable-gpu", "--no-first-run", "--no-default-browser-check",
                "--disable-extensions", "--disable-background-networking", "--disable-component-update",
                "--disable-sync", "--disable-dev-shm-usage", "--hide-scrollbars", "--mute-audio",
                "--remote-debugging-pipe", f"--user-data-dir={self.profile}", "about:blank"]
        if os.geteuid() == 0:
            args.insert(0, "--no-sandbox")  # Chromium refuses its sandbox as root (CI containers)
        # fd 3: commands to the browser, fd 4: its answers and events
        shell = f'exec "$0" "$@" 3<&{to_chrome_r} 4>&{from_chrome_w} {to_chrome_r}<&- {from_chrome_w}>&-'
        self.log = open(self.profile.parent / "chromium.log", "wb")
        self.proc = subprocess.Popen(["/bin/bash", "-c", shell, self.exe, *args], pass_fds=(to_chrome_r, from_chrome_w),
                                     stdout=self.log, stderr=subprocess.STDOUT)
        os.close(to_chrome_r)
        os.close(from_chrome_w)
        self._reader = threading.Thread(target=self._read, name="cdp-reader", daemon=True)
        self._reader.start()
        self.version = self.send("Browser.getVersion")
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        if self.proc is None:
            return
        try:
            self.send("Browser.close", timeout=5)
        except BrowserError:
            pass
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
        for fd in (self._to_chrome, self._from_chrome):
            try:
                os.close(fd)
            except OSError:
                pass
        self.log.close()
        self.proc = None
        shutil.rmtree(self.profile, ignore_errors=True)

    # ---- protocol ----------------------------------------------------------------------------------

    def _read(self) -> None:
        buf = b""
        while True:
            try:
                data = os.read(self._from_chrome, 1 << 16)
            except OSError:
                data = b""
            if not data:
                break
            buf += data
            while b"\0" in buf:
                raw, buf = buf.split(b"\0", 1)
                msg = json.loads(raw)
                if "id" in msg:
                    q = self._pending.pop(msg["id"], None)
                    if q is not None:
                        q.put(msg)
                else:
                    with self._cv:
                        self._events.setdefault(msg.get("sessionId"), []).append(msg)
                        self._cv.notify_all()
        for q in list(self._pending.values()):
            q.put({"error": {"message": "the browser went away"}})

    def send(self, method: str, session: str | None = None, timeout: float | None = None, **params) -> dict:
        with self._lock:
            self._next_id += 1
            mid = self._next_id
            q: queue.Queue = queue.Queue()
            self._pending[mid] = q
            msg = {"id": mid, "method": method, "params": params}
            if session is not None:
                msg["sessionId"] = session
            os.write(self._to_chrome, json.dumps(msg).encode() + b"\0")
        try:
            reply = q.get(timeout=timeout or self.timeout)
        except queue.Empty:
            raise BrowserError(f"{method}: no answer in {timeout or self.timeout} s") from None
        if "error" in reply:
            raise BrowserError(f"{method}: {reply['error'].get('message')} {reply['error'].get('data', '')}")
        return reply.get("result", {})

    def events(self, session: str | None, method: str | None = None) -> list[dict]:
        with self._cv:
            return [e for e in self._events.get(session, []) if method is None or e["method"] == method]

    def wait_event(self, session: str | None, method: str, after: int, timeout: float) -> dict:
        end = time.monotonic() + timeout
        with self._cv:
            while True:
                found = [e for e in self._events.get(session, [])[after:] if e["method"] == method]
                if found:
                    return found[0]
                left = end - time.monotonic()
                if left <= 0:
                    raise BrowserError(f"no {method} within {timeout} s")
                self._cv.wait(left)

    def page(self, width: int = 1280, height: int = 800, mobile: bool = False, scale: float = 1.0) -> Page:
        target = self.send("Target.createTarget", url="about:blank")["targetId"]
        session = self.send("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        p = Page(self, session, target)
        for domain in ("Page", "Runtime", "Network", "Log"):
            p.send(f"{domain}.enable")
        # every Content-Security-Policy violation becomes a console error the test sees
        p.send("Page.addScriptToEvaluateOnNewDocument", source=(
            "document.addEventListener('securitypolicyviolation', e => console.error("
            "'CSP violation: ' + e.violatedDirective + ' ' + e.blockedURI));"))
        p.viewport(width, height, mobile, scale)
        return p


class Page:
    def __init__(self, browser: Browser, session: str, target: str):
        self.b, self.session, self.target = browser, session, target

    def send(self, method: str, **params) -> dict:
        return self.b.send(method, self.session, **params)

    def viewport(self, width: int, height: int, mobile: bool = False, scale: float = 1.0) -> None:
        self.width, self.height = width, height
        self.send("Emulation.setDeviceMetricsOverride", width=width, height=height, deviceScaleFactor=scale,
                  mobile=mobile)
        self.send("Emulation.setTouchEmulationEnabled", enabled=mobile)

    # ---- navigation and script -----------------------------------------------------------------------

    def goto(self, url: str, timeout: float = 20.0) -> None:
        n = len(self.b.events(self.session))
        res = self.send("Page.navigate", url=url)
        if res.get("errorText"):
            raise BrowserError(f"navigate {url}: {res['errorText']}")
        self.b.wait_event(self.session, "Page.loadEventFired", n, timeout)

    def eval(self, expr: str, await_promise: bool = False):
        res = self.send("Runtime.evaluate", expression=expr, returnByValue=True, awaitPromise=await_promise)
        if "exceptionDetails" in res:
            d = res["exceptionDetails"]
            raise BrowserError(f"{expr[:80]}: {d.get('exception', {}).get('description') or d.get('text')}")
        return res["result"].get("value")

    def wait(self, expr: str, timeout: float = 20.0, interval: float = 0.1, what: str | None = None):
        """Poll ``expr`` until it is truthy (navigations in between are fine); its value."""
        end = time.monotonic() + timeout
        last: Exception | None = None
        while time.monotonic() < end:
            try:
                v = self.eval(expr)
                if v:
                    return v
            except BrowserError as exc:  # the page is navigating: its context went away
                last = exc
            time.sleep(interval)
        raise BrowserError(f"timed out after {timeout} s waiting for {what or expr}" + (f" ({last})" if last else ""))

    def loaded(self, path: str, timeout: float = 20.0) -> None:
        self.wait(f"location.pathname === {json.dumps(path)} && document.readyState === 'complete'", timeout,
                  what=f"page {path}")

    def text(self, selector: str = "body") -> str:
        return self.eval(f"(document.querySelector({json.dumps(selector)}) || {{}}).innerText || ''")

    # ---- input ---------------------------------------------------------------------------------------

    def _center(self, selector: str) -> tuple[float, float]:
        box = self.eval(f"""(() => {{ const e = document.querySelector({json.dumps(selector)});
            if (!e) return null; e.scrollIntoView({{block: 'center'}}); const r = e.getBoundingClientRect();
            return [r.x + r.width / 2, r.y + r.height / 2, r.width, r.height]; }})()""")
        if not box or box[2] == 0 or box[3] == 0:
            raise BrowserError(f"no visible element {selector}")
        return box[0], box[1]

    def click(self, selector: str) -> None:
        """A real mouse click (press and release) at the element's centre."""
        x, y = self._center(selector)
        for kind in ("mousePressed", "mouseReleased"):
            self.send("Input.dispatchMouseEvent", type=kind, x=x, y=y, button="left", clickCount=1)

    def fill(self, selector: str, value: str) -> None:
        """Click into the field, clear it, and type ``value`` (as keyboard input)."""
        self.click(selector)
        self.eval(f"(e => {{ e.focus(); e.value = ''; }})(document.querySelector({json.dumps(selector)}))")
        self.send("Input.insertText", text=value)

    def select(self, selector: str, value: str) -> None:
        ok = self.eval(f"""(() => {{ const s = document.querySelector({json.dumps(selector)});
            const o = [...s.options].find(o => o.value === {json.dumps(value)}); if (!o) return false;
            s.value = o.value; s.dispatchEvent(new Event('change', {{bubbles: true}})); return true; }})()""")
        if not ok:
            raise BrowserError(f"{selector} has no option {value!r}")

    # ---- what happened ------------------------------------------------------------------------------

    def screenshot(self, path: Path, full_page: bool = False) -> Path:
        params: dict = {"format": "png"}
        if full_page:
            m = self.send("Page.getLayoutMetrics")["cssContentSize"]
            params.update(captureBeyondViewport=True,
                          clip={"x": 0, "y": 0, "width": self.width, "height": min(m["height"], 6000), "scale": 1})
        data = base64.b64decode(self.send("Page.captureScreenshot", **params)["data"])
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        return path

    def cookies(self) -> list[dict]:
        return self.send("Network.getCookies")["cookies"]

    def requests(self) -> list[str]:
        """URLs of every request the page made."""
        return [e["params"]["request"]["url"] for e in self.b.events(self.session, "Network.requestWillBeSent")]

    def problems(self) -> list[str]:
        """Script exceptions, console errors (CSP violations among them) and the browser's own
        errors, except failed requests (a refused request is what some tests want)."""
        out = [e["params"]["exceptionDetails"].get("exception", {}).get("description")
               or e["params"]["exceptionDetails"].get("text") for e in self.b.events(self.session,
                                                                                    "Runtime.exceptionThrown")]
        out += [" ".join(str(a.get("value", a.get("description", ""))) for a in e["params"]["args"])
                for e in self.b.events(self.session, "Runtime.consoleAPICalled") if e["params"]["type"] == "error"]
        out += [e["params"]["entry"]["text"] for e in self.b.events(self.session, "Log.entryAdded")
                if e["params"]["entry"]["level"] == "error" and e["params"]["entry"].get("source") != "network"]
        return out
