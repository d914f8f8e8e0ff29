"""Every shared fixture lives in tests/support/, next to the helper or emulator it serves, and is
registered here for the whole suite. Tests are laid out like the package: tests/<package>/."""

pytest_plugins = [
    "tests.support.advisory_server",  # OSV and npm advisory APIs for the dependency audit
    "tests.support.servers",  # PostgreSQL, Redis, the embedded sandbox
    "tests.support.api_app",
    "tests.support.backup_helpers",
    "tests.support.dagster_dev",
    "tests.support.es_receiver",  # an Elasticsearch _bulk endpoint for the log shipper
    "tests.support.git_http",  # git http-backend behind a token: remotes carrying a token
    "tests.support.k8s_emulator",
    "tests.support.pg_fixtures",
    "tests.support.production",
    "tests.support.pushgateway",  # a real Pushgateway: the `gateway` fixture
    "tests.support.redis_ha",  # primary + replica + 3 Sentinels from deploy/redis/ha/
    "tests.support.registry_fixtures",
    "tests.support.s3_fixtures",
    "tests.support.s3_iam",  # an S3 server that enforces IAM (backups nobody can erase)
    "tests.support.slack_receiver",
    "tests.support.jwt_api",  # the sample API as pods loading the JWT Secret
]
