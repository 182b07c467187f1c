"""The control API: sandbox records, API keys and images, served under ``/api``."""
