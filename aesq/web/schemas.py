"""Shapes of the JSON API's answers (the OpenAPI description is generated from them)."""

from __future__ import annotations

from datetime import date, datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class ErrorOut(BaseModel):
    """Every error of the API: one line with the cause and what to do, and maybe more string fields."""

    model_config = ConfigDict(extra="allow")
    __pydantic_extra__: dict[str, str] = Field(init=False)

    detail: str = Field(description="one line: what went wrong and what to do")
    cause: str = Field("", description="the underlying error's first line, where there is one")


class VersionRow(BaseModel):
    """One generator version under one scorer on the leaderboard."""

    generator: str
    version: str
    kind: str
    scorer: str
    count: int
    mean: float
    mean_low: float | None
    mean_high: float | None
    std: float | None
    median: float
    p10: float
    p90: float
    interval: str  # "bootstrap" (stored BCa) or "normal" (computed under filters)


class IntervalOut(BaseModel):
    low: float
    high: float


class PairedOut(BaseModel):
    pairs: int
    mean_difference: float
    difference_interval: IntervalOut
    wilcoxon_p: float
    share_b_better: float


class ComparisonOut(BaseModel):
    """B against A under one scorer; differences are B minus A."""

    a: str
    b: str
    scorer: str
    count_a: int
    count_b: int
    mean_difference: float
    difference_interval: IntervalOut | None
    mann_whitney_p: float | None
    effect_size: float | None
    paired: PairedOut | None
    too_few: str | None


class AssetRow(BaseModel):
    id: int
    bucket: str
    key: str
    prompt: str | None
    seed: int | None
    source_kind: str
    generator: str | None
    version: str | None
    value: float | None
    scored_at: datetime | None
    defects: list[str]


class AssetPage(BaseModel):
    """One page of assets and how many match in all."""

    total: int
    limit: int
    offset: int
    items: list[AssetRow]


class ScoreOut(BaseModel):
    scorer: str
    scorer_version: str
    value: float
    raw: dict[str, Any]
    created_at: datetime


class DefectOut(BaseModel):
    category: str
    severity: float
    detail: str | None


class CritiqueOut(BaseModel):
    """A VLM critic's answers about the asset, per aspect (not a defect: it counts in no defect figure)."""

    critic: str
    score: float = Field(description="the critic's own score of the asset when it wrote the critique")
    aspects: dict[str, str]
    created_at: datetime


class AssetDetail(BaseModel):
    """Everything aesq knows about one asset."""

    id: int
    storage: str
    bucket: str
    key: str
    sha256: str
    size_bytes: int
    width: int | None
    height: int | None
    format: str | None
    color_mode: str | None
    source_kind: str
    prompt: str | None
    seed: int | None
    extra: dict[str, Any]
    status: str
    error: str | None
    created_at: datetime
    scored_at: datetime | None
    analysed_at: datetime | None
    generator: str | None
    version: str | None
    generator_kind: str | None
    scores: list[ScoreOut]
    defects: list[DefectOut]
    critique: CritiqueOut | None
    embedders: list[str]
    unreadable: list[str] = Field(
        description="stored values not in the shape aesq writes (`extra`, `scores.<scorer>.raw`, `critique.aspects`):"
        " each is given empty, and an aspect's answer as 'unreadable'"
    )


class Neighbour(BaseModel):
    id: int
    key: str | None
    distance: float
    embedder: str


class DailyPoint(BaseModel):
    day: date
    mean: float
    count: int


class ReportOut(BaseModel):
    id: int
    created_at: datetime
    location: str


class FailureExampleOut(BaseModel):
    asset_id: int | None
    location: str
    error: str


class FailureReasonOut(BaseModel):
    reason: str
    count: int
    examples: list[FailureExampleOut]
