"""Test-wide settings: the gRPC listener (default port 8001) stays off unless a test turns it on, so that servers
started by tests in parallel or back to back never compete for one port."""

from __future__ import annotations

import os

os.environ.setdefault("AE_GRPC_PORT", "0")
