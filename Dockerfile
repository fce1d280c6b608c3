# The image every task of the Kubeflow pipeline runs in (python -m pipeline dag kubeflow --image ...):
# this project and its kubeflow extra (the tasks are KFP lightweight components, which need kfp).
#   docker build -t registry.example.com/mnist-pipeline:1 . && docker push registry.example.com/mnist-pipeline:1
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 TF_CPP_MIN_LOG_LEVEL=2
WORKDIR /opt/mnist-pipeline
COPY pyproject.toml ./
COPY pipeline ./pipeline
COPY components ./components
RUN pip install '.[kubeflow]' && useradd --create-home --uid 1000 pipeline
# The artifacts root is the PersistentVolumeClaim mounted at --artifacts; TFDS keeps its data in
# ingest.data_dir (put it on the claim too, or each task prepares MNIST again).
USER 1000
