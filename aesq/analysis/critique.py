"""VLM critiques of low scorers: the critic (an enabled VLM scorer) answers one question per aspect, and the
answers are stored in `critiques` (an opinion in words, kept apart from the measured defects)."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext

from sqlalchemy import bindparam, func, text
from sqlalchemy.dialects.postgresql import insert

from aesq.core.config import Settings
from aesq.core.database import get_engine
from aesq.core.fetch import Unreadable, fetch_assets
from aesq.core.scoring import UnknownModel, loaded_scorer, models_in_use
from aesq.core.tables import Critique
from aesq.core.writes import current_holders
from aesq.models import SCORERS, Critic

_WITH_CRITIC_SCORE = text(
    """
    SELECT a.id, a.storage, a.bucket, a.key, a.etag, a.sha256, ls.value
    FROM assets a JOIN latest_scores ls ON ls.asset_id = a.id AND ls.scorer = :critic
    WHERE a.id IN :ids ORDER BY a.id
    """
).bindparams(bindparam("ids", expanding=True))


def critic_name(settings: Settings) -> str | None:
    """The scorer that writes critiques: `critic`, else the first enabled scorer able to; None when off or none can."""
    if not settings.critique:
        return None
    if settings.critic is not None:
        if settings.critic not in settings.enabled_scorers:
            raise UnknownModel(
                f"critic {settings.critic!r} is not an enabled scorer ({', '.join(settings.enabled_scorers)})"
            )
        if not issubclass(SCORERS[settings.critic], Critic):
            raise UnknownModel(
                f"scorer {settings.critic!r} cannot write critiques (only the InternVL-chat VLM scorers can)"
            )
        return settings.critic
    return next((name for name in settings.enabled_scorers if issubclass(SCORERS.get(name, object), Critic)), None)


def critique_assets(
    asset_ids: list[int], settings: Settings, model_slot: Callable[[], AbstractContextManager] = nullcontext
) -> int:
    """Have the critic judge each asset per aspect and upsert its critique; returns how many were written.

    Assets without the critic's score, or whose image can no longer be read (defect analysis records those
    as `unreadable`), are skipped. A critique replaces the asset's earlier one, so a retry adds no rows.
    """
    name = critic_name(settings)
    if name is None or name not in settings.scorers:
        return 0
    critic = loaded_scorer(name, settings)
    assert isinstance(critic, Critic), "critic_name names only scorers that are critics"
    aspects = settings.critique_aspects or list(critic.aspects)
    with get_engine(settings).connect() as connection:
        rows = connection.execute(_WITH_CRITIC_SCORE, {"ids": asset_ids, "critic": name}).all()
    readable = [
        (row, image)
        for row, image in zip(rows, fetch_assets(list(rows), settings)[0])
        if not isinstance(image, Unreadable)
    ]
    if not readable:
        return 0
    prepared = critic.prepare([image for _, image in readable])
    with models_in_use, model_slot():
        answers = critic.critique_prepared(prepared, aspects, settings.critique_max_new_tokens)
    sha_of = {row.id: row.sha256 for row, _ in readable}
    values = [
        {"asset_id": row.id, "critic": name, "critic_score": row.value, "aspects": answer}
        for (row, _), answer in zip(readable, answers, strict=True)
    ]
    with get_engine(settings).begin() as connection:
        holder = current_holders(connection, sha_of)
        values = [{**value, "asset_id": holder[value["asset_id"]]} for value in values if value["asset_id"] in holder]
        if not values:
            return 0
        statement = insert(Critique).values(values)
        connection.execute(
            statement.on_conflict_do_update(
                index_elements=[Critique.asset_id],
                set_={
                    "critic": statement.excluded.critic,
                    "critic_score": statement.excluded.critic_score,
                    "aspects": statement.excluded.aspects,
                    "created_at": func.now(),
                },
            )
        )
    return len(values)
