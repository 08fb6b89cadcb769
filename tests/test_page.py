"""The leaderboard page: one self-contained file whose tables sort and filter, readable at phone width.

The page's script is checked three ways: its structure in Python; its sort and filter functions under Node when
present; and the page itself in a headless Chromium when present (clicks, filtering, console errors, layout at
phone and desktop width, screenshots at 390 and 1280 px; Chromium lays the page out at least 500 px wide when asked
for 390, which still takes the narrow-screen rules). The browser tests skip without Chromium (Debian:
``apt-get install chromium``), except where ``SPAMLANG_BROWSER_TESTS=required`` (CI, ``.ci/run``): there they fail.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from spamlang.publishing import html as page
from tests.test_leaderboard import grid, write_all

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = next(filter(None, map(shutil.which, ("chromium", "chromium-browser", "google-chrome"))), None)
NODE = shutil.which("node")
REQUIRED = os.environ.get("SPAMLANG_BROWSER_TESTS") == "required"
browser = pytest.mark.skipif(CHROMIUM is None and not REQUIRED, reason="no headless Chromium on this machine")


@pytest.fixture(scope="module")
def board(tmp_path_factory):
    """A leaderboard of linear and lowrank:2 runs at three V (6 configurations)."""
    from spamlang.cli import main
    root = tmp_path_factory.mktemp("board")
    runs = write_all(root / "runs", grid(seeds=2))
    try:
        main(["leaderboard", str(runs), "--out", str(root / "out"), "--format", "html"])
    except SystemExit as exc:
        assert not exc.code
    return root / "out" / "leaderboard.html"


def test_the_page_is_self_contained_with_a_filter_and_scroller_per_table(board):
    text = board.read_text()
    assert text.startswith('<!DOCTYPE html>\n<html><head><meta charset="utf-8"><title>SpamLang leaderboard</title>')
    assert page.VIEWPORT in text and "<script>" in text and "function sortTable" in text
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", text) and "<link" not in text  # nothing fetched
    boards = re.findall(r'<div class="board"><input type="search" class="filter"[^>]*><span class="count"></span>'
                        r'<div class="scroll"><table>', text)
    assert len(boards) == text.count("<table>") >= 2  # the head ranking, the configurations, the fits
    assert text.count('<div class="plot"><img') == text.count("<img") >= 3


SORT_CASES = ["0.5", "=2", "-", "~0.31", "lowrank:2", "-0.01", "1e-3", "linear", "", "2 (1/3)", "- (0/3)", "10"]


@pytest.mark.skipif(NODE is None, reason="no Node.js on this machine")
def test_sort_keys_and_filter_under_node(tmp_path):
    script = page.SCRIPT + f"""
var cells = {json.dumps(SORT_CASES)};
function sorted(descending) {{
  return cells.map(function (c, i) {{ return {{c: c, k: sortKey(c), i: i}}; }})
    .sort(function (a, b) {{ return compareKeys(a.k, b.k, descending) || a.i - b.i; }})\
.map(function (x) {{ return x.c; }});
}}
console.log(JSON.stringify({{asc: sorted(false), desc: sorted(true),
  filter: [matches("spam 128 lowrank:2 learned", "LOWRANK learned"), matches("spam 128 linear", "lowrank"),
           matches("anything", "  ")]}}));
"""
    (tmp_path / "sort.js").write_text(script)
    result = json.loads(subprocess.run([NODE, str(tmp_path / "sort.js")], capture_output=True, text=True,
                                       check=True, timeout=60).stdout)
    # numbers by value (ranks and estimates by their number), then text, then missing values last both ways
    assert result["asc"] == ["-0.01", "1e-3", "~0.31", "0.5", "=2", "2 (1/3)", "10", "linear", "lowrank:2",
                             "-", "", "- (0/3)"]
    assert result["desc"] == ["10", "=2", "2 (1/3)", "0.5", "~0.31", "1e-3", "-0.01", "lowrank:2", "linear",
                              "-", "", "- (0/3)"]
    assert result["filter"] == [True, False, True]


PROBE_HEAD = """<script>window.__errors = [];
window.addEventListener("error", function (e) { window.__errors.push(String(e.message)); });
var __error = console.error;
console.error = function () { window.__errors.push(Array.prototype.join.call(arguments, " ")); };
</script>"""

PROBE_TAIL = """<script>window.addEventListener("load", function () {
  var out = {errors: window.__errors, inner: window.innerWidth, page: document.documentElement.scrollWidth,
             tables: []};
  var boards = document.querySelectorAll("div.board");
  Array.prototype.forEach.call(boards, function (b) {
    var s = b.querySelector(".scroll");
    out.tables.push({scroll: s.scrollWidth, width: s.clientWidth});
  });
  var names = function (b) {
    return Array.prototype.map.call(b.querySelector("table").tHead.rows[0].cells, function (h) {
      return h.textContent; });
  };
  var wanted = %s;
  var found = Array.prototype.filter.call(boards, function (b) { return names(b).indexOf(wanted) >= 0; });
  if (found.length) {  // the first table with the column
    var b = found[0], t = b.querySelector("table"), head = t.tHead.rows[0].cells;
    var c = names(b).indexOf(wanted);
    var column = function () {
      return Array.prototype.filter.call(t.tBodies[0].rows, function (r) { return !r.hidden; })
        .map(function (r) { return r.cells[c].textContent; });
    };
    out.before = column(); head[c].click(); out.asc = column(); out.ascSort = head[c].getAttribute("aria-sort");
    head[c].click(); out.desc = column();
    var input = b.querySelector("input.filter");
    input.value = %s; input.dispatchEvent(new Event("input"));
    out.rows = Array.prototype.map.call(t.tBodies[0].rows, function (r) { return [r.hidden, r.textContent]; });
    out.count = b.querySelector(".count").textContent;
  }
  var pre = document.createElement("pre"); pre.id = "probe"; pre.textContent = JSON.stringify(out);
  document.body.appendChild(pre);
});</script>"""


def chromium(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    if CHROMIUM is None:
        pytest.fail("SPAMLANG_BROWSER_TESTS=required, but no Chromium here (Debian: apt-get install chromium)")
    return subprocess.run([CHROMIUM, "--headless=new", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                           f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=5000", *args],
                          capture_output=True, text=True, timeout=120)


def probe(tmp_path: Path, html_file: Path, width: int, column: str = "learn", query: str = "lowrank") -> dict:
    """Load a copy of the page at ``width`` px with the probe around its script; return what the probe saw."""
    text = html_file.read_text()
    text = text.replace("<head>", "<head>" + PROBE_HEAD, 1)
    text = text.replace("</body>", PROBE_TAIL % (json.dumps(column), json.dumps(query)) + "</body>", 1)
    copy = tmp_path / f"probe-{width}.html"
    copy.write_text(text)
    done = chromium(tmp_path, f"--window-size={width},900", "--dump-dom", copy.as_uri())
    found = re.search(r'<pre id="probe">(.*?)</pre>', done.stdout, re.S)
    assert found, done.stderr[-2000:]
    import html
    return json.loads(html.unescape(found.group(1)))


def number(cell: str) -> float:
    return float(re.match(r"[=~]?(-?[\d.]+(e[-+]?\d+)?)", cell).group(1))


@browser
@pytest.mark.parametrize("width", [390, 1280])
def test_headers_sort_and_the_box_filters_in_a_browser(board, tmp_path, width):
    seen = probe(tmp_path, board, width)
    assert seen["errors"] == []
    assert seen["inner"] <= max(width, 500)  # headless Chromium lays a page out at least 500 px wide
    assert seen["page"] <= seen["inner"]  # nothing wider than the window: wide tables scroll in their own box
    if width == 390:
        assert max(t["scroll"] - t["width"] for t in seen["tables"]) > 0  # the configurations scroll sideways
    asc, desc = seen["asc"], seen["desc"]
    assert seen["before"] != asc and sorted(seen["before"]) == sorted(asc) and seen["ascSort"] == "ascending"
    assert [number(c) for c in asc] == sorted(number(c) for c in asc)
    assert [number(c) for c in desc] == sorted((number(c) for c in desc), reverse=True)
    shown = [text for hidden, text in seen["rows"] if not hidden]
    assert shown and all("lowrank" in text for text in shown) and len(shown) < len(seen["rows"])
    assert seen["count"] == f"{len(shown)} of {len(seen['rows'])} rows"


PUBLISHED = sorted(ROOT.glob("results/*/leaderboard.html"))


@browser
@pytest.mark.parametrize("html_file", PUBLISHED, ids=[p.parent.name for p in PUBLISHED])
def test_published_pages_load_without_errors_and_sort(tmp_path, html_file):
    seen = probe(tmp_path, html_file, 390)
    assert seen["errors"] == []
    if "asc" in seen:  # a page written by this version (older ones have static tables that overflow a phone)
        assert seen["page"] <= seen["inner"]
        assert sorted(seen["asc"]) == sorted(seen["before"]) and seen["ascSort"] == "ascending"


@browser
@pytest.mark.parametrize("width,height", [(390, 844), (1280, 800)])
def test_screenshots_at_phone_and_desktop_width(board, tmp_path, width, height):
    from matplotlib.image import imread
    shot = tmp_path / f"shot-{width}.png"
    done = chromium(tmp_path, f"--window-size={width},{height}", f"--screenshot={shot}", board.as_uri())
    assert shot.is_file(), done.stderr[-2000:]
    pixels = imread(shot)
    assert pixels.shape[:2] == (height, width)
    assert pixels[..., :3].std() > 0.05  # a page was drawn, not a blank window
