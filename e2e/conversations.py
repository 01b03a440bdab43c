"""Few-shot histories that make a 135M-parameter model call tools the way the suite needs.

A model that small rarely decides to call a tool from a question alone, but it copies the pattern of a short
worked example well. Each history shows one exchange in full (question, call, result, answer) before the real
question. The few-shot call ids are 9 alphanumerics, the one form every server accepts back.
"""

from __future__ import annotations

import json
from typing import Any

SYSTEM = "You are a helpful assistant. Use a tool whenever one fits the question."

LOOKUP_ORDER: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": "lookup_order",
        "description": "Look up where a customer's order is.",
        "parameters": {
            "type": "object",
            "properties": {"order_id": {"type": "string", "description": "The order number, e.g. A17."}},
            "required": ["order_id"],
        },
    },
}


def _call(call_id: str, name: str, arguments: dict[str, Any]) -> dict[str, Any]:
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": json.dumps(arguments)}}


def _example(question: str, calls: list[dict[str, Any]], results: list[str], answer: str) -> list[dict[str, Any]]:
    return [
        {"role": "user", "content": question},
        {"role": "assistant", "content": None, "tool_calls": calls},
        *({"role": "tool", "tool_call_id": c["id"], "content": r} for c, r in zip(calls, results, strict=True)),
        {"role": "assistant", "content": answer},
    ]


def calculation(expression: str) -> list[dict[str, Any]]:
    """A request for the gateway's own ``calculate`` tool: "Calculate <expression>."

    Asked "What is 101 + 101?", the model answers from memory, often wrongly; after three worked examples of
    "Calculate ..." it calls the tool every time.
    """
    shots = [("12 * 7", "84"), ("3 + 5", "8"), ("100 - 9", "91")]
    return [
        {"role": "system", "content": SYSTEM},
        *(
            message
            for i, (shot, result) in enumerate(shots, start=1)
            for message in _example(
                f"Calculate {shot}.",
                [_call(f"fewshot0{i}", "calculate", {"expression": shot})],
                [result],
                f"The answer is {result}.",
            )
        ),
        {"role": "user", "content": f"Calculate {expression}."},
    ]


def order(order_id: str) -> list[dict[str, Any]]:
    """A question for the client's ``lookup_order`` tool: "Where is order <order_id>?"."""
    shots = [("A17", "shipped"), ("D9", "arrived")]
    return [
        {"role": "system", "content": SYSTEM},
        *(
            message
            for i, (shot, status) in enumerate(shots, start=4)
            for message in _example(
                f"Where is order {shot}?",
                [_call(f"fewshot0{i}", "lookup_order", {"order_id": shot})],
                [json.dumps({"status": status})],
                f"Order {shot} has {status}.",
            )
        ),
        {"role": "user", "content": f"Where is order {order_id}?"},
    ]


def mixed(expression: str, order_id: str) -> list[dict[str, Any]]:
    """Both at once, so the model calls a server tool and a client tool in the same assistant message."""
    shots = [("12 * 7", "84", "A17", "shipped"), ("3 + 5", "8", "D9", "arrived")]
    return [
        {"role": "system", "content": SYSTEM},
        *(
            message
            for i, (shot, result, shot_order, status) in enumerate(shots)
            for message in _example(
                f"What is {shot}, and where is order {shot_order}?",
                [
                    _call(f"fewshot{6 + 2 * i:02d}", "calculate", {"expression": shot}),
                    _call(f"fewshot{7 + 2 * i:02d}", "lookup_order", {"order_id": shot_order}),
                ],
                [result, json.dumps({"status": status})],
                f"{shot} = {result}, and order {shot_order} has {status}.",
            )
        ),
        {"role": "user", "content": f"What is {expression}, and where is order {order_id}?"},
    ]


def as_response_items(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A chat history as Responses API input items: calls and results become ``function_call`` items and outputs."""
    items: list[dict[str, Any]] = []
    for message in messages:
        if message["role"] == "tool":
            items.append(
                {"type": "function_call_output", "call_id": message["tool_call_id"], "output": message["content"]}
            )
        elif message.get("tool_calls"):
            for call in message["tool_calls"]:
                function = call["function"]
                items.append(
                    {
                        "type": "function_call",
                        "call_id": call["id"],
                        "name": function["name"],
                        "arguments": function["arguments"],
                    }
                )
        else:
            items.append({"type": "message", "role": message["role"], "content": message["content"]})
    return items


def flat_tool(tool: dict[str, Any]) -> dict[str, Any]:
    """A chat-completions function tool in the Responses API's flat shape."""
    return {"type": "function", **tool["function"]}
