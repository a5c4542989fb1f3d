"""Prefect flows (thin shells over the library); `flows.steps` holds the step logic without Prefect."""
