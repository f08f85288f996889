"""Helpers the tests share: configs shrunk for tests, the CAI fixtures, the loopback services."""
