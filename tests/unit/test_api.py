"""Spec validation: every error names the field and says what to do."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from raylight.api import ManifestError, TuneSweep, load_manifests, parse_resource
from raylight.cli import main
from tests.examples import ELSEWHERE, EXAMPLES, MANIFESTS


def sweep(**spec: object) -> dict:
    base: dict = {
        "apiVersion": "raylight.dev/v1alpha1",
        "kind": "TuneSweep",
        "metadata": {"name": "s"},
        "spec": {"trial": {"model": {"preset": "vit-nano"}}, "numSamples": 4},
    }
    base["spec"].update(spec)
    return base


def errors_of(doc: dict) -> list[tuple[str, str]]:
    with pytest.raises(ManifestError) as info:
        parse_resource(doc)
    return [(e.path, e.message) for e in info.value.errors]


def test_examples_validate() -> None:
    assert ELSEWHERE, "examples/finetune/ holds no manifest"
    for file in MANIFESTS + ELSEWHERE:
        assert load_manifests(file), file


def test_defaults_fill_a_minimal_sweep() -> None:
    resource = parse_resource(sweep())
    assert isinstance(resource, TuneSweep)
    assert resource.spec.scheduler.asha is not None
    assert resource.spec.max_t() == resource.spec.trial.training.max_epochs
    assert resource.spec.trial.model.resolved()["dim"] == 64


def test_unknown_search_path_names_the_field_and_suggests() -> None:
    errors = errors_of(sweep(searchSpace={"training.learningrate": {"uniform": [0.1, 0.2]}}))
    assert errors[0][0] == "spec.searchSpace.training.learningrate"
    assert "training.learningRate" in errors[0][1]


def test_search_path_must_be_a_leaf() -> None:
    errors = errors_of(sweep(searchSpace={"training": {"choice": [1]}}))
    assert errors[0][0] == "spec.searchSpace.training"


@pytest.mark.parametrize(
    ("dist", "needle"),
    [
        ({"uniform": [2.0, 1.0]}, "low < high"),
        ({"loguniform": [0.0, 1.0]}, "> 0"),
        ({"uniform": [0.1, 0.2], "choice": [1]}, "exactly one"),
        ({}, "exactly one"),
    ],
)
def test_bad_distribution_bounds(dist: dict, needle: str) -> None:
    errors = errors_of(sweep(searchSpace={"training.learningRate": dist}))
    assert errors[0][0] == "spec.searchSpace.training.learningRate"
    assert needle in errors[0][1]


def test_search_values_outside_field_bounds() -> None:
    errors = errors_of(sweep(searchSpace={"training.learningRate": {"loguniform": [1e-3, 50.0]}}))
    assert errors[0][0] == "spec.searchSpace.training.learningRate"
    assert "50.0" in errors[0][1] and "less than or equal to 10" in errors[0][1]


def test_search_combination_that_breaks_the_model() -> None:
    errors = errors_of(sweep(searchSpace={"model.dim": {"choice": [64, 72]}, "model.heads": {"choice": [4, 16]}}))
    assert errors[0][0] == "spec.searchSpace"
    assert "not a multiple of heads" in errors[0][1]


def test_objective_metric_the_trainer_never_reports() -> None:
    errors = errors_of(sweep(objective={"metric": "val_f2", "mode": "max"}))
    assert errors[0][0] == "spec.objective.metric"
    assert "val_acc" in errors[0][1]


def test_objective_direction_must_match_metric() -> None:
    errors = errors_of(sweep(objective={"metric": "val_loss", "mode": "max"}))
    assert errors[0][0] == "spec.objective"
    assert "set mode to min" in errors[0][1]


def test_fractional_gpus_with_several_workers() -> None:
    doc = sweep()
    doc["spec"]["trial"]["resources"] = {"workers": 2, "gpusPerWorker": 0.5}
    errors = errors_of(doc)
    assert errors[0][0] == "spec.trial.resources"
    assert "gpusPerWorker 0.5" in errors[0][1] and "workers to 1" in errors[0][1]


def test_fractional_gpu_for_one_worker_is_fine() -> None:
    doc = sweep()
    doc["spec"]["trial"]["resources"] = {"workers": 1, "gpusPerWorker": 0.25}
    assert parse_resource(doc)


def test_every_error_is_reported_at_once() -> None:
    doc = sweep(numSamples=0, maxConcurrentTrials=0)
    doc["spec"]["trial"]["training"] = {"learningRate": -1, "batchSise": 3}
    paths = {path for path, _ in errors_of(doc)}
    assert {"spec.numSamples", "spec.maxConcurrentTrials", "spec.trial.training.learningRate",
            "spec.trial.training.batchSise"} <= paths


def test_concurrency_above_samples() -> None:
    errors = errors_of(sweep(numSamples=2, maxConcurrentTrials=3))
    assert errors[0][0] == "spec" and "maxConcurrentTrials 3" in errors[0][1]


def test_dataset_that_reads_files_needs_a_path() -> None:
    doc = sweep()
    doc["spec"]["trial"]["data"] = {"dataset": "cifar10"}
    errors = errors_of(doc)
    assert errors[0][0] == "spec.trial.data" and "data.path" in errors[0][1]


def test_bad_name_and_kind() -> None:
    doc = sweep()
    doc["metadata"]["name"] = "Bad_Name"
    assert errors_of(doc)[0][0] == "metadata.name"
    doc["kind"] = "Sweep"
    assert errors_of(doc)[0][0] == "kind"


def test_validate_command_prints_every_error_with_its_path(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    bad = sweep(searchSpace={"model.depht": {"choice": [2]}})
    bad["spec"]["trial"]["training"] = {"maxEpochs": 0}
    file = tmp_path / "bad.yaml"
    file.write_text(yaml.safe_dump(bad))
    assert main(["validate", str(file)]) == 1
    printed = capsys.readouterr()
    assert "spec.trial.training.maxEpochs" in printed.err and "spec.searchSpace" in printed.err
    assert printed.out == "", "errors go to stderr"
    assert main(["validate", str(EXAMPLES / "quickstart.yaml")]) == 0


def test_validate_skips_other_kinds_and_every_example_passes(capsys: pytest.CaptureFixture) -> None:
    files = sorted(str(p) for p in EXAMPLES.rglob("*.yaml") if "gitops" not in p.parts)
    assert any(f.endswith("kustomization.yaml") for f in files) and any("storage" in f for f in files)
    assert main(["validate", *files]) == 0
    out = capsys.readouterr().out
    assert "PersistentVolumeClaim raylight-results (v1) is not a Raylight resource" in out
    assert "Kustomization" in out and "ok " in out


def test_a_file_with_no_resource_at_all_is_an_error_for_run(tmp_path: Path) -> None:
    file = tmp_path / "pvc.yaml"
    file.write_text(yaml.safe_dump({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s"}}))
    with pytest.raises(ManifestError, match="holds no TrainingJob or TuneSweep"):
        load_manifests(file)
    assert main(["run", str(file)]) == 1


def test_yaml_errors_name_the_file_line_and_column(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    file = tmp_path / "broken.yaml"
    file.write_text("apiVersion: raylight.dev/v1alpha1\nkind: TuneSweep\nspec:\n  numSamples: [4\n")
    assert main(["validate", str(file)]) == 1
    err = capsys.readouterr().err
    assert f"{file}:5:1: not valid YAML" in err, err


def test_a_field_of_the_other_kind_says_where_it_belongs() -> None:
    job = {"apiVersion": "raylight.dev/v1alpha1", "kind": "TrainingJob", "metadata": {"name": "j"},
           "spec": {"numSamples": 4}}
    [(path, message)] = errors_of(job)
    assert path == "spec.numSamples" and "a TuneSweep field" in message
    doc = sweep()
    doc["spec"]["model"] = {"preset": "vit-nano"}
    [(path, message)] = errors_of(doc)
    assert path == "spec.model" and "spec.trial.model" in message


def test_a_typo_does_not_hide_a_cross_field_error() -> None:
    doc = sweep(numSamples=2, maxConcurrentTrials=3, serchAlg="random")
    errors = errors_of(doc)
    assert ("spec.serchAlg" in {p for p, _ in errors}) and any(
        p == "spec" and "maxConcurrentTrials 3" in m for p, m in errors), errors


def test_run_refuses_an_invalid_manifest_before_starting_anything(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    file = tmp_path / "bad.yaml"
    file.write_text(yaml.safe_dump(sweep(numSamples=-1)))
    assert main(["run", str(file)]) == 1
    assert not (tmp_path / "raylight_results").exists()
    assert main(["run", str(file), "--output", "json"]) == 1
    printed = json.loads(capsys.readouterr().out)
    assert printed["succeeded"] is False and "spec.numSamples" in printed["errors"][0]


def test_version(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["--version"])
    assert exited.value.code == 0 and capsys.readouterr().out.startswith("raylight ")


def test_val_f1_and_auroc_are_maximised() -> None:
    assert isinstance(parse_resource(sweep(objective={"metric": "val_f1", "mode": "max"})), TuneSweep)
    assert isinstance(parse_resource(sweep(objective={"metric": "val_auroc", "mode": "max"})), TuneSweep)
    errors = errors_of(sweep(objective={"metric": "val_auroc", "mode": "min"}))
    assert errors[0][0] == "spec.objective" and "set mode to max" in errors[0][1]


@pytest.mark.parametrize(("model", "needle"), [
    ({"architecture": "efficientnet", "preset": "vit-nano"}, "use one of efficientnet-b0, efficientnet-cifar"),
    ({"architecture": "efficientnet", "depth": 3}, "depth does not apply to architecture efficientnet"),
    ({"architecture": "efficientnet", "fusedMlp": True}, "fusedMlp does not apply"),
    ({"preset": "vit-nano", "widthMultiplier": 2.0}, "widthMultiplier does not apply to architecture vit"),
])
def test_fields_of_the_other_architecture_are_errors(model: dict, needle: str) -> None:
    errors = errors_of(sweep(trial={"model": model}))
    assert errors[0][0] == "spec.trial.model"
    assert needle in errors[0][1]


def test_efficientnet_is_searchable_by_its_own_fields() -> None:
    doc = sweep(trial={"model": {"architecture": "efficientnet"}},
                searchSpace={"model.widthMultiplier": {"choice": [0.25, 0.5]}})
    assert isinstance(parse_resource(doc), TuneSweep)
    errors = errors_of(sweep(trial={"model": {"architecture": "efficientnet"}},
                             searchSpace={"model.depth": {"choice": [2, 3]}}))
    assert errors[0][0] == "spec.searchSpace.model.depth"
    assert "does not apply to architecture efficientnet" in errors[0][1]


def test_early_stopping_is_not_for_asha_sweeps() -> None:
    doc = sweep(trial={"callbacks": {"earlyStopping": {"patience": 2}}})
    errors = errors_of(doc)
    assert errors[0][0] == "spec"
    assert "trial.callbacks.earlyStopping" in errors[0][1] and "scheduler fifo" in errors[0][1]
    assert isinstance(parse_resource(sweep(trial={"callbacks": {"earlyStopping": {"patience": 2}}},
                                           scheduler={"fifo": {}})), TuneSweep)


def test_an_asha_grace_period_past_max_t_is_refused_naming_it() -> None:
    """ASHA could never stop a trial: the error names the field, and the maxT it was held to."""
    late = errors_of(sweep(trial={"model": {"preset": "vit-nano"}, "training": {"maxEpochs": 20}},
                           scheduler={"asha": {"gracePeriod": 50}}))
    assert late[0][0] == "spec.scheduler.asha.gracePeriod"
    assert late[0][1].startswith("50 exceeds maxT 20: ") and "lower gracePeriod or raise maxT" in late[0][1]
    assert errors_of(sweep(scheduler={"asha": {"gracePeriod": 5, "maxT": 4}}))[0][1].startswith("5 exceeds maxT 4")
    assert errors_of(sweep(scheduler={"asha": {"gracePeriod": 11}}))[0][1].startswith("11 exceeds maxT 10")  # default
    for fine in ({"gracePeriod": 1}, {"gracePeriod": 4, "maxT": 4}):  # equal: allowed, as ASHA allows it
        assert isinstance(parse_resource(sweep(scheduler={"asha": fine})), TuneSweep)


def test_wandb_needs_a_project() -> None:
    doc = sweep(tracking={"wandb": {"mode": "offline"}})
    errors = errors_of(doc)
    assert errors[0][0] == "spec.tracking.wandb.project"


def test_run_exits_non_zero_for_failed_trials_unless_they_are_allowed() -> None:
    """The verdict on the summaries `raylight run` prints (tests/e2e/test_sweep makes a real one)."""
    import io

    from rich.console import Console

    from raylight_trainer.console.summary import run_exit_code

    sweep = {"kind": "TuneSweep", "succeeded": True, "trials": {"total": 4, "failed": 1}}
    said = io.StringIO()
    assert run_exit_code([sweep], False, Console(file=said, width=200)) == 1
    assert "1 trial(s) failed: exit 1 (--allow-failed-trials accepts" in said.getvalue()
    assert run_exit_code([sweep], True, Console(file=io.StringIO())) == 0
    all_failed = {**sweep, "succeeded": False, "trials": {"total": 4, "failed": 4}}
    assert run_exit_code([all_failed], True, Console(file=io.StringIO())) == 1  # a failed run is never allowed
    job = {"kind": "TrainingJob", "succeeded": True}
    assert run_exit_code([job, sweep], True, Console(file=io.StringIO())) == 0


def job_with(**sections: object) -> dict:
    return {"apiVersion": "raylight.dev/v1alpha1", "kind": "TrainingJob", "metadata": {"name": "ft"},
            "spec": {"training": {"maxEpochs": 3}, **sections}}


FINE_TUNING_MISTAKES = [
    ({"model": {"pretrained": "ftp://host/w.pth"}}, "spec.model.pretrained", "is not a form Raylight reads"),
    ({"model": {"pretrained": "models:/vit-digits"}}, "spec.model.pretrained", "models:/NAME/VERSION"),
    ({"model": {"architecture": "timm", "name": "resnet18", "preset": "vit-nano"}}, "spec.model",
     "preset does not apply to architecture timm"),
    ({"model": {"architecture": "timm", "name": "resnet18", "depth": 4}}, "spec.model", "depth"),
    ({"model": {"name": "resnet18"}}, "spec.model.name", "set architecture to timm"),
    ({"model": {"architecture": "timm"}}, "spec.model.name", "needs the model's name"),
    ({"model": {"architecture": "timm", "pretrained": "timm:ResNet 18"}}, "spec.model.pretrained", ""),
    ({"training": {"maxEpochs": 3, "freezeEpochs": 3}}, "spec.training.freezeEpochs", "smaller than maxEpochs"),
    ({"training": {"layerDecay": 1.5}}, "spec.training.layerDecay", "less than or equal to 1"),
    ({"training": {"layerDecay": 0}}, "spec.training.layerDecay", "greater than 0"),
]


@pytest.mark.parametrize(("sections", "path", "says"), FINE_TUNING_MISTAKES)
def test_fine_tuning_mistakes_name_the_field(sections: dict, path: str, says: str) -> None:
    errors = errors_of(job_with(**sections))
    assert errors[0][0] == path, errors
    assert says in errors[0][1], errors


@pytest.mark.parametrize("source", ["/weights/vit.safetensors", "weights/vit.pth", "s3://models/vit.safetensors",
                                    "gs://models/a/b.bin", "models:/vit-digits/3", "models:/vit-digits/latest",
                                    "models:/vit-digits@champion", "models:/m-0123456789abcdef",
                                    "runs:/0123abcd/model", "timm:vit_small_patch16_224.augreg_in21k"])
def test_every_form_of_pretrained_is_taken(source: str) -> None:
    model = {"pretrained": source} if not source.startswith("timm:") else {"architecture": "timm", "pretrained": source}
    assert parse_resource(job_with(model=model)).spec.model.pretrained == source
