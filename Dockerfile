# syntax=docker/dockerfile:1
# CPU serving image: only the serving dependencies (no torch), the committed models, a non-root user.
# (Issue 7 adds the CUDA variant, the training stage and production settings.)
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY app ./app
RUN pip install --no-cache-dir --prefix=/install ".[serve]"

FROM python:3.11-slim
RUN useradd --create-home --uid 10001 app
COPY --from=build /install /usr/local
WORKDIR /srv
COPY app ./app
COPY models ./models
USER app
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s --retries=3 \
  CMD python -c "import urllib.request,sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/healthz').status != 200)"
CMD ["python", "-m", "app", "--host", "0.0.0.0", "--port", "8000"]
