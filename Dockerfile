# Operator image: `raylight operator` (kopf) and nothing else: no torch, no ray.
# Build from the repository root:  docker build -t raylight-operator .
ARG BASE=python:3.11.11-slim-bookworm
FROM ${BASE} AS build
# A package mirror, or a local wheelhouse for builds without a network (PIP_NO_INDEX=1).
ARG PIP_INDEX_URL
ARG PIP_FIND_LINKS
ARG PIP_NO_INDEX
WORKDIR /src
COPY pyproject.toml README.md ./
COPY operator ./operator
COPY trainer_image/raylight_trainer ./trainer_image/raylight_trainer
# Base dependencies only: the trainer extra (torch, ray, lightning, mlflow) stays out.
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM ${BASE}
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir --no-index --find-links /wheels raylight && rm -rf /wheels
# Non-root, numeric (Pod Security "restricted" checks runAsNonRoot against a number), and named:
# kopf's peering identity asks getpass.getuser(), which fails for a uid without a passwd entry.
RUN useradd --system --uid 65532 --user-group --no-create-home --shell /usr/sbin/nologin raylight
USER 65532:65532
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
EXPOSE 8080 8081
ENTRYPOINT ["raylight"]
CMD ["operator"]
