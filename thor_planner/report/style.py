"""What every figure of the report shares: colours, the plotly config and the title/margin style."""

from __future__ import annotations

import plotly.graph_objects as go

from thor_planner.report.tables import FONT

LOSS_COLOR, PERF_COLOR, SPLIT_COLOR, INK = "#1b9e77", "#d95f02", "#5e3c99", "#2b2d42"
CONFIG = {"displaylogo": False, "responsive": True, "toImageButtonOptions": {"format": "svg", "scale": 2}}


def style(fig: go.Figure, title: str, subtitle: str, height: int) -> go.Figure:
    fig.update_layout(
        template="plotly_white", height=height, font=dict(family=FONT, size=13, color=INK),
        title=dict(text=title, subtitle=dict(text=subtitle, font=dict(size=12, color="#6c757d")),
                   x=0.01, xanchor="left", y=0.98, yanchor="top"),
        margin=dict(l=64, r=24, t=96, b=64), hoverlabel=dict(font_family=FONT, bgcolor="white"),
        legend=dict(orientation="h", yanchor="top", y=-0.16, xanchor="left", x=0),
    )
    return fig
