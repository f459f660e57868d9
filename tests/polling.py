"""Polling helpers for tests: wait on a condition with a deadline instead of sleeping.

They live in :mod:`agent.polling` (the demo's throwaway servers use them too); re-exported.
"""

from __future__ import annotations

from agent.polling import WaitTimeout, free_port, wait_until

__all__ = ["WaitTimeout", "free_port", "wait_until"]
