"""The evaluation judge measured: its gold set of answers labelled by reading them, and its known errors."""
