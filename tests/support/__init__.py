"""Shared helpers for the test suite: servers, ports, waiting, SIPp, PostgreSQL and metrics."""
