"""The model's plan: an ``update_plan`` tool the model calls with its steps and their status.

This is how the agents IDE users know do it (Codex's ``update_plan``, Claude
Code's todo list): the model states its plan as a tool call, the whole list
each time, and the ACP server turns each call into an agent ``plan`` update
(:func:`acp_plan`), which IDEs show as a checklist beside the conversation.
In a terminal the call is shown like any other tool call.

Enabled with ``"update_plan"`` in ``agent.tools`` (not by default: every tool's
definition is prompt the model reads on every request, which small local
models pay for in time).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field
from pydantic_ai import RunContext

from punie.agent.tools import Status, TurnDeps, invoke_tool

PLAN_TOOL = "update_plan"
MAX_ENTRIES = 50


class PlanStep(BaseModel):
    """One step of the plan."""

    content: str = Field(description="What this step does, in a few words.")
    status: Literal["pending", "in_progress", "completed"] = Field(
        "pending", description="pending, in_progress (at most one) or completed.")
    priority: Literal["high", "medium", "low"] = "medium"


async def update_plan(ctx: RunContext[TurnDeps], steps: list[PlanStep]) -> str:
    """Write down or update your plan for the user's task: the complete list of steps, each with its status.

    Call it before a task of several steps, and again whenever a step starts or is done.

    Args:
        steps: Every step of the plan, in order (the whole list each time).
    """
    args = {"steps": [step.model_dump() for step in steps[:MAX_ENTRIES]]}

    async def action() -> tuple[Status, str]:
        done = sum(1 for step in steps if step.status == "completed")
        return "ok", f"plan updated: {len(args['steps'])} steps, {done} completed"

    return await invoke_tool(ctx, PLAN_TOOL, args, action)


def plan_tool() -> Any:
    """``update_plan`` as a pydantic-ai tool."""
    from pydantic_ai import Tool

    return Tool(update_plan, takes_ctx=True, name=PLAN_TOOL)


def acp_plan(args: Any) -> Any | None:
    """The ACP ``plan`` update of an ``update_plan`` call's arguments (None when they hold no steps)."""
    from acp.helpers import plan_entry
    from acp.helpers import update_plan as plan_update

    steps = args.get("steps") if isinstance(args, dict) else None
    if not isinstance(steps, list):
        return None
    entries = []
    for step in steps[:MAX_ENTRIES]:
        try:
            parsed = PlanStep.model_validate(step)
        except ValueError:
            continue
        entries.append(plan_entry(parsed.content, priority=parsed.priority, status=parsed.status))
    return plan_update(entries) if entries else None
