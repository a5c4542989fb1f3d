from tests.flows.prefect_server import prefect_server  # noqa: F401  (session-scoped fixture)
