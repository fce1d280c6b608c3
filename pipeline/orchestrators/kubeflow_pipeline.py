"""The step graph as a Kubeflow Pipelines v2 pipeline (`python -m pipeline dag kubeflow`).

One lightweight Python component per step, named after it, in the image `--image` names (this
project installed in it: the Dockerfile at the repository's root). Each task runs the step's
command on the artifacts root, a PersistentVolumeClaim mounted at the same path in every task
(kfp-kubernetes), with the run's key from the job's id. KFP's own cache is off: the pipeline's
fingerprints decide what executes, and a cached step finishes in about a second anyway.
"""
# No `from __future__ import annotations`: KFP reads the component's annotations as types.
import json
from pathlib import Path

from pipeline.orchestrators import dependencies

NAME = "mnist-pipeline"


def step_task(step: str, artifacts: str, run_key: str, config: str):
    """Runs in the image: the step's command (lightweight components carry only this source)."""
    from pipeline.orchestrators import run_task

    run_task(step, artifacts, run_key, config)


def build_pipeline(*, image: str, artifacts: str, pvc: str, config: dict, retries: int):
    from kfp import dsl, kubernetes

    components = {}
    for step in dependencies():
        component = dsl.component(step_task, base_image=image, install_kfp_package=False)  # kfp is in the image
        component.component_spec.name = step  # the task's name in the compiled pipeline and the UI
        components[step] = component

    @dsl.pipeline(name=NAME, description="MNIST: ingest, preprocess, validate, train, evaluate, export (push)")
    def mnist_pipeline(config: str = json.dumps(config)):
        tasks = {}
        for step, upstream in dependencies().items():
            task = components[step](step=step, artifacts=artifacts, run_key=dsl.PIPELINE_JOB_ID_PLACEHOLDER,
                                    config=config)
            task.after(*(tasks[up] for up in upstream))
            task.set_caching_options(False)
            task.set_retry(num_retries=retries, backoff_duration="60s")
            kubernetes.mount_pvc(task, pvc_name=pvc, mount_path=artifacts)
            tasks[step] = task

    return mnist_pipeline


def compile_pipeline(path: Path, **settings) -> Path:
    """Writes the compiled pipeline (KFP's IR YAML) to `path`, through a temporary file."""
    from kfp import compiler

    from pipeline.store import write_atomic

    scratch = Path(path).with_name(f".{Path(path).name}.compiling.yaml")
    try:
        compiler.Compiler().compile(build_pipeline(**settings), str(scratch))
        write_atomic(path, scratch.read_bytes())
    finally:
        scratch.unlink(missing_ok=True)
    return Path(path)
