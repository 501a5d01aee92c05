"""Report: self-contained HTML and Markdown of one run and of several; its numbers are the eval files'."""

import base64
import html.parser
import io
import json
import pathlib
import re
import shutil
import sys
import types

import pytest
from PIL import Image, ImageDraw

from mmjax import report
from mmjax.data import av_digits
from mmjax.metrics import read_metrics

# One pytest-xdist worker runs every test of the smoke_run fixture, so it is trained once.
pytestmark = pytest.mark.xdist_group("smoke_run")

CHROMIUM = pathlib.Path("/usr/bin/chromium")
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
ALTERED = {"answer/accuracy": 0.8125, "image_digit/accuracy": 0.4375, "answer/accuracy/sum": 0.25}
ALTERED_VAL = 0.875  # the altered run's validation answer accuracy at its last step


class Page(html.parser.HTMLParser):
    """Tags, src/href values, <img> attributes and tables (rows of cell texts) of an HTML page."""

    def __init__(self, text: str):
        super().__init__()
        self.tags, self.links, self.images, self.tables = [], [], [], []
        self._cell = None
        self.feed(text)
        self.close()

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.tags.append(tag)
        self.links += [value for key, value in attrs.items() if key in ("src", "href")]
        if tag == "img":
            self.images.append(attrs)
        elif tag == "table":
            self.tables.append([])
        elif tag == "tr":
            self.tables[-1].append([])
        elif tag in ("td", "th"):
            self._cell = []

    def handle_endtag(self, tag):
        if tag in ("td", "th"):
            self.tables[-1][-1].append("".join(self._cell))
            self._cell = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)

    def tables_of(self, first_column: str) -> list[list[dict]]:
        """Every table whose header starts with `first_column`, as row dicts."""
        return [
            [dict(zip(t[0], row, strict=True)) for row in t[1:]]
            for t in self.tables
            if t[0][0] == first_column
        ]

    def image(self, alt_suffix: str) -> Image.Image:
        (found,) = [img for img in self.images if img["alt"].endswith(alt_suffix)]
        return decode(found["src"])


def decode(src: str) -> Image.Image:
    prefix = "data:image/png;base64,"
    assert src.startswith(prefix)
    image = Image.open(io.BytesIO(base64.b64decode(src.removeprefix(prefix))))
    assert image.format == "PNG"
    return image


def assert_not_blank(image: Image.Image, min_size: int = 100):
    assert image.width >= min_size and image.height >= min_size
    darkest, brightest = image.convert("L").getextrema()
    assert brightest - darkest > 100


def copy_run(workdir: pathlib.Path, to: pathlib.Path) -> pathlib.Path:
    """The run's files without its checkpoints and TensorBoard logs (the report reads neither)."""
    shutil.copytree(workdir, to, ignore=shutil.ignore_patterns("checkpoints", "tensorboard"))
    return to


def read_json(path: pathlib.Path) -> dict:
    return json.loads(path.read_text())


def write_json(path: pathlib.Path, value: dict) -> None:
    path.write_text(json.dumps(value))


@pytest.fixture(scope="module")
def single(smoke_run, tmp_path_factory):
    """The report of the smoke run, written to a folder of its own."""
    written = report.main([smoke_run], out=tmp_path_factory.mktemp("report"))
    return written, Page(written["html"].read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def pair(smoke_run, tmp_path_factory):
    """The report (default OUT: the common parent) of the smoke run and of a copy with other test accuracies
    and a later, better validation record at its last step."""
    parent = tmp_path_factory.mktemp("runs")
    first, second = copy_run(smoke_run, parent / "first"), copy_run(smoke_run, parent / "second")
    test = read_json(second / "eval_test.json")
    test["metrics"] |= ALTERED
    write_json(second / "eval_test.json", test)
    last_step = max(record["step"] for record in read_metrics(second))
    with open(second / "metrics.jsonl", "a") as file:
        file.write(json.dumps({"step": last_step, "val/answer/accuracy": ALTERED_VAL}) + "\n")
    written = report.main([first, second])
    return written, Page(written["html"].read_text(encoding="utf-8")), parent


def test_html_is_self_contained_and_every_figure_decodes(single):
    written, page = single
    assert written["html"].is_file() and written["md"].is_file()
    assert "script" not in page.tags and "link" not in page.tags and "iframe" not in page.tags
    text = written["html"].read_text(encoding="utf-8")
    assert "url(" not in text and "@import" not in text and "<script" not in text.lower()
    assert all(link.startswith("data:image/png;base64,") for link in page.links)
    assert len(page.images) == len(written["figures"]) >= 10  # 5 training curves + 5 confusion matrices
    for img in page.images:
        assert_not_blank(decode(img["src"]))


def test_test_metrics_tables_equal_eval_test_json(single, smoke_run):
    written, page = single
    metrics = read_json(smoke_run / "eval_test.json")["metrics"]
    markdown = written["md"].read_text(encoding="utf-8")
    (tasks,) = page.tables_of("task")
    assert {row["task"] for row in tasks} == set(
        av_digits.task_classes(read_json(smoke_run / "config.json")["tasks"])
    )
    for row in tasks:
        accuracy, f1 = metrics[f"{row['task']}/accuracy"], metrics[f"{row['task']}/macro_f1"]
        assert float(row["accuracy"]) == pytest.approx(accuracy, abs=5e-5)
        assert float(row["macro-F1"]) == pytest.approx(f1, abs=5e-5)
        assert f"| {row['task']} | {accuracy:.4f} | {f1:.4f} |" in markdown
    (per_type,) = page.tables_of("question type")
    assert [row["question type"] for row in per_type] == list(av_digits.QUESTION_TYPES)
    for row in per_type:
        assert float(row["answer accuracy"]) == pytest.approx(
            metrics[f"answer/accuracy/{row['question type']}"], abs=5e-5
        )


def test_a_confusion_matrix_per_task(single, smoke_run):
    _, page = single
    confusion = read_json(smoke_run / "eval_test.json")["confusion"]
    tasks = av_digits.task_classes(read_json(smoke_run / "config.json")["tasks"])
    assert set(confusion) == set(tasks)
    sizes = {task: page.image(f"-confusion-{task}").size for task in tasks}
    assert sizes["answer"][0] > sizes["match"][0]  # 30 classes get a larger figure than 2


def test_markdown_links_the_figure_files(single):
    written, page = single
    markdown = written["md"].read_text(encoding="utf-8")
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", markdown)
    assert len(links) == len(page.images)
    out = written["md"].parent
    assert {out / link for link in links} == set(written["figures"])
    for link in links:
        assert not pathlib.PurePath(link).is_absolute()
        assert_not_blank(Image.open(out / link))


def test_comparison_table_shows_each_runs_numbers(pair, smoke_run):
    written, page, parent = pair
    assert written["html"] == parent / "report.html" and written["md"] == parent / "report.md"
    metrics = read_json(smoke_run / "eval_test.json")["metrics"]
    val = [r["val/answer/accuracy"] for r in read_metrics(smoke_run) if "val/answer/accuracy" in r]
    (rows,) = page.tables_of("run")
    first, second = rows
    assert (first["run"], second["run"]) == ("first", "second")
    assert first["test answer acc"] == f"{metrics['answer/accuracy']:.4f}"
    assert first["image_digit acc"] == f"{metrics['image_digit/accuracy']:.4f}"
    assert first["answer/sum"] == f"{metrics['answer/accuracy/sum']:.4f}"
    assert first["best val answer acc"] == f"{max(val):.4f}"
    assert second["test answer acc"] == "0.8125" and second["image_digit acc"] == "0.4375"
    assert second["answer/sum"] == "0.2500" and second["audio_digit acc"] == first["audio_digit acc"]
    assert second["best val answer acc"] == f"{ALTERED_VAL:.4f}" and second["at step"] == second["steps"]
    assert_not_blank(page.image("compare-loss"))
    assert_not_blank(page.image("compare-val-answer"))
    assert len(page.tables_of("task")) == 2  # then one section per run


def test_a_folder_that_is_not_a_workdir_raises_naming_it(smoke_run, tmp_path):
    folder = tmp_path / "not_a_run"
    folder.mkdir()
    (folder / "metrics.jsonl").write_text("")
    with pytest.raises(FileNotFoundError, match=re.escape(f"{folder.resolve()} is not a training workdir")):
        report.main([smoke_run, folder])
    with pytest.raises(FileNotFoundError, match=re.escape(str((tmp_path / "missing").resolve()))):
        report.main([tmp_path / "missing"])
    assert not (tmp_path / "report.html").exists()


def test_a_run_without_eval_test_json_says_so(smoke_run, tmp_path):
    workdir = copy_run(smoke_run, tmp_path / "run")
    (workdir / "eval_test.json").unlink()
    written = report.main([workdir])
    assert written["html"] == workdir / "report.html"
    markdown = written["md"].read_text(encoding="utf-8")
    assert f"no eval_test.json: run `python -m mmjax.evaluate --workdir {workdir.resolve()}`" in markdown
    page = Page(written["html"].read_text(encoding="utf-8"))
    assert not page.tables_of("task") and not any("-confusion-" in img["alt"] for img in page.images)
    assert_not_blank(page.image("-loss"))


def test_older_eval_files_and_other_conditions(smoke_run, tmp_path):
    workdir = copy_run(smoke_run, tmp_path / "run")
    test = read_json(workdir / "eval_test.json")
    del test["confusion"]  # as written before evaluate saved confusion matrices
    write_json(workdir / "eval_test.json", test)
    dropped = test | {"metrics": test["metrics"] | {"answer/accuracy": 0.3125}}
    write_json(workdir / "eval_test_drop-image.json", dropped | {"condition": {"drop": "image"}})
    written = report.main([workdir])
    assert "eval_test.json has no confusion matrices" in written["md"].read_text(encoding="utf-8")
    (rows,) = Page(written["html"].read_text(encoding="utf-8")).tables_of("file")
    assert [(r["file"], r["condition"], r["answer acc"]) for r in rows] == [
        ("eval_test.json", "clean", f"{test['metrics']['answer/accuracy']:.4f}"),
        ("eval_test_drop-image.json", "drop-image", "0.3125"),
    ]


def test_explain_writes_the_attention_maps_first(smoke_run, tmp_path, monkeypatch):
    workdir = copy_run(smoke_run, tmp_path / "run")
    calls = []

    def write_maps(workdir, n):
        calls.append((workdir, n))
        image = Image.new("RGB", (160, 120), "white")
        ImageDraw.Draw(image).rectangle((20, 20, 100, 80), fill="navy")
        (workdir / "explain").mkdir(exist_ok=True)
        image.save(workdir / "explain" / "map_0.png")
        return [workdir / "explain" / "map_0.png"]

    monkeypatch.setitem(sys.modules, "mmjax.explain", types.SimpleNamespace(write_maps=write_maps))
    written = report.main([workdir], explain=2)
    assert calls == [(workdir.resolve(), 2)]
    embedded = Page(written["html"].read_text(encoding="utf-8")).image("-explain-map_0")
    assert embedded.size == (160, 120)
    assert_not_blank(embedded)


@pytest.mark.skipif(
    not CHROMIUM.exists(), reason="needs /usr/bin/chromium (apt-get install chromium); not in CI"
)
def test_report_renders_in_headless_chromium(pair, tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api", reason="needs playwright (pip install playwright)")
    written, page, _ = pair
    problems = []
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        tab = browser.new_page(viewport={"width": 1400, "height": 900})
        tab.on("console", lambda message: message.type == "error" and problems.append(message.text))
        tab.on("pageerror", lambda error: problems.append(str(error)))
        tab.on("requestfailed", lambda request: problems.append(f"failed: {request.url}"))
        tab.on(
            "request",
            lambda request: request.url.startswith(("data:", "file:")) or problems.append(request.url),
        )
        tab.goto(written["html"].as_uri(), wait_until="load")
        widths = tab.eval_on_selector_all("img", "images => images.map(i => i.complete ? i.naturalWidth : 0)")
        tab.screenshot(path=tmp_path / "report.png", full_page=True)
        browser.close()
    assert problems == []
    assert len(widths) == len(page.images) and all(width > 0 for width in widths)
    screenshot = Image.open(tmp_path / "report.png")
    assert screenshot.format == "PNG" and screenshot.height > 2000
    assert_not_blank(screenshot)
