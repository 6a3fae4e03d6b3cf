"""Where an image came from: generator name/version, prompt and seed, from three places.

Later sources override earlier ones:
1. the key layout: `…/generated/<model>/<version>/<file>` is generated, `…/crawled/…` is crawled;
2. object metadata (S3 `x-amz-meta-*`): `generator` (`name` or `name:version`), `generator-version`,
   `generator-kind`, `generator-parent` (`name:version`), `prompt`, `seed`, `source-kind`;
3. a sidecar JSON next to the image (`img.png.json` or `img.json`) with the same fields
   (`generator` may also be an object `{name, version, kind, parent, …}`).
Any other metadata or sidecar field is kept in the asset's `extra`.

A version is labelled `name:version` everywhere (dashboard, API, `aesq compare`, SQL views), split at its first
colon; so a generator name may not contain `:` (SEPARATOR), wherever it comes from, while a version may. An image
naming one fails with that reason; the `name:version` forms above split at the first colon, so they never do.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Any

from aesq.core.tables import GENERATOR_KINDS, SOURCE_KINDS

_KNOWN_FIELDS = {
    "generator",
    "generator_version",
    "generator_kind",
    "generator_parent",
    "generator_metadata",
    "prompt",
    "seed",
    "source_kind",
}
_DEFAULT_VERSION = "unversioned"
SEPARATOR = ":"  # between a generator's name and its version in a label


class ProvenanceError(ValueError):
    """Provenance that contradicts itself or has a malformed field; the message is the stored reason."""


@dataclass(frozen=True)
class GeneratorRef:
    """A model version named by an image's provenance."""

    name: str
    version: str
    kind: str | None = None
    parent: tuple[str, str] | None = None
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Provenance:
    """Everything ingest records about an image's origin."""

    source_kind: str
    generator: GeneratorRef | None
    prompt: str | None
    seed: int | None
    extra: dict[str, Any]


def _from_key(key: str) -> dict[str, Any]:
    """Fields implied by the documented key layout."""
    parts = PurePosixPath(key).parts
    for index, part in enumerate(parts):
        if part == "generated" and len(parts) - index >= 4:
            return {"source_kind": "generated", "generator": parts[index + 1], "generator_version": parts[index + 2]}
        if part == "crawled":
            return {"source_kind": "crawled"}
    return {}


def _normalise(fields: dict[str, Any]) -> dict[str, Any]:
    """Accept `generator-version` and `generator_version` alike; unfold a generator object."""
    out: dict[str, Any] = {}
    for name, value in fields.items():
        out[name.strip().lower().replace("-", "_")] = value
    generator = out.get("generator")
    if isinstance(generator, dict):
        generator = {k.lower(): v for k, v in generator.items()}
        out.pop("generator")
        if "name" in generator:
            out["generator"] = generator.pop("name")
        for sub in ("version", "kind", "parent"):
            if sub in generator:
                out[f"generator_{sub}"] = generator.pop(sub)
        if generator:
            out["generator_metadata"] = generator
    elif isinstance(generator, str) and SEPARATOR in generator and "generator_version" not in out:
        out["generator"], out["generator_version"] = generator.split(SEPARATOR, 1)
    return out


def _parse_sidecar(sidecar: bytes) -> dict[str, Any]:
    """The sidecar's fields, or a ProvenanceError naming what is wrong."""
    try:
        fields = json.loads(sidecar)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ProvenanceError(f"sidecar JSON is malformed: {error}") from None
    if not isinstance(fields, dict):
        raise ProvenanceError("sidecar JSON must be an object")
    return fields


def _name_version(value: Any, what: str) -> tuple[str, str]:
    """Split `name:version` at its first colon."""
    name, colon, version = value.partition(SEPARATOR) if isinstance(value, str) else ("", "", "")
    if not colon or not name.strip() or not version.strip():
        raise ProvenanceError(f"{what} must look like name:version, got {value!r}")
    return name.strip(), version.strip()


def _checked_name(name: str) -> str:
    """A generator name that cannot be confused with another version's label, or the reason it is refused."""
    if SEPARATOR in name:
        raise ProvenanceError(
            f"generator name {name!r} contains {SEPARATOR!r}, which separates name from version in labels:"
            f" rename the generator (its version may contain {SEPARATOR!r})"
        )
    return name


def _seed(value: Any) -> int | None:
    """Seeds are integers; strings of digits are accepted."""
    if value is None or value == "":
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        raise ProvenanceError(f"seed must be an integer, got {value!r}") from None


def read_provenance(key: str, metadata: dict[str, str], sidecar: bytes | None) -> Provenance:
    """Combine key layout, object metadata and sidecar into one record (see module docstring)."""
    layers = [_from_key(key), _normalise(metadata)]
    if sidecar is not None:
        layers.append(_normalise(_parse_sidecar(sidecar)))
    fields: dict[str, Any] = {}
    for layer in layers:
        if layer.get("generator"):  # a layer naming a generator replaces everything said of the previous one
            fields = {k: v for k, v in fields.items() if not k.startswith("generator")}
        fields.update(layer)
    extra = {k: v for layer in layers[1:] for k, v in layer.items() if k not in _KNOWN_FIELDS}

    generator = None
    if str(fields.get("generator") or "").strip():
        kind = fields.get("generator_kind")
        if kind is not None and kind not in GENERATOR_KINDS:
            raise ProvenanceError(f"generator kind must be one of {', '.join(GENERATOR_KINDS)}, got {kind!r}")
        parent = fields.get("generator_parent")
        generator = GeneratorRef(
            name=_checked_name(str(fields["generator"]).strip()),
            version=str(fields.get("generator_version") or _DEFAULT_VERSION).strip(),
            kind=kind,
            parent=_name_version(parent, "generator parent") if parent else None,
            metadata=fields.get("generator_metadata", {}),
        )
    source_kind = fields.get("source_kind") or ("generated" if generator else "crawled")
    if source_kind not in SOURCE_KINDS:
        raise ProvenanceError(f"source kind must be one of {', '.join(SOURCE_KINDS)}, got {source_kind!r}")
    if source_kind == "crawled" and generator is not None:
        raise ProvenanceError(f"a crawled image cannot name a generator ({generator.name}:{generator.version})")
    prompt = fields.get("prompt")
    return Provenance(
        source_kind=source_kind,
        generator=generator,
        prompt=str(prompt) if prompt is not None else None,
        seed=_seed(fields.get("seed")),
        extra=extra,
    )
