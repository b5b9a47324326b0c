"""The console in a real browser: headless Chromium driven by Selenium against the live
test server. Skipped (saying why) where no Chromium and chromedriver are found, unless
LORE_REQUIRE_BROWSER is set (CI: .ci/run installs them), which makes that a failure.
Screenshots go to $LORE_ARTIFACTS_DIR (default .ci/artifacts/, not in git)."""

import os
import shutil
import time
from pathlib import Path

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission

from knowledge import tasks as knowledge_tasks
from knowledge.models import Agent
from knowledge.services import agent_create
from search import tasks as search_tasks
from tenants.services import organization_create
from tests.search.conftest import ingest

ARTIFACTS = Path(os.environ.get("LORE_ARTIFACTS_DIR") or Path(__file__).resolve().parents[2] / ".ci" / "artifacts") / "browser"
BROWSERS = ("chromium", "chromium-browser", "google-chrome")

pytestmark = pytest.mark.django_db(transaction=True)


def _unavailable(reason: str):
    if os.environ.get("LORE_REQUIRE_BROWSER"):
        pytest.fail(f"LORE_REQUIRE_BROWSER is set but {reason}")
    pytest.skip(f"no browser: {reason} (apt-get install chromium chromium-driver; pip install -r requirements/dev.txt)")


@pytest.fixture(scope="module")
def browser():
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        _unavailable("selenium is not installed")
    binary = next((shutil.which(name) for name in BROWSERS if shutil.which(name)), None)
    driver_path = shutil.which("chromedriver")
    if not binary or not driver_path:
        _unavailable("Chromium or chromedriver is not on PATH")
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", "--window-size=1280,1100"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    driver.implicitly_wait(0)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    yield driver
    driver.quit()


@pytest.fixture
def no_inline_jobs(monkeypatch):
    """Tests run Django-Q2 tasks inline: a job would be done before its page loads. Here
    wake-ups do nothing and the test runs the workers' claim loop itself, while the page
    watches."""
    from core import jobs

    monkeypatch.setattr(jobs, "wake", lambda *args: True)


@pytest.fixture
def tenant():
    org = organization_create(slug="acme", name="Acme")
    agent = agent_create(org=org, slug="support")
    ingest(org, agent)
    spare = agent_create(org=org, slug="doomed", config={"chunk_size": 100, "chunk_overlap": 0, "parent_chunk_size": 0})
    ingest(org, spare)
    return org, agent, spare


def _user(name: str, *, view_only: bool):
    User = get_user_model()
    if not view_only:
        return User.objects.create_superuser(name, f"{name}@example.com", "pw-browser")
    user = User.objects.create_user(name, f"{name}@example.com", "pw-browser", is_staff=True)
    user.user_permissions.set(Permission.objects.filter(codename__startswith="view_"))
    return user


def _login(driver, live_server, username: str) -> None:
    from selenium.webdriver.common.by import By

    driver.delete_all_cookies()
    driver.get(f"{live_server.url}/admin/login/?next=/admin/console/")
    driver.find_element(By.ID, "id_username").send_keys(username)
    driver.find_element(By.ID, "id_password").send_keys("pw-browser")
    driver.find_element(By.CSS_SELECTOR, "input[type=submit]").click()
    _wait(lambda: "/admin/console/" in driver.current_url and driver.find_elements(By.ID, "console"))


def _wait(condition, timeout: float = 15, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def _shot(driver, name: str) -> None:
    driver.save_screenshot(str(ARTIFACTS / f"{name}.png"))


def _no_js_errors(driver) -> None:
    errors = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
    assert errors == [], errors


def _progress(driver, row_id: str) -> tuple[str, int]:
    from selenium.webdriver.common.by import By

    rows = driver.find_elements(By.ID, row_id)
    if not rows:
        return "", -1
    return rows[0].get_attribute("data-status"), int(float(rows[0].find_element(By.TAG_NAME, "progress").get_attribute("value")))


def test_staff_run_the_console(browser, live_server, tenant, no_inline_jobs, tmp_path, settings):
    from selenium.webdriver.common.by import By

    org, agent, spare = tenant
    settings.LORE_DELETION_BATCH_SIZE = 2  # the deletion's bar moves in steps
    _user("operator", view_only=False)
    _login(browser, live_server, "operator")
    assert "Health" in browser.page_source and browser.find_elements(By.CSS_SELECTOR, "svg.chart")
    _shot(browser, "overview")

    browser.get(f"{live_server.url}/admin/console/organizations/{org.pk}/")
    assert "Usage against quotas" in browser.page_source and "doomed" in browser.page_source
    _shot(browser, "organization")

    browser.get(f"{live_server.url}/admin/console/agents/{agent.pk}/")
    browser.find_element(By.ID, "pg-query").send_keys("docker containers")
    browser.find_element(By.ID, "pg-submit").click()
    _wait(lambda: browser.find_elements(By.CSS_SELECTOR, "tr.result"), what="playground results")
    assert "docker#" in browser.page_source and float(browser.find_element(By.ID, "pg-took").text) > 0
    _shot(browser, "agent-playground")

    files = []
    for name, text in (("kites.md", "# Kites\n\nKites fly on wind."), ("tides.txt", "Tides follow the moon.")):
        path = tmp_path / name
        path.write_text(text)
        files.append(str(path))
    browser.find_element(By.ID, "upload-files").send_keys("\n".join(files))
    browser.find_element(By.ID, "upload-submit").click()
    row = _wait(lambda: browser.find_elements(By.CSS_SELECTOR, "tr[id^=job-ingestion-]"), what="the ingestion job's row")[0]
    row_id = row.get_attribute("id")
    assert _progress(browser, row_id)[0] == "pending"
    browser.execute_script("window.__notReloaded = true")
    knowledge_tasks.run_jobs()  # the worker's claim loop; the page polls meanwhile
    _wait(lambda: _progress(browser, row_id) == ("completed", 100), what="the upload reaching 100 %")
    assert browser.execute_script("return window.__notReloaded === true")
    assert "2 / 2 documents" in browser.find_element(By.ID, row_id).text
    _shot(browser, "agent-upload-done")

    browser.get(f"{live_server.url}/admin/console/agents/{spare.pk}/")
    browser.find_element(By.ID, "delete-agent").click()
    browser.switch_to.alert.accept()
    row = _wait(lambda: browser.find_elements(By.CSS_SELECTOR, "tr[id^=job-deletion-]"), what="the deletion job's row")[0]
    row_id = row.get_attribute("id")
    assert _progress(browser, row_id) == ("pending", 0)
    browser.execute_script("window.__notReloaded = true")
    knowledge_tasks.run_jobs()
    _wait(lambda: _progress(browser, row_id) == ("completed", 100), what="the deletion reaching 100 %")
    assert browser.execute_script("return window.__notReloaded === true")
    assert Agent.unscoped.get(pk=spare.pk).status == Agent.Status.DELETED
    _shot(browser, "agent-deletion-done")

    search_tasks.flush_tracking()  # the playground's search, now in the charts
    browser.get(f"{live_server.url}/admin/console/")
    assert "acme" in browser.find_element(By.CSS_SELECTOR, ".columns").text
    _shot(browser, "overview-after")
    # The admin's dark theme (it follows the system's): the charts draw with its variables.
    chart_background = "return getComputedStyle(document.querySelector('svg.chart')).backgroundColor"
    light = browser.execute_script(chart_background)
    browser.execute_cdp_cmd("Emulation.setEmulatedMedia", {"features": [{"name": "prefers-color-scheme", "value": "dark"}]})
    browser.refresh()
    dark = browser.execute_script(chart_background)
    _shot(browser, "overview-dark")
    browser.execute_cdp_cmd("Emulation.setEmulatedMedia", {"features": []})
    assert dark != light, (light, dark)
    _no_js_errors(browser)


def test_view_only_staff_see_the_console_without_its_actions(browser, live_server, tenant):
    from selenium.webdriver.common.by import By

    org, agent, _ = tenant
    _user("watcher", view_only=True)
    _login(browser, live_server, "watcher")
    assert "Health" in browser.page_source
    browser.get(f"{live_server.url}/admin/console/agents/{agent.pk}/")
    assert not browser.find_elements(By.ID, "upload-files") and not browser.find_elements(By.ID, "delete-agent")
    browser.find_element(By.ID, "pg-query").send_keys("git commit")
    browser.find_element(By.ID, "pg-submit").click()
    _wait(lambda: browser.find_elements(By.CSS_SELECTOR, "tr.result"), what="playground results")
    _shot(browser, "viewer-agent")
    _no_js_errors(browser)
