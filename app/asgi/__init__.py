"""The ASGI middleware stack: request context, security, admission, disconnects, the hot path, methods."""
