# The blog example with pgcelery installed: one image for web, bridge and worker.
FROM python:3.12-slim
ENV PYTHONUNBUFFERED=1
WORKDIR /app
COPY pyproject.toml README.md ./
COPY pgcelery ./pgcelery
RUN pip install --no-cache-dir .
COPY example_project ./example_project
WORKDIR /app/example_project
