from tests.flows.prefect_server import prefect_server  # noqa: F401  (module-scoped fixture)
