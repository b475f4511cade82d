"""Session fixtures: each real server the tests need lives in its own module under tests/fixtures."""

pytest_plugins: list[str] = []
