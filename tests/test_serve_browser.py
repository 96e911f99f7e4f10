"""The live page of `hdlm serve` in a real browser: Debian's headless Chromium driven by selenium
(the system browser and driver; nothing is downloaded). A prompt is typed, Generate clicked, the
steps arrive one frame at a time, and the final text is what `lm.sample` draws with the same
seed. Skips when chromium, its driver or selenium is missing (scripts/setup.sh installs them)."""

import shutil

import pytest
from helpers import language_model

pytest.importorskip("fastapi")
webdriver = pytest.importorskip("selenium.webdriver")
from live_server import running  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import Select, WebDriverWait  # noqa: E402

from hdlm.serve.app import create_app  # noqa: E402

CHROMIUM, DRIVER = shutil.which("chromium"), shutil.which("chromedriver")
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run",
         "--window-size=1100,800")  # fmt: skip


@pytest.fixture
def browser():
    if not (CHROMIUM and DRIVER):
        pytest.skip("chromium and chromium-driver are not installed (scripts/setup.sh)")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in FLAGS:
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(DRIVER))
    yield driver
    driver.quit()


def fill(driver, element_id, value):
    field = driver.find_element(By.ID, element_id)
    field.clear()
    field.send_keys(str(value))


def test_the_page_draws_every_step_and_ends_on_lm_sample(browser, tmp_path):
    lm = language_model("mdlm")
    with running(create_app(lm, "mdlm")) as url:
        browser.get(url)
        wait = WebDriverWait(browser, 60)
        wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#sampler option")) > 1)
        fill(browser, "prompt", "ab")
        fill(browser, "length", 16)
        fill(browser, "seed", 3)
        Select(browser.find_element(By.ID, "sampler")).select_by_value("acs")
        fill(browser, "temperature", 1)
        steps = browser.find_element(By.CSS_SELECTOR, "[data-option=steps]")
        steps.send_keys("12")
        browser.find_element(By.ID, "generate").click()
        wait.until(lambda d: d.find_element(By.ID, "final").text != "")
        final = browser.find_element(By.ID, "final").text
        frames = int(browser.find_element(By.ID, "slider").get_attribute("max"))
        # replay: step 3 of 12 still has masked positions, drawn with the masked colour
        browser.execute_script(
            "const s = document.getElementById('slider'); s.value = 3;"
            "s.dispatchEvent(new Event('input'));"
        )
        masked = [s for s in browser.find_elements(By.CSS_SELECTOR, "#view span")
                  if s.get_attribute("title") == "masked"]  # fmt: skip
        label = browser.find_element(By.ID, "stepLabel").text
        browser.save_screenshot(str(tmp_path / "serve.png"))
    expected = lm.decode(lm.sample(1, 16, prompt="ab", seed=3, sampler="acs", steps=12))[0]
    assert frames == 12
    assert final == expected
    assert masked and label == "3 / 12"
