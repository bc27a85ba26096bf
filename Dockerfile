# GPU image for vig-spark's Spark driver and executors: CUDA 12.8 runtime, Python 3.11, Java 17, vig-spark.
#
#   docker build -t vig-spark:gpu .
#   docker run --rm --gpus all vig-spark:gpu python -c "import torch; print(torch.cuda.is_available())"
#
# torch and torchvision come from PyTorch's CUDA wheel index (the wheels bundle their CUDA libraries; the
# host needs an NVIDIA driver that supports CUDA 12.8 and the NVIDIA container runtime). Override with
#   --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu126 --build-arg TORCH_PACKAGES="torch==X torchvision==Y"
# Spark executors find their GPUs with conf/getGpusResources.sh:
#   spark.executor.resource.gpu.discoveryScript=/opt/vig-spark/conf/getGpusResources.sh
FROM nvidia/cuda:12.8.1-runtime-ubuntu22.04

ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128
ARG TORCH_PACKAGES="torch torchvision"

ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

RUN apt-get update \
 && apt-get install -y --no-install-recommends \
      python3.11 python3.11-venv openjdk-17-jre-headless procps tini ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && ln -s "$(dirname "$(dirname "$(readlink -f "$(command -v java)")")")" /opt/java

ENV JAVA_HOME=/opt/java \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    PYSPARK_PYTHON=/opt/venv/bin/python \
    PYSPARK_DRIVER_PYTHON=/opt/venv/bin/python \
    SPARK_HOME=/opt/venv/lib/python3.11/site-packages/pyspark

# torch first, from the CUDA index, so that `pip install .` finds it satisfied and keeps it.
RUN python3.11 -m venv /opt/venv \
 && pip install --upgrade pip \
 && pip install --index-url "$TORCH_INDEX_URL" $TORCH_PACKAGES

WORKDIR /opt/vig-spark
COPY pyproject.toml README.md ./
COPY vig_udf ./vig_udf
COPY conf ./conf
RUN pip install . \
 && python -c "import torch, torchvision, transformers, pyspark, vig_udf; print('torch', torch.__version__, 'cuda', torch.version.cuda)" \
 && chmod 0755 conf/getGpusResources.sh

# Spark's usual unprivileged user (uid 185); model caches go to a writable home.
RUN useradd --uid 185 --create-home --home-dir /home/spark spark
ENV HF_HOME=/home/spark/.cache/huggingface
USER 185
# Delta Lake's Spark jars and hadoop-aws, resolved once into the image's Ivy cache (~/.ivy2.5.2) and recorded
# with a class-data archive in ~/.cache/vig-spark (vig_udf/spark/startup.py);
# under spark-submit pass them as --packages "$(python -m vig_udf.spark.session --s3a)".
RUN SPARK_LOCAL_IP=127.0.0.1 python -m vig_udf.spark.session --fetch

ENTRYPOINT ["/usr/bin/tini", "--"]
CMD ["python"]
