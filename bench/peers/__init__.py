"""The benchmark's peers, each run as its own process: `echo.py` (the ceiling, in the service's virtualenv),
`tutorial_app.py` and `bentoml_service.py` (each in its own virtualenv, see bench/README.md)."""
