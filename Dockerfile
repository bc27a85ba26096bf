# GPU image for vig-spark's Spark driver and executors on Kubernetes, and for `vig` in a container: CUDA 12.8
# runtime, Python 3.11, Java 17, vig-spark with its spark and train extras, Delta Lake's jars.
#
#   docker build -t <registry>/vig-spark:gpu .
#   docker run --rm --gpus all <registry>/vig-spark:gpu python -c "import torch; print(torch.cuda.is_available())"
#
# The entrypoint (docker/entrypoint.sh) follows Spark on Kubernetes' container contract: the scheduler starts
# the driver pod with `driver ...` and executor pods with `executor`; any other command runs as given. The
# spark-submit line for k8s:// is in README.md ("Kubernetes").
#
# torch and torchvision come from PyTorch's CUDA wheel index (the wheels bundle their CUDA libraries; the
# host needs an NVIDIA driver that supports CUDA 12.8 and the NVIDIA container runtime). Override with
#   --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu126 --build-arg TORCH_PACKAGES="torch==X torchvision==Y"
FROM nvidia/cuda:12.8.1-runtime-ubuntu22.04

ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128
ARG TORCH_PACKAGES="torch torchvision"

ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# tini runs every process the entrypoint starts; libnss-wrapper gives a pod run as an arbitrary UID a user name.
RUN apt-get update \
 && apt-get install -y --no-install-recommends \
      python3.11 python3.11-venv openjdk-17-jre-headless procps tini libnss-wrapper ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && ln -s "$(dirname "$(dirname "$(readlink -f "$(command -v java)")")")" /opt/java

ENV JAVA_HOME=/opt/java \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    PYSPARK_PYTHON=/opt/venv/bin/python \
    PYSPARK_DRIVER_PYTHON=/opt/venv/bin/python \
    SPARK_HOME=/opt/venv/lib/python3.11/site-packages/pyspark \
    VIG_HOME=/opt/vig-spark

# torch first, from the CUDA index, so that installing vig-spark finds it satisfied and keeps it. The torch
# pair is the build's choice (TORCH_PACKAGES, a list split on purpose), never pinned here: DL3013, SC2086.
# hadolint ignore=DL3013,SC2086
RUN python3.11 -m venv /opt/venv \
 && pip install --upgrade "pip>=24" \
 && pip install --index-url "$TORCH_INDEX_URL" $TORCH_PACKAGES

WORKDIR /opt/vig-spark
COPY pyproject.toml README.md ./
COPY vig_udf ./vig_udf
# Executors run the scorer and TorchDistributor's training ranks: the spark and train extras.
RUN pip install "./[spark,train]" \
 && python -c "import torch, torchvision, transformers, pyspark, delta, mlflow, peft, vig_udf; print('torch', torch.__version__, 'cuda', torch.version.cuda)"
COPY conf ./conf
COPY jobs ./jobs
COPY docker ./docker
RUN chmod 0755 conf/getGpusResources.sh docker/entrypoint.sh

# Spark's usual unprivileged user (uid 185), in the root group: its home (the Hugging Face cache, Spark's Ivy
# cache) and the work directory are group-writable, so a pod run as another UID in group 0 (OpenShift) can
# use them. Executors fetch the application's files and jars into their working directory: it must be writable.
RUN useradd --uid 185 --gid 0 --create-home --home-dir /home/spark spark \
 && install -d -o 185 -g 0 -m 0775 /opt/vig-spark/work \
 && chmod -R g=u /home/spark
ENV HOME=/home/spark \
    HF_HOME=/home/spark/.cache/huggingface
USER 185
# Delta Lake's Spark jars and hadoop-aws, resolved once into the image's Ivy cache (~/.ivy2.5.2) and recorded
# with a class-data archive in ~/.cache/vig-spark (vig_udf/spark/startup.py); the driver pod resolves
# spark-submit's --packages "$(python -m vig_udf.spark.session --s3a)" from there.
RUN SPARK_LOCAL_IP=127.0.0.1 python -m vig_udf.spark.session --fetch \
 && chmod -R g=u /home/spark
WORKDIR /opt/vig-spark/work

ENTRYPOINT ["/opt/vig-spark/docker/entrypoint.sh"]
CMD ["vig", "--help"]
