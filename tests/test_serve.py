"""`wavlink-serve`: the search page in a real headless browser, and files outside the indexed folder refused."""

import shutil
import threading
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import quote

import pytest
from conftest import tiny_model, tiny_processor

from wavlink.search.index import build_index
from wavlink.search.serve import make_server
from wavlink.training.synthetic import generate_dataset

CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    root = tmp_path_factory.mktemp("serve")
    data = generate_dataset(root / "data", num_train=0, num_eval=8, seed=9)
    sounds = root / "sounds"
    shutil.copytree(data["eval"].parent / "audio", sounds)
    (root / "secret.txt").write_text("not for the web")
    (sounds / "unindexed.txt").write_text("inside the folder, but not an indexed file")
    model, processor = tiny_model(seed=5), tiny_processor(["a steady tone", "white noise", "beeps", "a sweep"])
    model.text_model.resize_token_embeddings(len(processor.tokenizer))
    model.config.text_config.vocab_size = len(processor.tokenizer)
    model.save_pretrained(root / "model")
    processor.save_pretrained(root / "model")
    build_index(sounds, str(root / "model"), root / "s.index", dim=8, progress=False)
    server = make_server(root / "s.index", port=0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server, f"http://127.0.0.1:{server.server_port}", sounds, root
    server.shutdown()
    server.server_close()


def status_of(url: str) -> int:
    try:
        with urllib.request.urlopen(url) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code


def test_only_indexed_files_inside_the_folder_are_served(served):
    server, base, sounds, root = served
    assert server.server_address[0] == "127.0.0.1"
    indexed = sorted(sounds.glob("*.wav"))[0]
    with urllib.request.urlopen(f"{base}/audio?path={quote(str(indexed.resolve()))}") as response:
        assert response.status == 200 and response.read() == indexed.read_bytes()
    for attempt in (
        str(sounds / ".." / "secret.txt"),  # path traversal out of the folder
        str(root / "secret.txt"),
        str(sounds / "unindexed.txt"),  # inside, but not an indexed file
        "/etc/passwd",
        str(sounds / ".." / ".." / ".." / "etc" / "passwd"),
    ):
        assert status_of(f"{base}/audio?path={quote(attempt)}") == 403, attempt
    assert status_of(f"{base}/api/search?q=") == 400
    assert status_of(f"{base}/nothing") == 404


@pytest.mark.skipif(not (CHROMIUM and CHROMEDRIVER), reason="Debian's chromium and chromium-driver are not installed")
def test_the_search_page_in_a_headless_browser(served, tmp_path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions
    from selenium.webdriver.support.ui import WebDriverWait

    server, base, _, _ = served
    expected = server.index.search(text="white noise", k=10)
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1100,900"):
        options.add_argument(flag)
    browser = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        browser.get(base)
        assert "WavLink search" in browser.title
        browser.find_element(By.ID, "query").send_keys("white noise")
        browser.find_element(By.ID, "search").click()
        WebDriverWait(browser, 30).until(
            expected_conditions.presence_of_element_located((By.CSS_SELECTOR, "#results li"))
        )
        items = browser.find_elements(By.CSS_SELECTOR, "#results li")
        names = [item.find_element(By.CLASS_NAME, "file").text for item in items]
        assert names == [Path(hit.path).name for hit in expected]
        player = items[0].find_element(By.TAG_NAME, "audio").get_attribute("src")
        assert quote(expected[0].path, safe="") in player and "#t=0" in player
        browser.save_screenshot(str(tmp_path / "search-page.png"))
        assert (tmp_path / "search-page.png").stat().st_size > 10_000
    finally:
        browser.quit()
