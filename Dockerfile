# shardcache with its Kubeflow extras preinstalled, for clusters whose pods cannot reach PyPI.
#
#   docker build -t registry.example.com/ml/shardcache:0.1.0 .
#   docker push registry.example.com/ml/shardcache:0.1.0
#
# Pipelines then use shardcache.kubeflow_components.components_for_image("registry.example.com/ml/shardcache:0.1.0"),
# or compile the example with `python examples/kubeflow/pipeline.py --image registry.example.com/ml/shardcache:0.1.0`.
# (The default, lightweight components run on the same base image and pip-install shardcache when a step starts.)
#
# torch is a dependency of shardcache. By default pip installs the wheel the package index serves, which on
# x86_64 is CUDA-enabled and several GB; for CPU-only steps pass PyTorch's CPU wheel index:
#   docker build --build-arg TORCH_INDEX_URL=<PyTorch CPU wheel index> -t ... .
FROM python:3.11-slim

ARG TORCH_INDEX_URL=""
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1

WORKDIR /tmp/shardcache-src
COPY pyproject.toml README.md ./
COPY shardcache ./shardcache
RUN if [ -n "$TORCH_INDEX_URL" ]; then pip install --index-url "$TORCH_INDEX_URL" torch; fi \
    && pip install ".[kubeflow,metrics]" \
    && cd / && rm -rf /tmp/shardcache-src

# KFP runs a containerized component as `python3 -m kfp.dsl.executor_main --function_to_execute NAME`, which looks
# the function up in kfp_config.ini in the working directory: point it at the installed components.
WORKDIR /opt/shardcache
RUN python -m shardcache.kubeflow_components.components kfp-config > kfp_config.ini \
    && python -c "import kfp, kubernetes, shardcache.kubeflow_components.components"

# Run as a user, not root. KFP backends since 2.1 mount scratch volumes at /gcs, /minio and /s3; older ones
# write there directly, so let any user create files in them.
RUN mkdir -p /gcs /minio /s3 && chmod 1777 /gcs /minio /s3 \
    && useradd --uid 1000 --create-home --shell /usr/sbin/nologin shardcache
USER 1000
