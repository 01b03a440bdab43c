"""The ``@tool`` decorator: a typed Python function becomes a server-side tool.

The decorator returns the function unchanged and attaches a ``FunctionTool`` to it;
the registry finds it when it loads the module. The parameters' JSON schema and
the validation of the model's arguments both come from one pydantic model built
from the signature, so they cannot disagree.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import re
import typing
from collections.abc import Callable
from concurrent.futures import Executor
from typing import Any, TypeVar, overload

from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model

from gateway.tools.base import InvalidArguments, Tool, ToolContext

F = TypeVar("F", bound=Callable[..., Any])

ATTRIBUTE = "__gateway_tool__"
_ARGS_HEADER = re.compile(r"^\s*(Args|Arguments|Parameters):\s*$")
_ARG_LINE = re.compile(r"^\s*(\*{0,2}\w+)\s*(?:\([^)]*\))?\s*:\s*(.*)$")
_SECTION = re.compile(r"^\s*(Returns|Raises|Yields|Examples?|Notes?|Attributes):\s*$")


def parse_docstring(doc: str | None) -> tuple[str, dict[str, str]]:
    """The first paragraph, and the ``Args:`` section's descriptions (Google style)."""
    if not doc:
        return "", {}
    lines = inspect.cleandoc(doc).splitlines()
    summary: list[str] = []
    for line in lines:
        if not line.strip():
            break
        summary.append(line.strip())
    params: dict[str, str] = {}
    current: str | None = None
    in_args = False
    args_indent = 0
    for line in lines:
        if _ARGS_HEADER.match(line):
            in_args, current = True, None
            args_indent = len(line) - len(line.lstrip())
            continue
        if not in_args:
            continue
        if _SECTION.match(line) or (line.strip() and len(line) - len(line.lstrip()) <= args_indent):
            in_args = False
            continue
        match = _ARG_LINE.match(line)
        if match and (current is None or len(line) - len(line.lstrip()) <= args_indent + 4):
            current = match.group(1).lstrip("*")
            params[current] = match.group(2).strip()
        elif current and line.strip():
            params[current] = f"{params[current]} {line.strip()}".strip()
    return " ".join(summary), params


def _strip_titles(schema: Any) -> Any:
    """Drop pydantic's generated ``title`` keywords, which models read as noise."""
    if isinstance(schema, dict):
        cleaned: dict[str, Any] = {}
        for key, value in schema.items():
            if key == "title" and isinstance(value, str):
                continue
            if key in ("properties", "$defs", "definitions") and isinstance(value, dict):
                cleaned[key] = {name: _strip_titles(sub) for name, sub in value.items()}
            else:
                cleaned[key] = _strip_titles(value)
        return cleaned
    if isinstance(schema, list):
        return [_strip_titles(item) for item in schema]
    return schema


def _inline_refs(schema: dict[str, Any]) -> dict[str, Any]:
    """Inline ``$defs`` references; small local models handle flat schemas far better.

    A recursive type keeps its ``$ref`` (and the ``$defs`` it needs).
    """
    defs = schema.get("$defs", {})
    recursive = False

    def resolve(node: Any, seen: frozenset[str]) -> Any:
        nonlocal recursive
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str) and ref.startswith("#/$defs/"):
                name = ref.removeprefix("#/$defs/")
                if name in seen or name not in defs:
                    recursive = True
                    return node
                merged = {**resolve(defs[name], seen | {name}), **{k: v for k, v in node.items() if k != "$ref"}}
                return merged
            return {k: resolve(v, seen) for k, v in node.items() if k != "$defs"}
        if isinstance(node, list):
            return [resolve(item, seen) for item in node]
        return node

    inlined: dict[str, Any] = resolve(schema, frozenset())
    if recursive and defs:
        inlined["$defs"] = defs
    return inlined


class FunctionTool(Tool):
    """A tool backed by a Python function, sync or async."""

    def __init__(
        self,
        fn: Callable[..., Any],
        *,
        name: str | None = None,
        description: str | None = None,
        timeout_s: float | None = None,
    ) -> None:
        self.fn = fn
        self.name = name or fn.__name__
        summary, param_docs = parse_docstring(fn.__doc__)
        self.description = description or summary
        self.timeout_s = timeout_s
        self.source = f"python:{fn.__module__}"
        self.is_async = inspect.iscoroutinefunction(fn)
        self.context_param: str | None = None
        hints = typing.get_type_hints(fn, include_extras=True)
        fields: dict[str, Any] = {}
        for param in inspect.signature(fn).parameters.values():
            if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
                raise TypeError(f"tool {self.name!r}: *args and **kwargs cannot be described to a model")
            annotation = hints.get(param.name, Any)
            if annotation is ToolContext or ToolContext in typing.get_args(annotation):
                self.context_param = param.name
                continue
            default = ... if param.default is inspect.Parameter.empty else param.default
            described = param.name in param_docs
            fields[param.name] = (
                annotation,
                Field(default, description=param_docs[param.name]) if described else Field(default),
            )
        self.arguments_model: type[BaseModel] = create_model(
            f"{self.name}_arguments", __config__=ConfigDict(extra="forbid"), **fields
        )
        schema = _inline_refs(_strip_titles(self.arguments_model.model_json_schema()))
        schema.pop("additionalProperties", None)
        schema.setdefault("properties", {})
        self.parameters = schema
        self._field_names = list(fields)
        # Sync tools run here, off the event loop; the registry supplies a pool sized for tools.
        self.thread_pool: Executor | None = None

    def validate(self, arguments: dict[str, Any]) -> dict[str, Any]:
        try:
            model = self.arguments_model.model_validate(arguments)
        except ValidationError as exc:
            problems = []
            for error in exc.errors(include_url=False):
                where = ".".join(str(p) for p in error["loc"]) or "arguments"
                problems.append(f"{where}: {error['msg']}")
            raise InvalidArguments("; ".join(problems)) from exc
        return {name: getattr(model, name) for name in self._field_names}

    async def invoke(self, validated: dict[str, Any], context: ToolContext) -> Any:
        kwargs = dict(validated)
        if self.context_param:
            kwargs[self.context_param] = context
        if self.is_async:
            return await self.fn(**kwargs)
        return await asyncio.get_running_loop().run_in_executor(self.thread_pool, functools.partial(self.fn, **kwargs))


@overload
def tool(fn: F, /) -> F: ...


@overload
def tool(
    *, name: str | None = None, description: str | None = None, timeout_s: float | None = None
) -> Callable[[F], F]: ...


def tool(
    fn: F | None = None,
    /,
    *,
    name: str | None = None,
    description: str | None = None,
    timeout_s: float | None = None,
) -> F | Callable[[F], F]:
    """Mark a typed function as a server-side tool; usable bare or with options.

    The function is returned unchanged, so it stays callable and testable as is.
    """

    def mark(function: F) -> F:
        setattr(function, ATTRIBUTE, FunctionTool(function, name=name, description=description, timeout_s=timeout_s))
        return function

    return mark(fn) if fn is not None else mark


def tool_of(obj: Any) -> FunctionTool | None:
    """The FunctionTool attached to ``obj`` by ``@tool``, if any."""
    found = getattr(obj, ATTRIBUTE, None) if callable(obj) else None
    return found if isinstance(found, FunctionTool) else None
