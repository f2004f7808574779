"""Logs, metrics, traces and audit: hooks into the task life cycle."""
