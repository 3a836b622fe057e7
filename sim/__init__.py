"""Simulator, capacity planning and the tools that drive a running server (``sim/live/``)."""

import queueing  # noqa: F401  # first: it decides whether the compiled build of the simulator's loop is used
