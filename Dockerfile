# The one image every node of cluster.yaml runs, head included: Ray, Python, torch and this
# project are then the same version everywhere (a worker node refuses to join a head whose Ray
# or Python version differs, down to the Python patch level).
# The head is a CPU instance; torch's CUDA wheels run there without a GPU.
#
# Build and push it before `ray up`; the name must equal `docker.image` in cluster.yaml
# (tests/test_cluster_yaml.py checks both, and that the tag is pyproject's version):
#   docker build -t registry.example.com/unic-orchestrator:0.1.0 .
#   docker push registry.example.com/unic-orchestrator:0.1.0
# registry.example.com is a placeholder: use a registry every node can pull from.
#
# The base's Ray version must equal pyproject's pin and the Ray that runs `ray up` on your machine.
FROM rayproject/ray:2.60.0-py311-gpu

LABEL org.opencontainers.image.title="unic-orchestrator" \
      org.opencontainers.image.version="0.1.0"

# Where cluster.yaml's file_mounts syncs the checkout: the editable install below then runs the
# synced code on the cluster, and this image's copy anywhere else.
WORKDIR /home/ray/project

# Dependencies first, read from pyproject alone, so a code change does not reinstall torch.
# No GPU faiss: kNN on GPU runs on torch (deepclust/knn_stream.py); faiss-gpu wheels bring a
# second CUDA runtime (12) beside torch's (13). boto3: the autoscaler on the head needs it
# for AWS. setuptools + wheel: build the editable install below with no network access.
COPY --chown=ray:users pyproject.toml README.md ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" > /tmp/requirements.txt \
    && pip install --no-cache-dir -r /tmp/requirements.txt boto3 "setuptools>=68" wheel \
    && rm /tmp/requirements.txt

# The packages pyproject's [tool.setuptools.packages.find] includes (the test keeps them equal).
COPY --chown=ray:users deepclust ./deepclust
COPY --chown=ray:users orchestrator ./orchestrator
COPY --chown=ray:users trainables ./trainables
COPY --chown=ray:users search_spaces ./search_spaces
RUN pip install --no-cache-dir --no-deps --no-build-isolation -e . \
    && python -c "import ray, torch, faiss, orchestrator.sweep; assert ray.__version__ == '2.60.0', ray.__version__"
