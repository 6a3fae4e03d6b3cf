"""Provenance from key layout, object metadata and sidecar JSON, their precedence, and every malformed case."""

from __future__ import annotations

import json

import pytest

from aesq.core.provenance import GeneratorRef, Provenance, ProvenanceError, read_provenance


def _sidecar(**fields) -> bytes:
    return json.dumps(fields).encode()


def _name_version(provenance: Provenance) -> tuple[str, str] | None:
    return (provenance.generator.name, provenance.generator.version) if provenance.generator else None


@pytest.mark.parametrize(
    ("key", "source_kind", "generator"),
    [
        ("generated/sdxl/1.0/a.png", "generated", ("sdxl", "1.0")),
        ("team/run-7/generated/flux/dev-2/sub/a.png", "generated", ("flux", "dev-2")),
        ("crawled/example.com/a.jpg", "crawled", None),
        ("archive/crawled/a.jpg", "crawled", None),
        ("generated/sdxl/a.png", "crawled", None),
        ("generated/x.jpg", "crawled", None),
        ("photos/a.jpg", "crawled", None),
    ],
)
def test_key_layout(key, source_kind, generator):
    provenance = read_provenance(key, {}, None)
    assert provenance.source_kind == source_kind
    assert _name_version(provenance) == generator
    assert (provenance.prompt, provenance.seed, provenance.extra) == (None, None, {})


@pytest.mark.parametrize(
    ("metadata", "generator"),
    [
        ({"generator": "sdxl:1.0"}, ("sdxl", "1.0")),
        ({"generator": "sdxl", "generator-version": "2"}, ("sdxl", "2")),
        ({"generator": "sdxl", "Generator_Version": "2"}, ("sdxl", "2")),
        ({"generator": " sdxl "}, ("sdxl", "unversioned")),
    ],
)
def test_metadata_generator_forms(metadata, generator):
    provenance = read_provenance("photos/a.png", metadata, None)
    assert provenance.source_kind == "generated"
    assert _name_version(provenance) == generator


def test_all_metadata_fields():
    metadata = {
        "generator": "sdxl-fox:3",
        "generator-kind": "lora",
        "generator-parent": "sdxl:1.0",
        "prompt": "a red fox",
        "seed": "42",
        "uploader": "ana",
    }
    assert read_provenance("photos/a.png", metadata, None) == Provenance(
        source_kind="generated",
        generator=GeneratorRef(name="sdxl-fox", version="3", kind="lora", parent=("sdxl", "1.0")),
        prompt="a red fox",
        seed=42,
        extra={"uploader": "ana"},
    )


def test_sidecar_generator_object_and_extra_fields():
    sidecar = _sidecar(
        generator={
            "name": "flux",
            "version": "dev",
            "kind": "sft",
            "parent": "flux:base",
            "sampler": "euler",
            "steps": 30,
        },
        prompt="a lighthouse",
        seed=7,
        rating=5,
        tags=["sea"],
    )
    assert read_provenance("photos/a.png", {}, sidecar) == Provenance(
        source_kind="generated",
        generator=GeneratorRef(
            name="flux", version="dev", kind="sft", parent=("flux", "base"), metadata={"sampler": "euler", "steps": 30}
        ),
        prompt="a lighthouse",
        seed=7,
        extra={"rating": 5, "tags": ["sea"]},
    )


@pytest.mark.parametrize(
    ("key", "metadata", "sidecar", "generator", "prompt"),
    [
        ("generated/sdxl/1.0/a.png", {"generator": "flux:2"}, None, ("flux", "2"), None),
        ("generated/sdxl/1.0/a.png", {"generator": "flux:2"}, _sidecar(generator="mj:6"), ("mj", "6"), None),
        (
            "generated/sdxl/1.0/a.png",
            {"prompt": "from metadata"},
            _sidecar(prompt="from sidecar"),
            ("sdxl", "1.0"),
            "from sidecar",
        ),
        ("photos/a.png", {"generator": "flux:2", "prompt": "kept"}, _sidecar(seed=1), ("flux", "2"), "kept"),
    ],
    ids=["metadata-over-key", "sidecar-over-metadata", "sidecar-prompt-over-metadata", "sidecar-adds-to-metadata"],
)
def test_precedence_sidecar_over_metadata_over_key(key, metadata, sidecar, generator, prompt):
    provenance = read_provenance(key, metadata, sidecar)
    assert _name_version(provenance) == generator
    assert provenance.prompt == prompt


def test_metadata_source_kind_overrides_crawled_key():
    provenance = read_provenance("crawled/a.png", {"source-kind": "generated", "generator": "sdxl:1.0"}, None)
    assert (provenance.source_kind, _name_version(provenance)) == ("generated", ("sdxl", "1.0"))


@pytest.mark.parametrize("seed", ["", None])
def test_empty_seed_is_none(seed):
    assert read_provenance("a.png", {}, _sidecar(seed=seed)).seed is None


@pytest.mark.parametrize(
    ("key", "metadata", "sidecar", "message"),
    [
        ("a.png", {}, b"{not json", "sidecar JSON is malformed"),
        ("a.png", {}, b"\xff\xfe\xfa", "sidecar JSON is malformed"),
        ("a.png", {}, b"[1, 2]", "sidecar JSON must be an object"),
        ("a.png", {}, b'"sdxl"', "sidecar JSON must be an object"),
        ("a.png", {"seed": "forty-two"}, None, "seed must be an integer"),
        ("a.png", {}, _sidecar(seed=[1]), "seed must be an integer"),
        ("a.png", {"generator": "sdxl", "generator-kind": "finetune"}, None, "generator kind must be one of"),
        ("a.png", {"generator": "sdxl", "generator-parent": "sdxl-base"}, None, "generator parent must look like"),
        ("a.png", {}, _sidecar(generator={"name": "x", "parent": {"name": "y"}}), "generator parent must look like"),
        ("crawled/a.png", {"generator": "sdxl:1.0"}, None, r"crawled image cannot name a generator \(sdxl:1.0\)"),
        ("a.png", {"source-kind": "crawled"}, _sidecar(generator="sdxl"), "crawled image cannot name a generator"),
        ("a.png", {"source-kind": "scraped"}, None, "source kind must be one of"),
    ],
    ids=[
        "malformed-json",
        "not-utf8",
        "json-list",
        "json-string",
        "seed-word",
        "seed-list",
        "bad-kind",
        "parent-without-version",
        "parent-not-string",
        "crawled-key-with-generator",
        "crawled-kind-with-generator",
        "bad-source-kind",
    ],
)
def test_provenance_errors(key, metadata, sidecar, message):
    with pytest.raises(ProvenanceError, match=message):
        read_provenance(key, metadata, sidecar)


def test_naming_another_generator_drops_what_was_said_of_the_previous_one():
    """The key says sdxl 1.0 (a lora); metadata names flux without a version: flux is not given sdxl's."""
    metadata = {"generator-kind": "lora", "generator-parent": "sdxl:0.9"}
    provenance = read_provenance("generated/sdxl/1.0/a.png", metadata, _sidecar(generator="flux"))
    assert provenance.generator == GeneratorRef(name="flux", version="unversioned")


def test_blank_generator_name_means_no_generator():
    assert read_provenance("photos/a.png", {"generator": "  "}, None).generator is None


@pytest.mark.parametrize(
    ("key", "metadata", "sidecar"),
    [
        ("generated/col:x/v/a.png", {}, None),
        ("a.png", {"generator": "col:x", "generator-version": "v"}, None),
        ("a.png", {}, _sidecar(generator="col:x", generator_version="v")),
        ("a.png", {}, _sidecar(generator={"name": "col:x", "version": "v"})),
        ("generated/sdxl/1.0/a.png", {}, _sidecar(generator={"name": "col:x"})),
    ],
    ids=["key-layout", "metadata", "sidecar", "sidecar-generator-object", "object-without-version"],
)
def test_a_generator_name_with_the_separator_is_refused_wherever_it_comes_from(key, metadata, sidecar):
    """`col:x` version `v` would read `col:x:v`, the label of generator `col` version `x:v`."""
    with pytest.raises(ProvenanceError, match=r"generator name 'col:x' contains ':'.*rename the generator"):
        read_provenance(key, metadata, sidecar)


@pytest.mark.parametrize(
    ("key", "metadata", "sidecar"),
    [
        ("generated/col/x:v/a.png", {}, None),
        ("a.png", {"generator": "col:x:v"}, None),
        ("a.png", {"generator": "col", "generator-version": "x:v"}, None),
        ("a.png", {}, _sidecar(generator={"name": "col", "version": "x:v"})),
    ],
    ids=["key-layout", "metadata-label", "metadata-fields", "sidecar-generator-object"],
)
def test_a_version_may_contain_the_separator(key, metadata, sidecar):
    assert _name_version(read_provenance(key, metadata, sidecar)) == ("col", "x:v")


def test_a_parent_label_splits_at_its_first_colon_and_needs_both_parts():
    parent = read_provenance("a.png", {"generator": "sdxl:2", "generator-parent": "col:x:v"}, None).generator
    assert parent is not None and parent.parent == ("col", "x:v")
    for label in (":v", "col:", " : "):
        with pytest.raises(ProvenanceError, match="generator parent must look like name:version"):
            read_provenance("a.png", {"generator": "sdxl:2", "generator-parent": label}, None)
