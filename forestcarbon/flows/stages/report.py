"""Stage 8: the report."""

from __future__ import annotations



from .context import Context

def stage_report(ctx: Context) -> dict:
    from ..report import build_report

    return build_report(ctx)
