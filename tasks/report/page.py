"""The comparison report as one self-contained HTML page: the table, the plots (inline PNGs), six fixed prompts
answered by every method, and the data lineage. Pure: no MLflow, no files; no scripts, so nothing to break."""

from __future__ import annotations

import base64
import html

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; max-width: 1200px; }
table { border-collapse: collapse; margin-bottom: 1.5em; }
th, td { border: 1px solid #ccc; padding: 4px 8px; text-align: left; vertical-align: top; font-size: 0.9em; }
th { background: #f4f4f4; }
img { max-width: 100%; }
.refused { color: #0a6e31; } .answered { color: #444; }
code { font-size: 0.9em; }
"""


def render_report(*, title: str, table_markdown: str, summary_png: bytes, curves_png: bytes,
                  answers: list[dict], lineage: dict[str, str]) -> str:
    """`answers`: one dict per fixed prompt: prompt, kind, and per method {"response", "refused"}."""
    e = html.escape
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f"<title>{e(title)}</title><style>{_STYLE}</style></head><body>\n"
        f"<h1>{e(title)}</h1>\n"
        "<h2 id=\"methods\">Methods side by side</h2>\n" + _table(table_markdown) +
        "<h2 id=\"plots\">Refusal, over-refusal, reward and KL</h2>\n" + _image("summary-plot", summary_png) +
        "<h2 id=\"curves\">Training curves</h2>\n" + _image("curves-plot", curves_png) +
        "<h2 id=\"answers\">Six fixed prompts, every method's answer</h2>\n" + _answers(answers) +
        "<h2 id=\"lineage\">Data lineage</h2>\n" + _lineage(lineage) + "</body></html>\n"
    )


def _table(markdown: str) -> str:
    """The comparison's markdown table as HTML (its lines after the table are a note)."""
    e = html.escape
    lines = markdown.strip().splitlines()
    rows = [line.strip("|").split("|") for line in lines if line.startswith("|") and not line.startswith("|---")]
    notes = [line for line in lines if line and not line.startswith("|")]
    head, body = rows[0], rows[1:]
    out = ["<table id=\"comparison\"><tr>" + "".join(f"<th>{e(c.strip())}</th>" for c in head) + "</tr>"]
    out += ["<tr>" + "".join(f"<td>{e(c.strip())}</td>" for c in row) + "</tr>" for row in body]
    return "\n".join(out) + "</table>\n" + "".join(f"<p>{e(note)}</p>\n" for note in notes)


def _image(element_id: str, png: bytes) -> str:
    data = base64.b64encode(png).decode("ascii")
    return f"<img id=\"{element_id}\" alt=\"{element_id}\" src=\"data:image/png;base64,{data}\">\n"


def _answers(answers: list[dict]) -> str:
    e = html.escape
    if not answers:
        return "<p>No generations to show.</p>\n"
    methods = list(answers[0]["methods"])
    out = ["<table id=\"answers-table\"><tr><th>prompt</th>" + "".join(f"<th>{e(m)}</th>" for m in methods)
           + "</tr>"]
    for row in answers:
        cells = []
        for method in methods:
            answer = row["methods"].get(method)
            if answer is None:
                cells.append("<td>-</td>")
            else:
                verdict = "refused" if answer["refused"] else "answered"
                cells.append(f"<td class=\"{verdict}\">{e(answer['response'])}<br><small>{verdict}</small></td>")
        out.append(f"<tr><td><b>{e(row['kind'])}</b>: {e(row['prompt'])}</td>" + "".join(cells) + "</tr>")
    return "\n".join(out) + "</table>\n"


def _lineage(lineage: dict[str, str]) -> str:
    e = html.escape
    rows = "".join(f"<tr><th>{e(k)}</th><td><code>{e(v)}</code></td></tr>" for k, v in lineage.items())
    return f"<table id=\"lineage-table\">{rows}</table>\n"
