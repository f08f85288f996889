"""A request's kind, where the data says it (the `kind` column): what the safety world builds, the validation
suites check, the simulated annotator and the reward rules read, and the evaluation splits its rates by."""

REQUEST_KINDS = ("harmful", "benign", "sound_harmful")
KIND_COLUMN = "kind"
