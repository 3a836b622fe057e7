"""Callback lists: booking, dispatch and the agent API."""
