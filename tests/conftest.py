"""Makes tests/ importable (tests/tiny.py) from every test folder."""
