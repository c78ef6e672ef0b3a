"""The console in real headless Chromium (Debian's chromium + chromium-driver, via Selenium).

Support finds the unit whose rip drive was replaced and reads the change on its timeline; a
dealer sees only its units, records a sale and reads an entitlement; an admin finds all of that
in the audit trail.  Screenshots of each page are taken; with ``EVO_CONSOLE_SCREENSHOTS=DIR``
they are also written to DIR (docs/console holds the committed ones).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from selenium import webdriver
from selenium.webdriver.common.by import By

from tests.registry.consoleenv import NEW_RIP, OLD_RIP, PASSWORDS, SCRIPT_NAME, World, served


@pytest.fixture
def world(db_url: str, tmp_path: Path) -> Iterator[World]:
    with served(db_url, tmp_path) as w:
        yield w


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[object]:
    driver_path = shutil.which("chromedriver")
    if driver_path is None or shutil.which("chromium") is None:
        pytest.skip("chromium or chromium-driver absent: apt-get install chromium-driver")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run",
                "--disable-extensions", "--disable-sync", "--disable-background-networking",
                "--disable-component-update", "--window-size=1200,860",
                f"--user-data-dir={tmp_path / 'chromium'}"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    try:
        yield driver
    finally:
        driver.quit()


class Shots:
    """Screenshots of the pages (PNG), kept in the test's directory and optionally in docs."""

    def __init__(self, driver: object, tmp: Path) -> None:
        self.driver = driver
        self.dirs = [tmp]
        if os.environ.get("EVO_CONSOLE_SCREENSHOTS"):
            self.dirs.append(Path(os.environ["EVO_CONSOLE_SCREENSHOTS"]))
        self.taken: list[Path] = []

    def take(self, name: str) -> None:
        png = self.driver.get_screenshot_as_png()  # type: ignore[attr-defined]
        assert png.startswith(b"\x89PNG")
        for d in self.dirs:
            d.mkdir(parents=True, exist_ok=True)
            (d / f"{name}.png").write_bytes(png)
        self.taken.append(self.dirs[0] / f"{name}.png")


def _ready(driver: object) -> None:
    """Wait until the current document has loaded (a redirect's target included)."""
    from selenium.webdriver.support.wait import WebDriverWait

    WebDriverWait(driver, 30).until(
        lambda d: d.execute_script("return document.readyState") == "complete")


def _click(driver: object, element_id: str) -> None:
    """Click a button that submits a form, and wait until the next page has replaced this one."""
    from selenium.webdriver.support import expected_conditions
    from selenium.webdriver.support.wait import WebDriverWait

    _ready(driver)
    page = driver.find_element(By.TAG_NAME, "html")  # type: ignore[attr-defined]
    driver.find_element(By.ID, element_id).click()  # type: ignore[attr-defined]
    WebDriverWait(driver, 30).until(expected_conditions.staleness_of(page))
    _ready(driver)


def _login(driver: object, world: World, username: str) -> None:
    from selenium.common.exceptions import StaleElementReferenceException, WebDriverException

    d = driver
    # Seen once in a clean-clone run: right after a logout's redirect, Chromium replaced the
    # login page's document between finding the button and clicking it ("Node with given id
    # does not belong to the document"); nothing was submitted, so the form is filled again.
    for attempt in range(3):
        d.get(f"{world.url}/login")  # type: ignore[attr-defined]
        _ready(d)
        try:
            d.find_element(By.ID, "username").send_keys(username)  # type: ignore[attr-defined]
            d.find_element(By.ID, "password").send_keys(  # type: ignore[attr-defined]
                PASSWORDS[username])
            _click(d, "signin")
            break
        except (StaleElementReferenceException, WebDriverException) as exc:
            if attempt == 2 or not (isinstance(exc, StaleElementReferenceException)
                                    or "does not belong to the document" in str(exc)):
                raise
    assert "/login" not in d.current_url  # type: ignore[attr-defined]


def _logout(driver: object) -> None:
    _click(driver, "logout")
    assert driver.current_url.endswith("/console/login")  # type: ignore[attr-defined]


def _unit_rows(driver: object) -> list[str]:
    rows = driver.find_elements(By.CSS_SELECTOR, "tr.unit td:first-child")  # type: ignore[attr-defined]
    return [r.text for r in rows]


@pytest.mark.slow
def test_support_dealer_admin_in_chromium(world: World, browser: object,
                                          tmp_path: Path) -> None:
    d = browser
    shots = Shots(d, tmp_path / "shots")
    # Support: the planted script is shown as text, and nothing ran.
    _login(d, world, "sam.support")
    shots.take("events")
    d.get(f"{world.url}/devices")  # type: ignore[attr-defined]
    names = d.find_elements(By.CSS_SELECTOR, "tr.unit td:nth-child(2)")  # type: ignore[attr-defined]
    assert SCRIPT_NAME in [n.text for n in names]
    # Search by NetBIOS name, open the unit, read the rip drive swap on the timeline.
    box = d.find_element(By.ID, "q")  # type: ignore[attr-defined]
    box.send_keys("evo-living")
    _click(d, "search")
    assert _unit_rows(d) == ["EVO-100001"]
    shots.take("search")
    d.get(d.find_element(By.LINK_TEXT, "EVO-100001").get_attribute("href"))  # type: ignore[attr-defined]
    assert d.current_url.endswith("/console/devices/EVO-100001")  # type: ignore[attr-defined]
    changes = d.find_elements(By.CSS_SELECTOR, "#timeline tr.change")  # type: ignore[attr-defined]
    cells = [[c.text for c in row.find_elements(By.TAG_NAME, "td")] for row in changes]
    assert cells == [["2026-10-25", "rip drive", "replaced", f"{OLD_RIP[0]} SN {OLD_RIP[1]}",
                      f"{NEW_RIP[0]} SN {NEW_RIP[1]}"]]
    assert "outside_assigned_region" in d.find_element(By.ID, "events").text  # type: ignore[attr-defined]
    shots.take("device")
    _logout(d)

    # Dealer DLR-A: only its unit; records its sale; reads entitlements.
    _login(d, world, "dana.dealer")
    assert _unit_rows(d) == ["EVO-100001"]
    shots.take("dealer-units")
    d.get(f"{world.url}/devices/EVO-100002")  # type: ignore[attr-defined]
    assert d.find_element(By.TAG_NAME, "h1").text == "404"  # type: ignore[attr-defined]
    d.get(f"{world.url}/sales?vpnid=EVO-100001")  # type: ignore[attr-defined]
    shots.take("sale")
    _click(d, "record-sale")
    assert d.current_url.endswith("/console/devices/EVO-100001")  # type: ignore[attr-defined]
    warranty = d.find_element(By.ID, "warranty").text  # type: ignore[attr-defined]
    assert "until 2028-11-23" in warranty and "sale date 2026-11-23" in warranty
    d.get(f"{world.url}/entitlement")  # type: ignore[attr-defined]
    for vpnid, answer in (("EVO-100001", "entitled to free support until 2028-11-23"),
                          ("EVO-100002", "entitled to free support until 2028-01-15"),
                          ("EVO-999999", "unknown unit")):
        field = d.find_element(By.ID, "ent-vpnid")  # type: ignore[attr-defined]
        field.clear()
        field.send_keys(vpnid)
        _click(d, "lookup")
        assert d.find_element(By.ID, "answer").text == f"{vpnid}: {answer}"  # type: ignore[attr-defined]
        if vpnid == "EVO-100001":
            shots.take("entitlement")
    _logout(d)

    # Admin: all of the above in the audit trail.
    _login(d, world, "ada.admin")
    d.get(f"{world.url}/admin/audit")  # type: ignore[attr-defined]
    rows = d.find_elements(By.CSS_SELECTOR, "#audit tr.entry")  # type: ignore[attr-defined]
    seen = {tuple(c.text for c in r.find_elements(By.TAG_NAME, "td")[1:5]) for r in rows}
    for entry in (("sam.support", "support", "search", "evo-living"),
                  ("sam.support", "support", "view", "EVO-100001"),
                  ("dana.dealer", "dealer", "sale", "EVO-100001"),
                  ("dana.dealer", "dealer", "entitlement", "EVO-999999"),
                  ("dana.dealer", "dealer", "login", "dana.dealer")):
        assert entry in seen, entry
    shots.take("audit")
    d.get(f"{world.url}/fleet")  # type: ignore[attr-defined]
    assert "Fleet: 3 unit(s)" in d.find_element(By.TAG_NAME, "h1").text  # type: ignore[attr-defined]
    shots.take("fleet")
    d.get(f"{world.url}/admin/accounts")  # type: ignore[attr-defined]
    shots.take("accounts")
    assert len(shots.taken) == 9
