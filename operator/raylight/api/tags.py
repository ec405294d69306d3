"""MLflow tag names: the trainer writes them, the operator reads progress back by them."""

TAG_KIND = "raylight.kind"
TAG_NAME = "raylight.name"
TAG_NAMESPACE = "raylight.namespace"
TAG_TRIAL_ID = "raylight.trial_id"
TAG_STATE = "raylight.state"
TAG_STOPPED_EARLY = "raylight.stopped_early"
TAG_BEST_TRIAL_ID = "raylight.best_trial_id"
# The resource's metadata.uid on a cluster: the operator finds exactly this resource's runs by it
# (a deleted and re-created resource of the same name gets new runs).
TAG_UID = "raylight.uid"
# MLflow's own tag for a child run's parent.
TAG_PARENT_RUN_ID = "mlflow.parentRunId"
# A sweep's parent run: its SweepProgress as JSON, updated as trials report and end.
TAG_PROGRESS = "raylight.progress"
# A failed run (a TrainingJob's, or a sweep whose every trial failed): the root cause, one line.
TAG_ERROR = "raylight.error"
# A run whose last attempt a signal stopped before it ended (SIGINT, SIGTERM: on a cluster, its
# Ray pods were stopped): the signal's name; removed when the run resumes.
TAG_INTERRUPTED = "raylight.interrupted"
# The best model's MLflow URI (models:/NAME/VERSION when registered), on a TrainingJob's run or a
# sweep's parent run once logged: the operator copies it into status.mlflow.modelUri.
TAG_MODEL_URI = "raylight.model_uri"
# How the model was logged: "pt2" (a torch.export graph, with its weights and card beside it), or
# why only the weights and card were (a network torch.export could not export).
TAG_MODEL_FORMAT = "raylight.model_format"
# The files a logged model carries beside its graph, that a run fine-tuning from it
# (spec.model.pretrained: models:/NAME/VERSION) reads: its weights, and its card (architecture,
# config, input normalisation, classes).
MODEL_WEIGHTS_FILE = "raylight-weights.safetensors"
MODEL_CARD_FILE = "raylight-model.json"
# Console output kept as artifacts of the run it belongs to, so that it outlives the Ray cluster:
# the driver's on a sweep's parent run (or a TrainingJob's run), each training worker's on its
# trial's run (or the TrainingJob's). `raylight logs` reads them back.
LOG_ARTIFACT_DIR = "logs"
DRIVER_LOG = "driver.log"


def worker_log(rank: int) -> str:
    return f"worker-{rank}.log"
