"""Checks on the words a recommendation or a chat answer shows an operator.

Validation of the model's JSON checks ids and action fields; this checks the prose: every number, unit, machine
and direction in a text must come from the evidence (the findings the analysis cited and their numbers), the
allowed actions or the cited SOP text, and no text may carry a setpoint value or step outside the plant's
limits ("lower the setpoint by 40 C" where the largest step is 15 C) whatever its source. The analysis's own
texts pass it (a test runs every scenario window through it), so the fallback always stands.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import TYPE_CHECKING

from lineguard.plant import PlantModel

if TYPE_CHECKING:
    from services.advisor.analysis import Analysis
    from services.advisor.retrieval import Hit

NUMBER = re.compile(r"(?<![\w.])(-?\d+(?:\.\d+)?)(?:\s*(°C|°F|Nm|rpm|RPM|%|m/min|A|g|kW|mV|min|s|C|F)\b|(?=\W|$))")
CLOCK = re.compile(r"\b\d{1,2}:\d{2}\b")
RAW_UNIT = re.compile(r"\d\s*(CEL|NU|P1|2X|C62|GRM|AMP|KWT|FAH|SEC)\b")
# change verbs, not descriptions of a reading ("lower than its normal minimum", "drifting up")
UP = re.compile(r"\b(raise|raising|increase|increasing)\b", re.I)
DOWN = re.compile(r"\b(lower(?!\s+than)|lowering|decrease|decreasing|reduce|reducing)\b", re.I)
NEGATION = re.compile(r"\b(do not|don't|never|not|no)\b", re.I)
RESTORE = re.compile(r"\b(back to|return|once|restore)\b", re.I)
CHANGE = re.compile(r"\b(setpoint|set point|set it|speed|ratio|raise|lower|increase|decrease|reduce)\b", re.I)
GENERIC = {"line", "cookie", "cookies", "dough", "hall", "cooling", "cut", "wire", "plc", "1"}


def _numbers(text: str) -> list[float]:
    return [float(m.group(1)) for m in NUMBER.finditer(CLOCK.sub(" ", text))]


def _sentences(text: str) -> list[str]:
    return [s for s in re.split(r"(?<=[.;!?])\s+", text) if s.strip()]


def machine_words(plant: PlantModel, line_id: str) -> dict[str, str]:
    """word -> machine id: the words an operator text names a machine by."""
    out: dict[str, str] = {}
    for machine in plant.lines[line_id].machines.values():
        for word in re.findall(r"[a-z]+", f"{machine.id} {machine.type} {machine.name}".lower()):
            if word not in GENERIC and len(word) > 2:
                out.setdefault(word, machine.id)
    return out


def allowed_numbers(analysis: Analysis, hits: Iterable[Hit]) -> set[float]:
    values: set[float] = set()
    cited = [analysis.finding(i) for i in analysis.cited] + list(analysis.findings)
    for finding in cited:
        if finding is None:
            continue
        if finding.value is not None:
            values.add(float(finding.value))
        values.update(float(v) for v in finding.numbers.values())
        values.update(_numbers(finding.description))
        values.update(float(n) for n in re.findall(r"\d+", finding.attribute or ""))
    for action in analysis.actions:
        values.update((action.value, action.current, abs(action.value - action.current), action.max_step))
    for text in [analysis.title, analysis.summary, analysis.root_cause_text, *analysis.steps,
                 *analysis.safety_notes, *analysis.compliance_notes, *analysis.waiting]:
        values.update(_numbers(text))
    for hit in hits:
        values.update(_numbers(hit.section.text))
        values.update(_numbers(f"{hit.section.doc_id} {hit.section.section}"))
    return values


def _matches(number: float, allowed: set[float]) -> bool:
    if float(number).is_integer() and 0 <= number <= 3:
        return True  # "one step", "zone 2", "3 steps": counting words, not measurements
    return any(abs(number - a) <= max(0.51, 0.005 * abs(a)) for a in allowed)


def unsafe_values(text: str, plant: PlantModel, line_id: str, symbols: dict[str, str]) -> list[str]:
    """Values in a text that would move a setpoint outside the plant's limits or by more than its largest step."""
    problems: list[str] = []
    setpoints = [s for m in plant.lines[line_id].machines.values() for s in m.setpoints.values()]
    for sentence in _sentences(text):
        if not CHANGE.search(sentence) or (NEGATION.search(sentence) and not (UP.search(sentence)
                                                                              or DOWN.search(sentence))):
            continue
        if re.search(r"\bor more\b|\bat least\b", sentence, re.I) and (UP.search(sentence) or DOWN.search(sentence)):
            problems.append(f"{sentence[:60]!r} asks for an open-ended change")
        for match in NUMBER.finditer(CLOCK.sub(" ", sentence)):
            unit = match.group(2)
            if not unit:
                continue
            value = float(match.group(1))
            same = [s for s in setpoints if symbols.get(s.unit or "", s.unit or "") == unit
                    or (unit == "C" and s.unit == "CEL") or (unit.lower() == "rpm" and s.unit == "RPM")]
            if not same:
                continue
            before = sentence[:match.start()].lower().split()[-3:]
            if any(w in ("by", "of", "step", "steps") for w in before):
                largest = max(s.max_step for s in same)
                if value > largest + 1e-9:
                    problems.append(f"{sentence[:60]!r}: a change of {value:g} {unit} is more than the largest "
                                    f"allowed step {largest:g}")
            elif any(w in ("to", "at", "from") for w in before[-1:]):
                low, high = min(s.min for s in same), max(s.max for s in same)
                if not low - 1e-9 <= value <= high + 1e-9:
                    problems.append(f"{sentence[:60]!r}: {value:g} {unit} is outside the setpoint limits "
                                    f"{low:g} to {high:g}")
    return problems


def check_prose(texts: dict[str, str], analysis: Analysis, hits: list[Hit], plant: PlantModel) -> list[str]:
    """Why these texts cannot be shown as they are; empty when every claim is grounded."""
    problems: list[str] = []
    allowed = allowed_numbers(analysis, hits)
    words = machine_words(plant, analysis.line_id)
    machines = {c.machine_id for c in analysis.causes} | {a.machine_id for a in analysis.actions}
    machines |= {f.machine_id for f in analysis.findings if f.id in analysis.cited}
    sop = " ".join(h.section.text for h in hits).lower()
    machines |= {m for w, m in words.items() if re.search(rf"\b{w}\b", sop)}
    own = " ".join([analysis.title, analysis.root_cause_text, *analysis.steps, *analysis.safety_notes,
                    *analysis.compliance_notes]).lower()  # the playbook's texts: SOP steps as data
    machines |= {m for w, m in words.items() if re.search(rf"\b{w}\b", own)}
    directions = {a.parameter: a.direction for a in analysis.actions}
    grounded_clock = " ".join([analysis.summary, *analysis.steps, *analysis.waiting])
    for what, text in texts.items():
        if RAW_UNIT.search(text):
            problems.append(f"{what}: units must be symbols (°C, Nm, %), not codes: {RAW_UNIT.search(text)[0]!r}")
        for clock in CLOCK.findall(text):
            if clock not in grounded_clock:
                problems.append(f"{what}: the time {clock} is not in the evidence")
        for number in _numbers(text):
            if not _matches(number, allowed):
                problems.append(f"{what}: the number {number:g} is not in the evidence, the actions or the SOP")
        lowered = text.lower()
        for word, machine in words.items():
            if machine not in machines and re.search(rf"\b{word}s?\b", lowered):
                problems.append(f"{what}: names the {machine}, which the evidence does not involve")
        for sentence in _sentences(text):
            if NEGATION.search(sentence) or RESTORE.search(sentence):
                continue
            up, down = bool(UP.search(sentence)), bool(DOWN.search(sentence))
            if not (up or down) or not CHANGE.search(sentence):
                continue
            said = "increase" if up and not down else "decrease" if down and not up else None
            if said is None:
                continue
            if not analysis.actions and ("setpoint" in sentence.lower() or any(
                    p.replace("_", " ") in sentence.lower() for p in directions)):
                problems.append(f"{what}: {sentence[:60]!r} changes a setpoint, but no change is allowed")
            for parameter, direction in directions.items():
                names = {parameter.lower(), parameter.replace("_", " ").lower()}
                if any(n in sentence.lower() for n in names) and direction != said:
                    problems.append(f"{what}: {sentence[:60]!r} moves {parameter} the wrong way "
                                    f"(the analysis says {direction})")
        problems += [f"{what}: {p}" for p in unsafe_values(text, plant, analysis.line_id, analysis.units)]
    return list(dict.fromkeys(problems))
