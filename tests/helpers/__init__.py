"""Helpers the tests share: configs shrunk for tests, the CAI fixtures, the loopback services, and the two ends of
a feedback round (an export to label, the import checked)."""
