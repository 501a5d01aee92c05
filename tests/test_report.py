"""Report: self-contained HTML and Markdown of one run and of several; its numbers are the eval files'."""

import base64
import html.parser
import io
import json
import pathlib
import re
import shutil
import subprocess
import sys
import types

import pytest
from PIL import Image, ImageDraw

from mmjax import report, report_render, results
from mmjax.metrics import read_metrics

# One pytest-xdist worker runs every test of the smoke_run fixture, so it is trained once.
pytestmark = pytest.mark.xdist_group("smoke_run")

ROOT = pathlib.Path(__file__).parents[1]

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
ALTERED_VAL = 0.875  # the altered run's validation answer accuracy at its last step (its headline metric)


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
    test = read_json(smoke_run / "eval_test.json")
    metrics = test["metrics"]
    headline = read_json(smoke_run / "config.json")["train"]["best_metric"]
    markdown = written["md"].read_text(encoding="utf-8")
    (tasks,) = page.tables_of("task")
    assert {row["task"] for row in tasks} == set(test["tasks"])
    assert tasks[0]["task"] == headline.split("/")[0]  # the headline metric's task first
    assert f"headline `{headline}` = {metrics[headline]:.4f}" in markdown
    for row in tasks:
        accuracy, f1 = metrics[f"{row['task']}/accuracy"], metrics[f"{row['task']}/macro_f1"]
        assert float(row["accuracy"]) == pytest.approx(accuracy, abs=5e-5)
        assert float(row["macro_f1"]) == pytest.approx(f1, abs=5e-5)
        assert f"| {row['task']} | classes | {accuracy:.4f} | {f1:.4f} |" in markdown
    by = test["groups"]["by"] or "group"
    (per_group,) = page.tables_of(by)
    grouped = results.group_metrics(metrics)
    assert list(per_group[0])[1] == headline  # the headline metric's column first
    assert [row[by] for row in per_group] == sorted(grouped[headline])
    for row in per_group:
        assert float(row[headline]) == pytest.approx(grouped[headline][row[by]], abs=5e-5)


def test_a_confusion_matrix_per_task(single, smoke_run):
    _, page = single
    test = read_json(smoke_run / "eval_test.json")
    tasks = [task for task, spec in test["tasks"].items() if spec["kind"] == "classes"]
    assert set(test["confusion"]) == set(tasks)
    sizes = {task: len(test["tasks"][task]["classes"]) for task in tasks}
    largest, smallest = max(tasks, key=sizes.get), min(tasks, key=sizes.get)
    assert sizes[largest] > sizes[smallest]
    widths = {task: page.image(f"-confusion-{task}").size[0] for task in (largest, smallest)}
    assert widths[largest] > widths[smallest]  # more classes, a larger figure


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
    assert read_json(smoke_run / "config.json")["train"]["best_metric"] == "answer/accuracy"
    val = [r["val/answer/accuracy"] for r in read_metrics(smoke_run) if "val/answer/accuracy" in r]
    (rows,) = page.tables_of("run")
    first, second = rows
    assert (first["run"], second["run"]) == ("first", "second")
    assert list(first)[3] == "test answer/accuracy"  # the headline first, named by its key
    assert first["test answer/accuracy"] == f"{metrics['answer/accuracy']:.4f}"
    assert first["image_digit/accuracy"] == f"{metrics['image_digit/accuracy']:.4f}"
    assert first["answer/accuracy/sum"] == f"{metrics['answer/accuracy/sum']:.4f}"
    assert first["best val answer/accuracy"] == f"{max(val):.4f}"
    assert second["test answer/accuracy"] == "0.8125" and second["image_digit/accuracy"] == "0.4375"
    assert second["answer/accuracy/sum"] == "0.2500"
    assert second["audio_digit/accuracy"] == first["audio_digit/accuracy"]
    assert (
        second["best val answer/accuracy"] == f"{ALTERED_VAL:.4f}"
        and second["best val answer/accuracy at step"] == second["steps"]
    )
    assert_not_blank(page.image("compare-loss"))
    assert_not_blank(page.image("compare-val-answer-accuracy"))
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
    assert [(r["file"], r["condition"], r["answer/accuracy"]) for r in rows] == [
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


# A folder-style run (tasks same / digits / total of kinds classes / multilabel / regression, groups by
# speaker), and an older eval file without "tasks" and "groups": no training, files written by hand.

FOLDER_TASKS = {
    "digits": {"kind": "multilabel", "classes": ["zero", "one", "two"]},
    "same": {"kind": "classes", "classes": ["different", "same"]},
    "total": {"kind": "regression", "classes": []},
}
FOLDER_METRICS = {
    "digits/map": 0.61,
    "digits/micro_f1": 0.52,
    "digits/macro_f1": 0.43,
    "same/accuracy": 0.75,
    "same/macro_f1": 0.7,
    "total/mae": 1.25,
    "total/rmse": 1.5,
    "total/r2": 0.3,
    "digits/micro_f1/theo": 0.5,
    "digits/micro_f1/lucas": 0.55,
    "same/accuracy/theo": 0.8,
    "same/accuracy/lucas": 0.7,
    "same/accuracy/nicolas": 0.9,
    "total/mae/theo": 1.0,
    "total/mae/lucas": 1.5,
}
FOLDER_CONFUSION = {"same": [[5, 1], [2, 8]]}


def folder_run(
    path: pathlib.Path, best_metric: str = "same/accuracy", old_eval: bool = False
) -> pathlib.Path:
    """A workdir as a folder run writes it: config.json, metrics.jsonl and eval_test.json."""
    path.mkdir(parents=True)
    config = {
        "data": {"dataset": "folder"},
        "model": {"fusion": {"name": "late"}},
        "tasks": {"same": 1.0, "digits": 1.0, "total": 0.5},
        "multitask": {"method": "static"},
        "train": {"best_metric": best_metric},
        "eval": {"group_by": "speaker"},
    }
    write_json(path / "config.json", config)
    records = []
    for step in (1, 2, 3, 4):
        records.append(
            {"step": step, "loss": 2.0 / step, "same/loss": 1.0 / step, "digits/loss": 0.6 / step}
            | {"total/loss": 0.4 / step, "same/accuracy": 0.5 + 0.05 * step, "learning_rate": 1e-3}
            | {"grad_norm": 1.0 + step, "examples_per_sec": 100.0 + step}
        )
        if step % 2 == 0:
            records.append(
                {"step": step, "val/same/accuracy": 0.5 + 0.1 * step, "val/same/macro_f1": 0.4}
                | {
                    "val/digits/map": 0.3 + 0.05 * step,
                    "val/digits/micro_f1": 0.2,
                    "val/total/r2": 0.1 * step,
                }
                | {"val/total/mae": 2.0 / step}
            )
    (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    test = {"split": "test", "step": 4, "checkpoint": "best", "questions": ""}
    if not old_eval:
        test |= {"tasks": FOLDER_TASKS, "groups": {"by": "speaker", "tasks": ["digits", "same", "total"]}}
    test |= {"metrics": FOLDER_METRICS, "confusion": FOLDER_CONFUSION, "reports": {}}
    test["condition"] = {"drop": "", "audio_snr": None, "image_noise": 0.0}
    write_json(path / "eval_test.json", test)
    return path


@pytest.fixture
def drawn_confusions(monkeypatch):
    """The (task, class names) of every confusion figure drawn."""
    drawn, draw = [], report.confusion_figure

    def confusion_figure(task, matrix, names=()):
        drawn.append((task, list(names)))
        return draw(task, matrix, names)

    monkeypatch.setattr(report, "confusion_figure", confusion_figure)
    return drawn


def test_a_folder_run_is_reported_by_its_own_tasks_groups_and_classes(tmp_path, drawn_confusions):
    written = report.main([folder_run(tmp_path / "folder")])
    page = Page(written["html"].read_text(encoding="utf-8"))
    markdown = written["md"].read_text(encoding="utf-8")
    assert (
        "headline metric (train.best_metric): `same/accuracy`; best validation 0.9000 at step 4" in markdown
    )
    assert "headline `same/accuracy` = 0.7500" in markdown
    (tasks,) = page.tables_of("task")
    assert [(row["task"], row["kind"]) for row in tasks] == [
        ("same", "classes"),
        ("digits", "multilabel"),
        ("total", "regression"),
    ]
    assert list(tasks[0]) == ["task", "kind", "accuracy", "macro_f1", "map", "micro_f1", "mae", "rmse", "r2"]
    for row in tasks:
        for name, cell in list(row.items())[2:]:
            value = FOLDER_METRICS.get(f"{row['task']}/{name}")
            assert cell == (report.NONE if value is None else f"{value:.4f}")
    (groups,) = page.tables_of("speaker")
    assert list(groups[0]) == ["speaker", "same/accuracy", "digits/micro_f1", "total/mae"]
    assert [row["speaker"] for row in groups] == ["lucas", "nicolas", "theo"]  # sorted
    assert groups[1] == {
        "speaker": "nicolas",
        "same/accuracy": "0.9000",
        "digits/micro_f1": report.NONE,
        "total/mae": report.NONE,
    }
    assert drawn_confusions == [("same", ["different", "same"])]
    names = [img["alt"] for img in page.images]
    assert [name.split("-", 2)[-1] for name in names] == [
        "loss",
        "accuracy",
        "validation",
        "learning_rate",
        "grad_norm",
        "throughput",
        "confusion-same",
    ]
    for img in page.images:
        assert_not_blank(decode(img["src"]))
    figure = page.image("-validation")
    assert figure.width > 300
    assert "answer" not in written["html"].read_text(encoding="utf-8") and "answer" not in markdown


def test_an_older_eval_file_without_tasks_falls_back_to_metric_keys(tmp_path, drawn_confusions):
    workdir = folder_run(tmp_path / "old", best_metric="", old_eval=True)
    written = report.main([workdir])
    page = Page(written["html"].read_text(encoding="utf-8"))
    markdown = written["md"].read_text(encoding="utf-8")
    # No best_metric in its config: the first task's main metric (digits/map) heads the tables.
    assert "headline metric (train.best_metric): `digits/map`" in markdown
    (tasks,) = page.tables_of("task")
    assert [(row["task"], row["kind"]) for row in tasks] == [
        ("digits", report.NONE),
        ("same", report.NONE),
        ("total", report.NONE),
    ]
    (groups,) = page.tables_of("group")
    assert [row["group"] for row in groups] == ["lucas", "nicolas", "theo"]
    assert drawn_confusions == [("same", ["0", "1"])]  # class indices without the file's class names


def test_other_conditions_and_comparisons_use_each_runs_headline(tmp_path):
    first = folder_run(tmp_path / "runs" / "same")
    second = folder_run(tmp_path / "runs" / "total", best_metric="total/r2")
    test = read_json(second / "eval_test.json")
    write_json(second / "eval_test.json", test | {"metrics": test["metrics"] | {"total/r2": 0.45}})
    dropped = read_json(first / "eval_test.json")
    dropped["metrics"] = dropped["metrics"] | {"same/accuracy": 0.5, "total/r2": -0.25}
    write_json(first / "eval_test_drop-image.json", dropped | {"condition": {"drop": "image"}})
    written = report.main([first, second])
    assert written["html"] == tmp_path / "runs" / "report.html"
    page = Page(written["html"].read_text(encoding="utf-8"))
    (compare,) = page.tables_of("run")
    assert list(compare[0]) == [
        "run",
        "fusion",
        "steps",
        "test same/accuracy",
        "test total/r2",
        "digits/map",
        "same/accuracy/lucas",
        "same/accuracy/nicolas",
        "same/accuracy/theo",
        "best val same/accuracy",
        "best val same/accuracy at step",
        "best val total/r2",
        "best val total/r2 at step",
    ]
    assert [list(row.values()) for row in compare] == [
        ["same", "late", "4", "0.7500", "0.3000", "0.6100", "0.7000", "0.9000", "0.8000"]
        + ["0.9000", "4", "0.4000", "4"],
        ["total", "late", "4", "0.7500", "0.4500", "0.6100", "0.7000", "0.9000", "0.8000"]
        + ["0.9000", "4", "0.4000", "4"],
    ]
    assert_not_blank(page.image("compare-val-same-accuracy"))
    assert_not_blank(page.image("compare-val-total-r2"))
    (conditions,) = page.tables_of("file")
    assert list(conditions[0]) == [
        "file",
        "split",
        "condition",
        "step",
        "same/accuracy",
        "digits/map",
        "total/r2",
    ]
    assert [(r["condition"], r["same/accuracy"], r["total/r2"]) for r in conditions] == [
        ("clean", "0.7500", "0.3000"),
        ("drop-image", "0.5000", "-0.2500"),
    ]


def test_the_shares_of_attention_are_tabulated_per_group(tmp_path):
    workdir = folder_run(tmp_path / "run")
    (workdir / "explain").mkdir()
    image = Image.new("RGB", (120, 90), "white")
    ImageDraw.Draw(image).rectangle((10, 10, 60, 50), fill="navy")
    image.save(workdir / "explain" / "map_0.png")
    shares = {"theo": {"image": 0.25, "audio": 0.75}, "lucas": {"image": 0.5, "audio": 0.5}}
    summary = {"split": "test", "examples": 16, "query": "text", "streams": ["image", "audio"]}
    write_json(workdir / "explain" / "shares.json", summary | {"group_by": "speaker", "shares": shares})
    written = report.main([workdir])
    markdown = written["md"].read_text(encoding="utf-8")
    assert (
        "Share of the text stream's attention on each stream's patches (16 test examples, per speaker)"
        in (markdown)
    )
    assert "| speaker | image | audio |\n| --- | ---: | ---: |\n| lucas | 0.5000 | 0.5000 |" in markdown


def test_the_report_imports_no_training_code():
    code = (
        "import sys, mmjax.report; print(sorted(m for m in sys.modules if m.split('.')[0] in "
        "('jax', 'flax', 'optax', 'orbax', 'torch', 'tensorflow') or m in "
        "('mmjax.train', 'mmjax.evaluate', 'mmjax.sweep', 'matplotlib.pyplot')))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert done.stdout.strip() == "[]"
    for module in (report, report_render, results):
        source = pathlib.Path(module.__file__).read_text()
        assert "matplotlib.use" not in source and "pyplot" not in source


def run_report(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "mmjax.report", *map(str, args)], capture_output=True, text=True, cwd=ROOT
    )


def test_bad_input_on_the_command_line_exits_2_naming_it(tmp_path):
    missing = run_report(tmp_path / "missing")
    assert missing.returncode == 2 and "Traceback" not in missing.stderr
    assert missing.stderr.startswith(f"mmjax.report: error: {(tmp_path / 'missing').resolve()} is not a")
    workdir = folder_run(tmp_path / "run")
    (workdir / "eval_test.json").write_text("{not json")
    broken = run_report(workdir)
    assert broken.returncode == 2 and "Traceback" not in broken.stderr
    assert broken.stderr.startswith(f"mmjax.report: error: {workdir / 'eval_test.json'} is not valid JSON")
    usage = run_report()
    assert usage.returncode == 2 and usage.stderr.startswith("usage: python -m mmjax.report")
    assert usage.stderr.splitlines()[-1].startswith("mmjax.report: error: the following arguments")
    assert not (tmp_path / "run" / "report.html").exists()
