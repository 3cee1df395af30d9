"""Headless Chromium through selenium, for the report page's bench and its tests: Debian's `chromium` and
`chromium-driver` packages and selenium from requirements.txt. Nothing is downloaded: without them, missing()
says what to install."""

import importlib.util
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

INSTALL = "apt-get install chromium chromium-driver (selenium comes with requirements.txt)"
# Flags that work as root in a container: no sandbox, no GPU, and nothing that reaches out to the network.
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--hide-scrollbars")


def binaries():
    """(chromium, chromedriver) paths, either None when absent."""
    browser = next((p for p in map(shutil.which, ("chromium", "chromium-browser")) if p), None)
    return browser, shutil.which("chromedriver")


def missing():
    """None when a headless Chromium can start here, else one line saying what to install."""
    browser, driver = binaries()
    absent = [name for name, path in (("chromium", browser), ("chromium-driver", driver)) if path is None]
    if importlib.util.find_spec("selenium") is None:
        absent.append("selenium")
    return f"no headless Chromium ({', '.join(absent)} missing): {INSTALL}" if absent else None


@contextmanager
def chromium(width=1280, height=900):
    """A selenium WebDriver on a fresh headless Chromium profile that keeps the console's messages."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    browser, driver_path = binaries()
    with tempfile.TemporaryDirectory(prefix="caffecam-chromium-") as profile:
        options = webdriver.ChromeOptions()
        options.binary_location = browser
        for flag in FLAGS:
            options.add_argument(flag)
        options.add_argument(f"--user-data-dir={profile}")
        options.add_argument(f"--window-size={width},{height}")
        options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
        driver = webdriver.Chrome(options=options, service=Service(driver_path))
        try:
            yield driver
        finally:
            driver.quit()


def console_errors(driver):
    """The console's error messages since the last call (SEVERE: errors, failed loads, uncaught exceptions)."""
    return [e["message"] for e in driver.get_log("browser") if e["level"] == "SEVERE"]


def file_url(path):
    return Path(path).resolve().as_uri()
