"""The leaderboard page's style and script: tables that scroll sideways on a narrow screen, sort on a click of a
column header and filter on the text typed above them; plots at their own size. Plain CSS and JavaScript inlined in
the page, so that it needs no network access.

Sorting (``sortKey`` and ``compareKeys`` in :data:`SCRIPT`): a cell that begins with a number (after an optional
``=`` or ``~``, as in ranks ``=2`` and estimated floors ``~0.31``) sorts by that number, other text after every number
in alphabetical order, and an empty cell or ``-`` (a missing value) last in either direction. A first click sorts
ascending, the next descending. Filtering keeps the rows that contain every word typed, in any case.
"""

from __future__ import annotations

import base64
import html
import itertools
import re
from pathlib import Path
from typing import Mapping

STYLE = """body{font-family:system-ui,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;font-size:13px}th,td{padding:3px 8px;border-bottom:1px solid #ddd;white-space:nowrap}
th{background:#f3f3f3;text-align:left;cursor:pointer;user-select:none;position:sticky;top:0}
th:hover{background:#e6e6e6}th[aria-sort=ascending]::after{content:" \\25B2"}
th[aria-sort=descending]::after{content:" \\25BC"}tr:nth-child(even) td{background:#fafafa}td.num{text-align:right}
.board{margin:1em 0}.scroll{overflow-x:auto;max-width:100%}
input.filter{font:inherit;font-size:13px;padding:3px 6px;margin:0 0 .4em;width:18em;max-width:100%;\
box-sizing:border-box}
.count{font-size:12px;color:#777;margin-left:.6em}
code{background:#f3f3f3;padding:1px 4px;overflow-wrap:anywhere}.plot{overflow-x:auto;margin:1em 0}
.plot img{display:block;max-width:none;height:auto}p,li{font-size:13px;color:#555}
@media (max-width:600px){body{margin:.5em auto;padding:0 .5em}h1{font-size:1.4em}}"""

SCRIPT = r"""
function sortKey(text) {
  var t = text.trim().replace(/^[=~]/, "");
  var m = t.match(/^-?(\d+\.?\d*|\.\d+)(e[-+]?\d+)?/i);
  if (m) return [0, parseFloat(m[0]), ""];
  if (t === "" || t.charAt(0) === "-") return [2, 0, ""];
  return [1, 0, t.toLowerCase()];
}
function compareKeys(a, b, descending) {
  if (a[0] !== b[0]) return a[0] - b[0];
  var order = a[0] === 0 ? a[1] - b[1] : (a[2] < b[2] ? -1 : a[2] > b[2] ? 1 : 0);
  return descending ? -order : order;
}
function matches(text, query) {
  var words = query.toLowerCase().split(/\s+/).filter(Boolean);
  text = text.toLowerCase();
  return words.every(function (w) { return text.indexOf(w) >= 0; });
}
function sortTable(table, column) {
  var th = table.tHead.rows[0].cells[column];
  var descending = th.getAttribute("aria-sort") === "ascending";
  Array.prototype.forEach.call(table.tHead.rows[0].cells, function (c) { c.removeAttribute("aria-sort"); });
  th.setAttribute("aria-sort", descending ? "descending" : "ascending");
  var body = table.tBodies[0];
  var rows = Array.prototype.slice.call(body.rows).map(function (row, i) {
    return {row: row, key: sortKey(row.cells[column] ? row.cells[column].textContent : ""), i: i};
  });
  rows.sort(function (a, b) { return compareKeys(a.key, b.key, descending) || a.i - b.i; });
  rows.forEach(function (r) { body.appendChild(r.row); });
}
function filterTable(table, query, counter) {
  var shown = 0, rows = table.tBodies[0].rows;
  Array.prototype.forEach.call(rows, function (row) {
    var keep = matches(row.textContent, query);
    row.hidden = !keep;
    shown += keep ? 1 : 0;
  });
  counter.textContent = query.trim() ? shown + " of " + rows.length + " rows" : "";
}
if (typeof document !== "undefined") {
  Array.prototype.forEach.call(document.querySelectorAll("div.board"), function (board) {
    var table = board.querySelector("table"), input = board.querySelector("input.filter");
    var counter = board.querySelector(".count");
    Array.prototype.forEach.call(table.tHead.rows[0].cells, function (th, column) {
      th.title = "Sort by this column (click again to reverse)";
      th.addEventListener("click", function () { sortTable(table, column); });
    });
    input.addEventListener("input", function () { filterTable(table, input.value, counter); });
  });
}
"""

VIEWPORT = '<meta name="viewport" content="width=device-width, initial-scale=1">'


def board(table: str) -> str:
    """An HTML ``table`` with its filter box and row count, scrolling sideways when wider than the page."""
    label = html.escape("Show only the rows that contain every word typed here")
    return (f'<div class="board"><input type="search" class="filter" placeholder="filter rows" aria-label="{label}" '
            f'title="{label}"><span class="count"></span><div class="scroll">{table}</div></div>')


def plot(img: str) -> str:
    """An HTML ``img`` shown at its own size, scrolling sideways when wider than the page."""
    return f'<div class="plot">{img}</div>'


def _inline(text: str) -> str:
    return re.sub(r"`([^`]*)`", r"<code>\1</code>", html.escape(text))


def _html_table(lines: list[str]) -> str:
    cells = [[c.strip() for c in line.strip().strip("|").split("|")] for line in lines]
    right = [c.endswith(":") for c in cells[1]]
    head = "".join(f"<th>{_inline(c)}</th>" for c in cells[0])
    body = "".join("<tr>" + "".join(f"<td{' class=num' if r else ''}>{_inline(c)}</td>" for c, r in zip(row, right))
                   + "</tr>" for row in cells[2:])
    return board(f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")


def _html_heading(line: str) -> str:
    level = len(line) - len(line.lstrip("#"))
    return f"<h{level}>{_inline(line[level:].strip())}</h{level}>"


def _html_image(line: str, images: Mapping[str, bytes]) -> str:
    """An image line's plot as an ``img`` with the image inline: its SVG (vector) where ``images`` holds one, else
    its PNG."""
    alt, name = re.fullmatch(r"!\[(.*)\]\((.*)\)", line.strip()).groups()
    vector = images.get(str(Path(name).with_suffix(".svg")))
    kind, data = ("svg+xml", vector) if vector is not None else ("png", images[name])
    return plot(f'<img alt="{html.escape(alt)}" src="data:image/{kind};base64,{base64.b64encode(data).decode()}">')


def to_html(text: str, images: Mapping[str, bytes]) -> str:
    """The Markdown that :func:`spamlang.publishing.markdown.markdown` writes as one self-contained HTML page (inline
    CSS and script, ``images`` embedded in base64, as SVG where ``images`` also holds ``<name>.svg``, else PNG):
    sortable, filterable tables that scroll sideways on a narrow screen (see :mod:`spamlang.publishing.html`)."""
    def kind(line: str) -> str:
        return next((k for k, p in (("table", "|"), ("item", "- "), ("heading", "#"), ("image", "![")) if
                     line.startswith(p)), "text" if line.strip() else "blank")

    parts = []
    for k, group in itertools.groupby(text.splitlines(), kind):
        group = list(group)
        if k == "table":
            parts.append(_html_table(group))
        elif k == "item":
            parts.append("<ul>" + "".join(f"<li>{_inline(line[2:])}</li>" for line in group) + "</ul>")
        elif k == "text":
            parts.append("<p>" + "<br>".join(map(_inline, group)) + "</p>")
        elif k == "heading":
            parts += map(_html_heading, group)
        elif k == "image":
            parts += [_html_image(line, images) for line in group]
    return ("<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>SpamLang leaderboard</title>"
            f"{VIEWPORT}<style>{STYLE}</style></head>\n<body>\n" + "\n".join(parts) +
            f"\n<script>{SCRIPT}</script>\n</body></html>\n")
