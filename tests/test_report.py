"""The Snakemake report of the tiny run, rendered by headless Chromium: the table and the plots are on its
front page (the rendered DOM, after the report's JavaScript app has run)."""

import base64
import re
import shutil
import subprocess
from html import unescape
from pathlib import Path

import pandas as pd
import pytest
from test_workflow import snakemake

pytestmark = pytest.mark.workflow

FIGURES = ["pose_errors.png", "recall.png", "retrievals.png"]


def chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    pytest.skip("no Chromium: `apt-get install -y chromium` (.ci/run installs it)")


@pytest.fixture(scope="module")
def report(tiny_run):
    targets = [f"results/tiny/plots/{name}" for name in [*FIGURES, "summary.html"]] + ["results/tiny/run_summary.html"]
    snakemake(tiny_run, *targets)
    snakemake(tiny_run, "--report", "report.html", *targets)
    return tiny_run / "report.html"


def render(browser: str, page: Path, *args: str) -> subprocess.CompletedProcess:
    # --virtual-time-budget lets the report's JavaScript app finish rendering before the dump.
    cmd = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=15000", *args,
           page.as_uri()]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}"
    return proc


def test_report_front_page_shows_table_and_plots(report, tiny_run):
    browser = chromium()
    dom = render(browser, report, "--dump-dom").stdout
    raw = report.read_text()
    # The front page is built by JavaScript: the table element exists only in the rendered DOM.
    assert '<table border="1" class="dataframe vop-auc">' in dom
    assert '<table border="1" class="dataframe vop-auc">' not in raw

    table = pd.read_csv(tiny_run / "results/tiny/auc.csv", keep_default_na=False)
    html_table = dom[dom.index('<table border="1" class="dataframe vop-auc">'):]
    html_table = html_table[:html_table.index("</table>")]
    cells = [unescape(c) for c in re.findall(r"<t[hd]>(.*?)</t[hd]>", html_table, flags=re.DOTALL)]
    header, body = cells[:len(table.columns)], cells[len(table.columns):]
    assert header == list(table.columns)
    assert len(body) == table.size
    rows = [body[i:i + len(header)] for i in range(0, len(body), len(header))]
    for row, (_, expected) in zip(rows, table.iterrows()):
        assert row[:2] == [expected["method"], expected["scene"]]
        assert float(row[header.index("auc@10")]) == pytest.approx(expected["auc@10"], abs=0.05)
        assert float(row[header.index("mAP@k")]) == pytest.approx(expected["mAP@k"], abs=0.05)

    # The run summary's table (stages, jobs, seconds, peak memory) follows, as run_summary.tsv holds it.
    stages = pd.read_csv(tiny_run / "results/tiny/run_summary.tsv", sep="\t")
    start = dom.index('<table border="1" class="dataframe vop-run-summary">')
    cells = [unescape(c) for c in re.findall(r"<t[hd]>(.*?)</t[hd]>", dom[start:dom.index("</table>", start)],
                                             flags=re.DOTALL)]
    rows = [cells[i:i + len(stages.columns)] for i in range(len(stages.columns), len(cells), len(stages.columns))]
    assert [row[0] for row in rows] == list(stages["stage"]) and rows[-1][0] == "all"
    for row, (_, expected) in zip(rows, stages.iterrows()):
        assert int(row[1]) == expected["jobs"] and float(row[2]) == pytest.approx(expected["wall_s"], abs=0.06)

    # Every figure is an <img> whose data URI holds exactly the PNG the plots rule wrote.
    images = re.findall(r'<img alt="[^"]*" src="data:image/png;base64,([A-Za-z0-9+/=]+)"', dom)
    assert len(images) == len(FIGURES)
    for name, data in zip(FIGURES, images):
        assert base64.b64decode(data) == (tiny_run / "results/tiny/plots" / name).read_bytes()


def test_report_screenshot_is_drawn(report, tmp_path):
    pytest.importorskip("skimage")
    from skimage.io import imread

    shot = tmp_path / "report.png"
    render(chromium(), report, "--hide-scrollbars", "--window-size=1200,1600", f"--screenshot={shot}")
    pixels = imread(shot)[..., :3].astype(float)
    # The page shows the first figure (a white plot with coloured curves) beside the navigation bar:
    # many distinct colours, not a blank or error page.
    colours = {tuple(p) for p in pixels[::7, ::7].reshape(-1, 3).astype(int)}
    assert pixels.shape[:2] == (1600, 1200) and len(colours) > 200
