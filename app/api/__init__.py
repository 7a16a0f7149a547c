"""The API layer: the application context, the endpoint table, wire formats, and one package per protocol."""
