"""Simulator, capacity planning and the tools that drive a running server (``sim/live/``)."""
