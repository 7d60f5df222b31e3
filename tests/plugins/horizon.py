"""Session fixtures: Horizon (tools/horizon) behind the session Keystone, and one real browser.

`horizon_server` (session): the dashboard on a free loopback port, local_settings pointing at
`keystone_server`.  Set ZOL_HORIZON_STATE=RUN_DIR to reuse one started by hand (left running).

`browser` (session): ONE headless Chromium from Debian (chromium + chromium-driver, bindep
profile `browser`) driven by Selenium, with a fresh --user-data-dir and the flags that keep it
off the (closed) network.  `Browser` wraps what a person does: log in, open a page, read what it
shows, click, fill a form.  When a test that used it fails, a screenshot and the page's HTML are
saved under <basetemp>/screenshots (or $ZOL_SCREENSHOT_DIR) and their paths are printed.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
HORIZON = REPO / "tools" / "horizon"
CHROMIUM = Path(os.environ.get("ZOL_CHROMIUM", "/usr/bin/chromium"))
CHROMEDRIVER = Path(os.environ.get("ZOL_CHROMEDRIVER", "/usr/bin/chromedriver"))
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                  "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--window-size=1400,1000",
                  "--disable-dev-shm-usage"]
BROWSER_KEY = pytest.StashKey["Browser"]()


@pytest.fixture(scope="session")
def horizon_server(keystone_server, tmp_path_factory):
    reuse = os.environ.get("ZOL_HORIZON_STATE")
    if reuse:
        p = Path(reuse)
        yield json.loads((p / "state.json" if p.is_dir() else p).read_text())
        return
    run_dir = tmp_path_factory.mktemp("horizon")
    r = subprocess.run([sys.executable, str(HORIZON), "start", "--keystone",
                        str(keystone_server.run_dir), "--run-dir", str(run_dir)],
                       capture_output=True, text=True, check=False)
    if r.returncode != 0:
        pytest.fail("Horizon did not start:\n" + r.stderr[-6000:], pytrace=False)
    state = json.loads(r.stdout)
    yield state
    subprocess.run([sys.executable, str(HORIZON), "stop", str(run_dir)], check=False)
    from tests.plugins.keystone import load_keystone_module
    assert not load_keystone_module().alive(state["pid"]), \
        "Horizon pid %d still running after stop" % state["pid"]


# What Horizon 27 shows above Project > Volumes when the catalog has no compute service: its
# volume views always ask Nova for the attached instances (doc/dashboard.md).
NOVA_BANNER = "Error: Invalid service catalog: compute"


def assert_only_the_nova_banner(text: str) -> None:
    """A page's text has no error message but Horizon's Nova-less banner."""
    errors = [line for line in text.splitlines()
              if line.startswith("Error:") and not line.startswith(NOVA_BANNER)]
    assert not errors, f"{errors} on the page:\n{text[:2000]}"


class Browser:
    """One Chromium session on the dashboard; methods are the steps a person takes."""

    def __init__(self, start, base_url: str):
        """`start()` returns (driver, cleanup): a new Chromium with an empty profile."""
        self._start = start
        self.d, self._cleanup = start()
        self.base = base_url.rstrip("/")

    def fresh(self) -> None:
        """A new Chromium with an empty profile: no cookie or session of an earlier user.
        (Logging out through the page was not enough: after the member's lifecycle the
        admin's login came back to the member's session.)"""
        self.close()
        self.d, self._cleanup = self._start()

    def close(self) -> None:
        self.d.quit()
        self._cleanup()

    # -- navigation and reading ---------------------------------------------------------------
    def go(self, path: str) -> None:
        self.d.get(self.base + path)

    def path(self) -> str:
        return self.d.current_url[len(self.base):] if self.d.current_url.startswith(self.base) \
            else self.d.current_url

    def text(self) -> str:
        """What a person reads on the page (the body's rendered text)."""
        from selenium.webdriver.common.by import By
        return self.d.find_element(By.TAG_NAME, "body").text

    def wait(self, cond, timeout: float = 60, what: str = "condition", poll: float = 0.5):
        deadline = time.monotonic() + timeout
        last = None
        while True:
            try:
                got = cond()
                if got:
                    return got
            except Exception as exc:
                last = exc
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what} "
                                     f"(page {self.path()!r}; last error {last!r})")
            time.sleep(poll)

    def css(self, selector: str):
        from selenium.webdriver.common.by import By
        return self.d.find_elements(By.CSS_SELECTOR, selector)

    def row(self, table: str, name: str):
        """The row of table `table` whose name cell reads `name` (None if absent)."""
        for tr in self.css(f"table#{table} tbody tr[data-object-id]"):
            cells = tr.text.split("\n")[0]
            if name in tr.text and cells:
                for td in tr.find_elements("css selector", "td"):
                    if td.text.strip() == name:
                        return tr
        return None

    def see(self, table: str, page: str, name: str, *texts: str) -> str:
        """Open `page`: the row named `name` is there and reads every one of `texts`."""
        self.go(page)
        tr = self.wait(lambda: self.row(table, name), 30, f"row {name!r} in {page}")
        got = tr.text
        missing = [t for t in texts if t not in got]
        assert not missing, f"{page}: row {name!r} reads {got!r}, missing {missing}"
        return tr.get_attribute("data-object-id")

    def wait_row_gone(self, table: str, page: str, name: str, timeout: float = 240) -> None:
        def gone():
            self.go(page)
            return bool(self.css(f"table#{table}")) and self.row(table, name) is None
        self.wait(gone, timeout, f"{name!r} gone from {page}", poll=2)

    # -- acting -------------------------------------------------------------------------------
    def fill(self, field_id: str, value: str) -> None:
        el = self.css("#" + field_id)[0]
        el.clear()
        el.send_keys(value)

    def choose(self, select_id: str, value: str) -> None:
        """Pick `value` in a (Horizon "themable") select, by its dropdown as a person does."""
        sel = self.css("#" + select_id)[0]
        if sel.is_displayed():
            from selenium.webdriver.support.ui import Select
            Select(sel).select_by_value(value)
            return
        parent = sel.find_element("xpath", "..")
        parent.find_element("css selector", "button.dropdown-toggle").click()
        item = self.wait(lambda: [a for a in parent.find_elements(
            "css selector", f'a[data-select-value="{value}"]') if a.is_displayed()],
            10, f"option {value!r} of {select_id}")
        item[0].click()
        assert sel.get_attribute("value") == value, (select_id, sel.get_attribute("value"))

    def submit(self) -> None:
        """The form's primary (submit) button."""
        buttons = [b for b in self.css("form [type=submit]") if b.is_displayed()]
        assert buttons, f"no submit button on {self.path()}"
        buttons[-1].click()

    def click_action(self, table: str, ids: list[str], action: str, confirm: str) -> None:
        """Tick the rows, press the table action, confirm the dialog (its button `confirm`)."""
        for oid in ids:
            box = self.css(f'table#{table} tr[data-object-id="{oid}"] '
                           'input.table-row-multi-select')
            assert box, f"no checkbox for {oid} in table {table}"
            if not box[0].is_selected():  # Horizon hides the input behind a themed label
                label = self.css(f'table#{table} tr[data-object-id="{oid}"] '
                                 'input.table-row-multi-select + label')
                (label[0] if label and not box[0].is_displayed() else box[0]).click()
            assert box[0].is_selected(), f"row {oid} of {table} not ticked"
        self.css(f"#{table}__action_{action}")[0].click()
        # the dialog's button carries the action's plural label ("Delete Volume Snapshots")
        btn = self.wait(lambda: [b for b in self.css(".modal-footer .btn")
                                 if b.is_displayed() and b.text.strip().startswith(confirm)],
                        30, f"confirm button {confirm!r}")
        btn[0].click()

    def login(self, user: str, password: str) -> None:
        self.fresh()
        self.go("/auth/login/")
        self.wait(lambda: self.css("#id_username"), 60, "the login form")
        self.fill("id_username", user)
        self.fill("id_password", password)
        self.css("#loginBtn")[0].click()
        self.wait(lambda: not self.path().startswith("/auth/login") or
                  "Invalid credentials" in self.text(), 60, "the login to finish")
        if not self.path().startswith("/auth/login"):  # signed in: as the right user?
            names = self.wait(lambda: self.css(".user-menu .user-name"), 60, "the user menu")
            who = names[0].get_attribute("textContent").strip() if names else ""
            assert who == user, f"logged in as {who!r}, wanted {user!r} (path {self.path()})"

    def save(self, directory: Path, name: str) -> list[Path]:
        directory.mkdir(parents=True, exist_ok=True)
        png, html = directory / f"{name}.png", directory / f"{name}.html"
        self.d.save_screenshot(str(png))
        html.write_text(self.d.page_source)
        return [png, html]


def start_chromium():
    """A new headless Chromium (Debian's) + chromedriver with an empty profile:
    (driver, cleanup)."""
    for binary, pkg in ((CHROMIUM, "chromium"), (CHROMEDRIVER, "chromium-driver")):
        if not binary.exists():
            pytest.fail(f"{binary} not found: install Debian's {pkg} (bindep profile browser; "
                        "tools/install does it)", pytrace=False)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = Path(tempfile.mkdtemp(prefix="zol-chromium-"))
    opts = webdriver.ChromeOptions()
    opts.binary_location = str(CHROMIUM)
    for flag in CHROMIUM_FLAGS + [f"--user-data-dir={profile}"]:
        opts.add_argument(flag)
    service = Service(str(CHROMEDRIVER), log_output=str(profile) + ".chromedriver.log")
    driver = webdriver.Chrome(options=opts, service=service)
    driver.set_page_load_timeout(180)

    def cleanup():
        shutil.rmtree(profile, ignore_errors=True)
        Path(str(profile) + ".chromedriver.log").unlink(missing_ok=True)
    return driver, cleanup


@pytest.fixture(scope="session")
def browser(request, horizon_server, tmp_path_factory):
    """One headless Chromium for the whole session, on the session's Horizon."""
    b = Browser(start_chromium, horizon_server["url"])
    request.config.stash[BROWSER_KEY] = b
    yield b
    request.config.stash[BROWSER_KEY] = None
    b.close()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    if rep.when != "call" or not rep.failed or \
            not any(name.endswith("browser") for name in item.fixturenames):
        return
    b = item.config.stash.get(BROWSER_KEY, None)
    if b is None:
        return
    out = Path(os.environ.get("ZOL_SCREENSHOT_DIR")
               or Path(str(item.config._tmp_path_factory.getbasetemp())) / "screenshots")
    try:
        files = b.save(out, item.name)
    except Exception as exc:
        rep.sections.append(("screenshot", f"could not save a screenshot: {exc!r}"))
        return
    rep.sections.append(("screenshot", "page at failure ({}): {}".format(
        b.d.current_url, " ".join(map(str, files)))))
