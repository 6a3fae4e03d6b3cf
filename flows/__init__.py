"""Prefect flows: wiring of tasks, no logic of their own."""
