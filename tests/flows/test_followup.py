"""Follow-up flows end to end: scored S3 objects → defect analysis of low scorers → the HTML report."""

from __future__ import annotations

import pytest
import sqlalchemy as sa
from PIL import ImageEnhance, ImageFilter
from prefect.client.orchestration import get_client

from aesq.analysis.defect_analysis import analyse_assets
from aesq.core.database import get_engine
from aesq.flows.followup import defects_flow, report_flow
from aesq.flows.spine import ingest_flow, run_flow
from tests.helpers import jpeg_bytes, photo, put, write_tiny_ernie

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("prefect_harness")]

PHOTOS = ("astronaut", "chelsea", "coffee", "rocket")


def _defects(settings) -> dict[str, dict[str, str]]:
    """Defect details by asset key and category."""
    query = sa.text("SELECT a.key, d.category, d.detail FROM defects d JOIN assets a ON a.id = d.asset_id")
    found: dict[str, dict[str, str]] = {}
    with get_engine(settings).connect() as connection:
        for key, category, detail in connection.execute(query):
            found.setdefault(key, {})[category] = detail
    return found


def test_low_scorers_get_defects_and_the_report_shows_every_version(settings, s3_client, bucket, tmp_path, monkeypatch):
    monkeypatch.setenv("AESQ_REPORTS_URI", f"s3://{bucket}/reports")
    # Blurred and darkened copies score about 6–7.5 on the technical scale, sharp originals above 9.
    monkeypatch.setenv("AESQ_DEFECT_RULES", '{"technical": {"below": 8}}')
    from aesq.core.config import get_settings

    get_settings.cache_clear()
    for name in PHOTOS:
        original = photo(name)
        put(s3_client, bucket, f"generated/sdxl/1.0/{name}.jpg", jpeg_bytes(original))
        put(
            s3_client,
            bucket,
            f"generated/sdxl/1.1/{name}.jpg",
            jpeg_bytes(original.filter(ImageFilter.GaussianBlur(6))),
        )
        put(
            s3_client,
            bucket,
            f"generated/sdxl/1.2/{name}.jpg",
            jpeg_bytes(ImageEnhance.Brightness(original).enhance(0.15)),
        )
    put(s3_client, bucket, "generated/sdxl/1.0/astronaut-again.jpg", jpeg_bytes(photo("astronaut"), quality=80))
    run_flow(f"s3://{bucket}/")

    assert defects_flow() > 0
    found = _defects(settings)
    for name in PHOTOS:
        assert "blur" in found[f"generated/sdxl/1.1/{name}.jpg"]
        assert "underexposure" in found[f"generated/sdxl/1.2/{name}.jpg"]
        original = found.get(f"generated/sdxl/1.0/{name}.jpg", {})
        assert "blur" not in original and "underexposure" not in original
    assert defects_flow() == 0  # nothing new to analyse

    # A re-encoded copy is a near-duplicate of its original, which is named as the one to keep.
    with get_engine(settings).connect() as connection:
        ids = dict(connection.execute(sa.text("SELECT key, id FROM assets")).all())
    analyse_assets([ids["generated/sdxl/1.0/astronaut-again.jpg"]], get_settings())
    detail = _defects(settings)["generated/sdxl/1.0/astronaut-again.jpg"]["near_duplicate"]
    assert f"keep asset {ids['generated/sdxl/1.0/astronaut.jpg']}" in detail

    location = report_flow()
    assert location.startswith(f"s3://{bucket}/reports/aesq-report-")
    html = s3_client.get_object(bucket, location.removeprefix(f"s3://{bucket}/")).read().decode()
    for version in ("sdxl:1.0", "sdxl:1.1", "sdxl:1.2"):
        assert version in html
    assert "data:image/jpeg;base64," in html and "underexposure" in html
    with get_engine(settings).connect() as connection:
        assert connection.execute(sa.text("SELECT count(*) FROM reports")).scalar() == 1
    with get_client(sync_client=True) as client:
        keys = {artifact.key for artifact in client.read_latest_artifacts()}
    assert {"aesq-report", "aesq-leaderboard"} <= keys

    # The next report compares with this one: no version is new any more.
    second = report_flow()
    html = s3_client.get_object(bucket, second.removeprefix(f"s3://{bucket}/")).read().decode()
    assert "new: sdxl:1.0" not in html

    # A deletion found by ingest changes a version without a scoring event: the report's figures still
    # follow the rows.
    s3_client.remove_object(bucket, "generated/sdxl/1.2/rocket.jpg")
    ingest_flow(f"s3://{bucket}/")
    report_flow()
    with get_engine(settings).connect() as connection:
        summary = connection.execute(sa.text("SELECT summary FROM reports ORDER BY id DESC LIMIT 1")).scalar_one()
        from_rows = connection.execute(
            sa.text(
                "SELECT avg(s.value) FROM latest_scores s JOIN assets a ON a.id = s.asset_id "
                "WHERE a.status = 'scored' AND a.key LIKE 'generated/sdxl/1.2/%' AND s.scorer = 'technical'"
            )
        ).scalar_one()
    assert summary["means"]["sdxl:1.2|technical"] == pytest.approx(from_rows)


def test_an_enabled_vlm_critiques_the_low_scorers_in_the_defects_flow(
    settings, s3_client, bucket, tmp_path, monkeypatch
):
    from aesq.core.config import get_settings

    monkeypatch.setenv("AESQ_SCORERS", "technical,ernie-aes")
    monkeypatch.setenv("AESQ_WEIGHTS_DIR", str(write_tiny_ernie(tmp_path / "weights")))
    monkeypatch.setenv("AESQ_DEFECT_RULES", '{"ernie-aes": {"below": 101}}')
    monkeypatch.setenv("AESQ_CRITIQUE_ASPECTS", "Composition & Design,Overall Gestalt")
    monkeypatch.setenv("AESQ_CRITIQUE_MAX_NEW_TOKENS", "4")
    get_settings.cache_clear()
    for name in ("astronaut", "rocket"):
        put(s3_client, bucket, f"generated/sdxl/1.0/{name}.jpg", jpeg_bytes(photo(name)))
    run_flow(f"s3://{bucket}/")
    defects_flow()
    query = sa.text("SELECT a.key, c.critic, c.aspects FROM critiques c JOIN assets a ON a.id = c.asset_id")
    with get_engine(settings).connect() as connection:
        critiques = {key: (critic, tuple(aspects)) for key, critic, aspects in connection.execute(query)}
    assert sorted(critiques) == ["generated/sdxl/1.0/astronaut.jpg", "generated/sdxl/1.0/rocket.jpg"]
    assert set(critiques.values()) == {("ernie-aes", ("Composition & Design", "Overall Gestalt"))}
