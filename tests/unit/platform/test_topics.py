"""lineguard.topics and the catalog (schemas/topics.yaml) name the same topics."""

from lineguard import topics
from lineguard.catalog import load_catalog


def test_every_catalog_topic_has_a_constant_and_every_constant_is_in_the_catalog():
    catalog = load_catalog()
    data_topics = {spec.name for spec in catalog.topics.values() if not spec.name.endswith(".dlq")}
    constants = set(topics.all_topics())
    assert constants - data_topics == set(), "constants in lineguard/topics.py that the catalog does not have"
    assert data_topics - constants == set(), "catalog topics without a constant in lineguard/topics.py: add them"


def test_dlq_twin_is_in_the_catalog():
    catalog = load_catalog()
    assert topics.dlq(topics.RAW_TELEMETRY) in catalog
    assert topics.dlq(topics.RAW_TELEMETRY) == "raw.telemetry.v1.dlq"
