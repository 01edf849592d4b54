"""The NGSI-LD query language (q=): comparisons, ';' and '|', parentheses, attribute paths, lists, ranges,
patterns, and 400-worthy syntax errors."""

from __future__ import annotations

import pytest

from services.normalizer.ngsi_query import QuerySyntaxError, parse_q

OVEN = {
    "id": "urn:ngsi-ld:Machine:line1-oven", "type": "Machine",
    "name": {"type": "Property", "value": "Tunnel oven"},
    "zone1_temperature": {"type": "Property", "value": 185.0, "unitCode": "CEL",
                          "observedAt": "2025-11-29T07:06:40.000Z"},
    "belt_speed": {"type": "Property", "value": 2, "unitCode": "MTR",
                   "reading": {"type": "Property", "value": "raw-17"}},
    "state": {"type": "Property", "value": "running"},
    "running": {"type": "Property", "value": True},
    "tags": {"type": "Property", "value": ["hot", "zone1"]},
    "lastInspection": {"type": "Property", "value": {"verdict": "defective", "defects": ["burnt"]}},
    "partOf": {"type": "Relationship", "object": "urn:ngsi-ld:Line:line1"},
}


@pytest.mark.parametrize(("q", "expected"), [
    ("zone1_temperature>180", True),
    ("zone1_temperature>=185", True),
    ("zone1_temperature<185", False),
    ("zone1_temperature<=185.0", True),
    ("zone1_temperature==185", True),
    ("zone1_temperature!=185", False),
    ("zone1_temperature!=100", True),
    ("zone1_temperature==180..190", True),
    ("zone1_temperature==186..190", False),
    ("zone1_temperature==1,2,185", True),
    ('state=="running"', True),
    ('state=="running","stopped"', True),
    ('state!="stopped"', True),
    ('state=="stopped"', False),
    ("state", True),
    ("humidity", False),
    ("running==true", True),
    ("running==false", False),
    ("partOf==urn:ngsi-ld:Line:line1", True),
    ("partOf==urn:ngsi-ld:Line:line2", False),
    ("zone1_temperature.observedAt>=2025-11-29T07:00:00Z", True),
    ("zone1_temperature.observedAt<2025-11-29T07:00:00Z", False),
    ('zone1_temperature.unitCode=="CEL"', True),
    ('belt_speed.reading=="raw-17"', True),
    ('lastInspection[verdict]=="defective"', True),
    ('lastInspection[defects]=="burnt"', True),
    ('lastInspection[nothing]=="x"', False),
    ('tags=="zone1"', True),
    ("zone1_temperature>180;belt_speed<1", False),
    ("zone1_temperature>180|belt_speed<1", True),
    ("belt_speed<1;state|zone1_temperature>180", True),  # ';' binds tighter: (a;b)|c
    ("belt_speed<1;(state|zone1_temperature>180)", False),
    ('(state=="stopped"|state=="running");zone1_temperature>100', True),
    ("name~=(?i)^tunnel", True),
    ("name!~=oven$", False),
    ('zone1_temperature=="185"', False),  # a string never equals a number
    ("id==urn:ngsi-ld:Machine:line1-oven", True),
    ("zone1_temperature>-5.5e1", True),
])
def test_queries_match_as_the_standard_says(q: str, expected: bool) -> None:
    assert parse_q(q)(OVEN) is expected


@pytest.mark.parametrize("q", [
    "", "zone1_temperature>", ">5", "zone1_temperature>>5", "(zone1_temperature>5", "zone1_temperature>5)",
    "state==running", 'state=="running', "zone1_temperature>5;", "a==1..", "name~=(", "a b", "a[b", "a.",
    "running>true", "zone1_temperature==1..\"x\"",
])
def test_bad_syntax_is_an_error_that_says_where(q: str) -> None:
    with pytest.raises(QuerySyntaxError, match="q"):
        parse_q(q)
