"""Orchestration: configuration, artifact store, runner and command line."""
