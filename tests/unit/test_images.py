"""No Docker engine here: the Dockerfiles are parsed and what they copy, install and run is checked
against the project (paths exist, extras exist, the entrypoints are real commands)."""

from __future__ import annotations

import importlib.util
import json
import re
import shlex
from pathlib import Path

import pytest
import yaml

from raylight.cli import build_parser
from raylight.operator.builder import DEFAULT_TRAINER_IMAGE, RAY_VERSION, RAYLIGHT_VERSION, build_rayjob

tomllib = pytest.importorskip("tomllib")  # Python 3.11+
REPO = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
IMAGES = {"operator": REPO / "Dockerfile", "trainer": REPO / "trainer_image" / "Dockerfile"}


def instructions(path: Path) -> list[tuple[str, str]]:
    """(instruction, argument) pairs, with ${ARG} in FROM lines replaced by the ARG's default."""
    text = re.sub(r"\\\n", " ", path.read_text())
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith("#")]
    pairs = [(line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in lines]
    defaults = dict(arg.split("=", 1) for op, arg in pairs if op == "ARG" and "=" in arg)
    return [(op, re.sub(r"\$\{(\w+)\}", lambda m: defaults[m[1]], arg) if op == "FROM" else arg)
            for op, arg in pairs]


def exec_form(argument: str) -> list[str]:
    return list(json.loads(argument)) if argument.startswith("[") else shlex.split(argument)


@pytest.mark.parametrize("image", IMAGES)
def test_base_images_are_pinned(image: str) -> None:
    for base in (arg.split()[0] for op, arg in instructions(IMAGES[image]) if op == "FROM"):
        tag = base.partition(":")[2]
        assert tag and tag != "latest" and re.search(r"\d", tag), f"{image}: {base} is not pinned to a version"


@pytest.mark.parametrize("image", IMAGES)
def test_runs_as_a_non_root_user(image: str) -> None:
    users = [arg for op, arg in instructions(IMAGES[image]) if op == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0"), f"{image} runs as root"


@pytest.mark.parametrize("image", IMAGES)
def test_copied_paths_exist(image: str) -> None:
    for op, arg in instructions(IMAGES[image]):
        if op != "COPY" or "--from=" in arg:
            continue
        sources = [a for a in shlex.split(arg) if not a.startswith("--")][:-1]
        for source in sources:
            assert (REPO / source).exists(), f"{image}: COPY {source} does not exist (build context: the repo root)"


@pytest.mark.parametrize("image", IMAGES)
def test_installed_extras_exist(image: str) -> None:
    extras = set(PYPROJECT["project"]["optional-dependencies"])
    for op, arg in instructions(IMAGES[image]):
        if op == "RUN" and "pip" in arg:
            for wanted in re.findall(r"\.\[([a-z,]+)\]", arg):
                assert set(wanted.split(",")) <= extras, f"{image}: extras {wanted} not in pyproject"


def test_operator_image_runs_the_operator_command_without_the_trainer() -> None:
    ops = instructions(IMAGES["operator"])
    entrypoint = exec_form(next(arg for op, arg in ops if op == "ENTRYPOINT"))
    command = exec_form(next(arg for op, arg in ops if op == "CMD"))
    assert entrypoint == ["raylight"] and "raylight" in PYPROJECT["project"]["scripts"]
    assert build_parser().parse_args(command).command == "operator"
    assert not any("[trainer]" in arg or "torch" in arg for op, arg in ops if op == "RUN")


def test_trainer_image_provides_what_rayjobs_run() -> None:
    ops = instructions(IMAGES["trainer"])
    base = next(arg for op, arg in ops if op == "FROM")
    assert f"rayproject/ray:{RAY_VERSION}-" in base, "the image's Ray must be the rayVersion RayJobs declare"
    assert f"ray[default,tune,train]=={RAY_VERSION}" in str(PYPROJECT["project"]["optional-dependencies"]["trainer"])
    from tests.unit.test_builder import SETTINGS, example

    entrypoint = shlex.split(build_rayjob(example("cluster-quickstart.yaml"), SETTINGS)["spec"]["entrypoint"])
    assert entrypoint[:3] == ["python", "-m", "raylight_trainer"]
    assert importlib.util.find_spec("raylight_trainer.__main__") is not None
    assert exec_form(next(arg for op, arg in ops if op == "ENTRYPOINT")) == entrypoint[:3]


def test_the_trainer_image_is_tagged_with_raylights_version_and_labelled_with_rays() -> None:
    """An upgrade of Raylight is a new trainer tag (nodes with IfNotPresent pull it): the operator's
    default image, the chart's default and appVersion, the package and the image's labels agree."""
    chart = yaml.safe_load((REPO / "charts" / "raylight" / "Chart.yaml").read_text())
    assert RAYLIGHT_VERSION == PYPROJECT["project"]["version"] == chart["appVersion"]
    assert DEFAULT_TRAINER_IMAGE.endswith(f"/raylight-trainer:{RAYLIGHT_VERSION}")
    deployment = (REPO / "charts" / "raylight" / "templates" / "deployment.yaml").read_text()
    assert 'printf "ghcr.io/raylight-dev/raylight-trainer:%s" .Chart.AppVersion' in deployment
    assert f"ghcr.io/raylight-dev/raylight-trainer:{chart['appVersion']}" == DEFAULT_TRAINER_IMAGE
    labels = dict(shlex.split(pair)[0].split("=", 1) for op, arg in instructions(IMAGES["trainer"]) if op == "LABEL"
                  for pair in shlex.split(arg, posix=False))
    assert labels == {"org.opencontainers.image.version": RAYLIGHT_VERSION, "dev.raylight.ray-version": RAY_VERSION}
