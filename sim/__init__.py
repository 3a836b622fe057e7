"""Simulator, capacity planning and load tools."""
