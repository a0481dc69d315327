"""The README's result tables, printed from the auc.csv files they report, so that every number in them is
one a command printed.

A table in a markdown file is marked by the table it shows, the run that made it and its columns::

    <!-- table results/demo/auc.csv scene=ALL columns=auc@5,auc@10,mAP@k -->
    | method | auc@5 | auc@10 | mAP@k |
    ...
    <!-- end table -->

`vop readme-tables README.md` prints each marked table from its auc.csv (paths relative to the markdown
file's folder), `--update` writes them into the file, `--check` fails when the file's tables differ.
Numbers are rounded to one decimal (counts as they are, NSO errors to three); rows keep the csv's method order.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

MARKED = re.compile(r"(?P<open><!-- table (?P<csv>\S+)(?P<options>[^>]*?)\s*-->\n)(?P<body>.*?)(?P<close>"
                    r"^[ \t]*<!-- end table -->)", re.S | re.M)


def _options(text: str, where: str) -> dict[str, str]:
    options = dict(item.split("=", 1) for item in text.split() if "=" in item)
    unknown = set(options) - {"scene", "columns"}
    if unknown or "columns" not in options:
        raise ValueError(f"{where}: a table marker takes columns=a,b,... and optionally scene=NAME "
                         f"(got {text.strip()!r})")
    return options


COUNTS = ("k", "num_queries", "pairs", "pairs_scale_2x", "large_scale_pairs")  # as they are; others one decimal
FRACTIONS = ("rmse", "l1")  # errors of shares in [0, 1] (nso.csv): three decimals


def _cell(column: str, text: str) -> str:
    if column in COUNTS:
        return text
    try:
        return f"{float(text):.3f}" if column in FRACTIONS else f"{float(text):.1f}"
    except ValueError:
        return text  # "no ground truth", an empty cell


def markdown_table(auc_csv: str | Path, columns: Sequence[str], scene: str = "ALL", indent: str = "") -> str:
    """The rows of `scene` of an auc.csv as a markdown table: method, then `columns` (one decimal)."""
    auc_csv = Path(auc_csv)
    if not auc_csv.is_file():
        raise FileNotFoundError(f"{auc_csv}: no such table; run the command that makes it first "
                                f"(snakemake --cores all {auc_csv.as_posix()})")
    table = pd.read_csv(auc_csv, dtype=str, keep_default_na=False)
    missing = [c for c in ("method", "scene", *columns) if c not in table.columns]
    if missing:
        raise ValueError(f"{auc_csv}: no column(s) {missing}; it has {list(table.columns)}")
    rows = table[table["scene"] == scene]
    if rows.empty:
        raise ValueError(f"{auc_csv}: no rows of scene {scene!r}")
    lines = ["| method | " + " | ".join(columns) + " |", "|" + "---|" * (len(columns) + 1)]
    lines += ["| " + " | ".join([row["method"], *(_cell(c, row[c]) for c in columns)]) + " |"
              for _, row in rows.iterrows()]
    return "".join(f"{indent}{line}\n" for line in lines)


def render(markdown: str, base: str | Path, where: str = "README") -> tuple[str, list[tuple[str, str]]]:
    """`markdown` with every marked table regenerated from its auc.csv; and each (auc.csv, table)."""
    tables = []

    def table(match: re.Match) -> str:
        options = _options(match["options"], where)
        indent = re.match(r"[ \t]*", match["close"])[0]
        body = markdown_table(Path(base) / match["csv"], options["columns"].split(","), options.get("scene", "ALL"),
                              indent)
        tables.append((match["csv"], body))
        return match["open"] + body + match["close"]

    return MARKED.sub(table, markdown), tables


def update_tables(path: str | Path, write: bool = False) -> tuple[bool, str]:
    """(whether the file's tables are what their auc.csv files say, the regenerated file); `write` saves it."""
    path = Path(path)
    text = path.read_text(encoding="utf-8")
    new, tables = render(text, path.parent, str(path))
    if not tables:
        raise ValueError(f"{path}: no marked tables (<!-- table results/<dataset>/auc.csv columns=... -->)")
    if write and new != text:
        path.write_text(new, encoding="utf-8")
    return new == text, new
