"""A request's kind, where the data says it (the `kind` column): what the safety world builds, the validation
suites check, the simulated annotator and the reward rules read, and the evaluation splits its rates by."""

from collections.abc import Mapping

REQUEST_KINDS = ("harmful", "benign", "sound_harmful")
KIND_COLUMN = "kind"


def kind_of(record: Mapping) -> str | None:
    """A data row's request kind: its `kind`, else `harmful` (true/false) read as harmful or benign; None when
    the row says neither."""
    kind = record.get(KIND_COLUMN)
    if kind not in REQUEST_KINDS and isinstance(record.get("harmful"), bool):
        kind = "harmful" if record["harmful"] else "benign"
    return kind if kind in REQUEST_KINDS else None
