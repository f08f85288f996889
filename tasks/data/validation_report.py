"""What data validation found, as data (report.json), as a page (report.html) and as an error message."""

from __future__ import annotations

import html
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tasks.data.readers import ROW


@dataclass(frozen=True)
class ExpectationFailure:
    """One failed expectation: which, on what column, how many rows, and a few of them."""

    expectation: str  # GX type name, e.g. "expect_column_values_to_match_regex"
    column: str | None
    unexpected_count: int | None
    example_rows: list[dict]
    description: str = ""  # what the expectation means in this pipeline, in words
    row_level: bool = True  # False: no rows to move aside (missing column, zero rows, unreadable file)

    @property
    def label(self) -> str:
        return f"{self.expectation}({self.column})" if self.column else self.expectation


@dataclass(frozen=True)
class Check:
    """One expectation that was evaluated on a file (passed or failed), for the report."""

    expectation: str
    column: str | None
    description: str


@dataclass(frozen=True)
class FileReport:
    """The verdict on one file, and which file downstream stages should read."""

    name: str
    path: Path
    kind: str
    rows: int
    failures: list[ExpectationFailure]
    quarantined_rows: list[int]
    clean_path: Path  # what downstream stages read: the original file unless rows were dropped
    quarantine_path: Path | None
    checks: list[Check] = field(default_factory=list)

    @property
    def success(self) -> bool:
        return not self.failures

    @property
    def table_level_failures(self) -> list[ExpectationFailure]:
        return [failure for failure in self.failures if not failure.row_level]

    @property
    def quarantined_fraction(self) -> float:
        return len(self.quarantined_rows) / self.rows if self.rows else 0.0

    def failure_for(self, check: Check) -> ExpectationFailure | None:
        key = (check.expectation, check.column)
        return next((f for f in self.failures if (f.expectation, f.column) == key), None)

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "path": str(self.path),
            "kind": self.kind,
            "rows": self.rows,
            "success": self.success,
            "checks": [{**asdict(c), "success": self.failure_for(c) is None} for c in self.checks],
            "failures": [asdict(failure) for failure in self.failures],
            "quarantined_rows": list(self.quarantined_rows),
            "quarantined_count": len(self.quarantined_rows),
            "clean_path": str(self.clean_path),
            "quarantine_path": str(self.quarantine_path) if self.quarantine_path else None,
        }


@dataclass(frozen=True)
class ValidationReport:
    files: list[FileReport]

    @property
    def success(self) -> bool:
        return all(file.success for file in self.files)

    def to_dict(self) -> dict:
        return {
            "success": self.success,
            "files": [file.to_dict() for file in self.files],
            "quarantined_count": sum(len(file.quarantined_rows) for file in self.files),
        }

    def to_html(self) -> str:
        return render_html(self)


def describe(file: FileReport) -> str:
    lines = [f"{file.name}: {file.path} ({file.rows} rows)"]
    for failure in file.failures:
        count = "" if failure.unexpected_count is None else f": {failure.unexpected_count} unexpected"
        column = failure.column or "table"
        lines.append(f"  - {failure.expectation} [{column}]{count} -- {failure.description}")
        lines.extend(f"      row {example[ROW]}: {json.dumps(example, ensure_ascii=False)}"
                     for example in failure.example_rows)
    return "\n".join(lines)


_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; }
table { border-collapse: collapse; margin-bottom: 2em; width: 100%; }
th, td { border: 1px solid #ccc; padding: 4px 8px; text-align: left; vertical-align: top; }
th { background: #f4f4f4; }
.pass { color: #1a7f37; font-weight: bold; }
.fail { color: #cf222e; font-weight: bold; }
pre { margin: 0; white-space: pre-wrap; font-size: 0.85em; }
"""


def render_html(report: ValidationReport) -> str:
    status = _status(report.success)
    sections = "\n".join(_file_html(file) for file in report.files)
    return (
        "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>Data validation report</title>"
        f"<style>{_STYLE}</style></head><body>\n<h1>Data validation report: {status}</h1>\n"
        f"{_summary_html(report)}\n{sections}\n</body></html>\n"
    )


def _summary_html(report: ValidationReport) -> str:
    """Above the fold: every file's verdict in one table, and each failure in one line, linked to its file."""
    e = html.escape
    rows = []
    for file in report.files:
        failures = "<br>".join(
            f"{e(failure.label)}"
            + ("" if failure.unexpected_count is None else f": {failure.unexpected_count} rows")
            + f" &mdash; {e(failure.description)}" for failure in file.failures)
        quarantined = str(len(file.quarantined_rows)) if file.quarantined_rows else ""
        rows.append(f"<tr><td><a href=\"#{e(file.name)}\">{e(file.name)}</a></td><td>{file.rows}</td>"
                    f"<td>{_status(file.success)}</td><td>{quarantined}</td><td>{failures}</td></tr>")
    failed = sum(not file.success for file in report.files)
    headline = (f"All {len(report.files)} datasets passed." if not failed
                else f"{failed} of {len(report.files)} datasets failed.")
    return (f"<p id=\"summary\">{headline}</p>\n<table><tr><th>Dataset</th><th>Rows</th><th>Result</th>"
            "<th>Quarantined</th><th>Failures</th></tr>\n" + "\n".join(rows) + "\n</table>")


def _status(success: bool) -> str:
    return '<span class="pass">PASS</span>' if success else '<span class="fail">FAIL</span>'


def _file_html(file: FileReport) -> str:
    e = html.escape
    rows = []
    for check in file.checks:
        failure = file.failure_for(check)
        count = "" if failure is None or failure.unexpected_count is None else str(failure.unexpected_count)
        examples = "" if failure is None else "\n".join(
            json.dumps(example, ensure_ascii=False) for example in failure.example_rows
        )
        detail = check.description if failure is None else failure.description
        rows.append(
            f"<tr><td>{e(check.expectation)}</td><td>{e(check.column or '')}</td><td>{e(detail)}</td>"
            f"<td>{_status(failure is None)}</td><td>{count}</td><td><pre>{e(examples)}</pre></td></tr>"
        )
    quarantine = (f"; quarantined {len(file.quarantined_rows)} rows to {e(str(file.quarantine_path))}"
                  if file.quarantined_rows else "")
    return (
        f"<h2 id=\"{e(file.name)}\">{e(file.name)} ({e(file.kind)}): {_status(file.success)}</h2>\n"
        f"<p>{e(str(file.path))}: {file.rows} rows{quarantine}; "
        f"downstream reads {e(str(file.clean_path))}</p>\n"
        "<table><tr><th>Expectation</th><th>Column</th><th>Meaning</th><th>Result</th><th>Unexpected</th>"
        "<th>Example rows</th></tr>\n" + "\n".join(rows) + "\n</table>"
    )
