"""Record what llama.cpp's server sends on the wire, for tests that replay it.

    python -m e2e.record_transcripts [--out e2e/transcripts]

Starts the local ``llama-server`` (``e2e.local_model``) and sends each request straight to it, without the
gateway. For every case it writes ``<case>.request.json`` (the request, and the answer's status and content
type) and ``<case>.sse`` or ``<case>.json`` (the answer's body, byte for byte). Generation is greedy with a
fixed seed, so a rerun with the same build and model gives the same text; ids and timings differ.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import httpx

from e2e import conversations
from e2e.local_model import MODEL_ALIAS, LlamaServer

OUT = Path(__file__).resolve().parent / "transcripts"
CONTEXT_TOKENS = 2048

CALCULATE: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": "calculate",
        "description": "Evaluate an arithmetic expression and return the exact numeric result.",
        "parameters": {
            "type": "object",
            "properties": {"expression": {"type": "string", "description": 'e.g. "sqrt(2) * (3 + 4) ** 2"'}},
            "required": ["expression"],
        },
    },
}
GREEDY = {"temperature": 0, "seed": 7}


def cases() -> dict[str, dict[str, Any]]:
    question = "1234 + 4321"
    long_prompt = " ".join(f"word{i % 100}" for i in range(CONTEXT_TOKENS + 200))
    stream = {"stream": True, "stream_options": {"include_usage": True}}
    return {
        "plain.sse": {"messages": [{"role": "user", "content": "Say hello."}], "max_tokens": 16, **stream},
        "tool_call_required.sse": {
            "messages": conversations.calculation(question),
            "tools": [CALCULATE],
            "tool_choice": "required",
            "max_tokens": 64,
            **stream,
        },
        "tool_call_required.json": {
            "messages": conversations.calculation(question),
            "tools": [CALCULATE],
            "tool_choice": "required",
            "max_tokens": 64,
        },
        "tool_call_auto.sse": {
            "messages": conversations.order("B42"),
            "tools": [conversations.LOOKUP_ORDER],
            "max_tokens": 64,
            **stream,
        },
        "parallel_tool_calls.sse": {
            "messages": conversations.mixed("6 * 7", "C3"),
            "tools": [CALCULATE, conversations.LOOKUP_ORDER],
            "parallel_tool_calls": True,
            "max_tokens": 96,
            **stream,
        },
        "truncated_tool_call.sse": {
            "messages": conversations.calculation(question),
            "tools": [CALCULATE],
            "tool_choice": "required",
            "max_tokens": 12,
            **stream,
        },
        "truncated_tool_call.json": {
            "messages": conversations.calculation(question),
            "tools": [CALCULATE],
            "tool_choice": "required",
            "max_tokens": 12,
        },
        "tool_result_follow_up.sse": {
            "messages": [
                *conversations.calculation(question),
                {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [
                        {
                            "id": "abcDEF123",
                            "type": "function",
                            "function": {"name": "calculate", "arguments": '{"expression": "1234 + 4321"}'},
                        }
                    ],
                },
                {"role": "tool", "tool_call_id": "abcDEF123", "content": "5555"},
            ],
            "tools": [CALCULATE],
            "max_tokens": 32,
            **stream,
        },
        "context_overflow.sse": {"messages": [{"role": "user", "content": long_prompt}], "max_tokens": 8, **stream},
        "invalid_history_arguments.json": {
            "messages": [
                {"role": "user", "content": "What is 2 + 2?"},
                {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [
                        {
                            "id": "abcDEF123",
                            "type": "function",
                            "function": {"name": "calculate", "arguments": '{"expression":'},
                        }
                    ],
                },
                {"role": "tool", "tool_call_id": "abcDEF123", "content": "4"},
            ],
            "tools": [CALCULATE],
            "max_tokens": 8,
        },
    }


def record(base_url: str, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    with httpx.Client(base_url=base_url, timeout=120) as http:
        for name, body in cases().items():
            request = {"model": MODEL_ALIAS, **GREEDY, **body}
            with http.stream("POST", "/chat/completions", json=request) as response:
                raw = response.read()
            (out / name).write_bytes(raw)
            meta = {
                "request": request,
                "status": response.status_code,
                "content_type": response.headers.get("content-type"),
            }
            (out / f"{name.rsplit('.', 1)[0]}.request.json").write_text(json.dumps(meta, indent=2) + "\n")
            print(f"{name}: {response.status_code}, {len(raw)} bytes")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    server = LlamaServer(ctx_size=CONTEXT_TOKENS, parallel=1).start()
    try:
        record(server.base_url, args.out)
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
