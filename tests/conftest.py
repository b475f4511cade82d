"""Session fixtures: each real server the tests need lives in its own module under tests/fixtures."""

pytest_plugins: list[str] = [
    "tests.fixtures.redis_server",
    "tests.fixtures.postgres_server",
    "tests.fixtures.pgbouncer_server",
    "tests.fixtures.alertmanager_server",
    "tests.fixtures.kube_api",
    "tests.fixtures.app_server",
]
