"""A request's kind, where the data says it (the `kind` column): what the safety world builds, the validation
suites check, the simulated annotator and the reward rules read, and the evaluation splits its rates by."""

from collections.abc import Mapping

from tasks.core.errors import DataValidationError

REQUEST_KINDS = ("harmful", "benign", "sound_harmful")
KIND_COLUMN = "kind"


def kind_of(record: Mapping) -> str | None:
    """A data row's request kind: its `kind`, else `harmful` (true/false) read as harmful or benign; None when
    the row says neither."""
    kind = record.get(KIND_COLUMN)
    if kind not in REQUEST_KINDS and isinstance(record.get("harmful"), bool):
        kind = "harmful" if record["harmful"] else "benign"
    return kind if kind in REQUEST_KINDS else None


def required_kind(record: Mapping, needed_by: str, row: object = None) -> str:
    """`kind_of` for a reader that cannot go on without it: a row that says neither is a `DataValidationError`
    that starts with `needed_by` (where, and who needs it) and names the row."""
    kind = kind_of(record)
    if kind is None:
        which = f"row {row} has" if row is not None else "the row has"
        raise DataValidationError(f"{needed_by} each request's kind, a `{KIND_COLUMN}` column "
                                  f"({', '.join(REQUEST_KINDS)}) or a true/false `harmful` one; {which} neither")
    return kind
