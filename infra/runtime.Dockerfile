# The Pier runtime image (PIER_KUBE_IMAGE): what every model API pod runs. Its init container runs
# `python -m pier.fetch` from here to fetch the version's image by digest; the model then runs on the
# image's own environment (a relocatable venv) with the harness the image carries. The base must be
# the one the builder's environments were made with (infra/Dockerfile's), since a venv links to it.
#   docker build -f infra/runtime.Dockerfile -t pier-runtime:latest .
FROM python:3.11-slim
RUN pip install --no-cache-dir "msgspec>=0.19"
COPY libs/pier /opt/pier/pier
ENV PYTHONPATH=/opt/pier PYTHONDONTWRITEBYTECODE=1
USER 10001:10001
CMD ["python", "-m", "pier.harness"]
