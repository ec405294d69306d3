# Operator image: `raylight operator` (kopf) and nothing else: no torch, no ray.
# Build from the repository root:  docker build -t raylight-operator .
FROM python:3.11.11-slim-bookworm AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY operator ./operator
COPY trainer_image/raylight_trainer ./trainer_image/raylight_trainer
# Base dependencies only: the trainer extra (torch, ray, lightning, mlflow) stays out.
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:3.11.11-slim-bookworm
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir --no-index --find-links /wheels raylight && rm -rf /wheels
# Non-root, numeric (Pod Security "restricted" checks runAsNonRoot against a number).
USER 65532:65532
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
EXPOSE 8080 8081
ENTRYPOINT ["raylight"]
CMD ["operator"]
