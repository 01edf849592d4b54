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


def involved_machines(analysis: Analysis, hits: Iterable[Hit], words: dict[str, str]) -> set[str]:
    """The machines a text may name: the causes', the actions', the cited findings', and those the SOP sections
    and the playbook's own texts name."""
    machines = {c.machine_id for c in analysis.causes} | {a.machine_id for a in analysis.actions}
    machines |= {f.machine_id for f in analysis.findings if f.id in analysis.cited}
    sop = " ".join(h.section.text for h in hits).lower()
    machines |= {m for w, m in words.items() if re.search(rf"\b{w}\b", sop)}
    own = " ".join([analysis.title, analysis.root_cause_text, *analysis.steps, *analysis.safety_notes,
                    *analysis.compliance_notes]).lower()  # the playbook's texts: SOP steps as data
    machines |= {m for w, m in words.items() if re.search(rf"\b{w}\b", own)}
    return machines


def check_prose(texts: dict[str, str], analysis: Analysis, hits: list[Hit], plant: PlantModel) -> list[str]:
    """Why these texts cannot be shown as they are; empty when every claim is grounded."""
    problems: list[str] = []
    allowed = allowed_numbers(analysis, hits)
    words = machine_words(plant, analysis.line_id)
    machines = involved_machines(analysis, hits, words)
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


# --- the same rules as a grammar: text the check would refuse cannot be generated -----------------------------

# Words any operator text needs, whatever the window (no machine names, no change verbs, no numbers).
_COMMON = (
    "a an the is are was were be been being it its this that these those than and or but so as of in on at for "
    "with from into after before since while when because which there their they has have had not no check "
    "inspect keep watch until each all both one high low hot cold above below over under near normal recipe "
    "operator product cookies temperature reading readings value level fault running runs now still again "
    "first then must should can could will may cause causes caused too much little during window line defect defects defective items rate rising falling drifting steady setpoint "
    "showing shows reads read against limit maximum minimum quality process deviation equipment problem issue"
)
COMMON_WORDS = _COMMON.split()  # claims (a faulty sensor, a stopped machine) come only from the analysis' words
# Words that make the check's open-ended or id rules fire; never offered.
EXCLUDED_WORDS = {"more", "least", "previous", "by", "step", "steps", "sop", "urn", "cel", "nu", "grm", "amp",
                  "kwt", "fah", "sec", "c62"}
# After these words a number reads as a target or a change ("to 260 °C", "of 40 °C"): no number may follow them.
TARGET_WORDS = ("to", "at", "from", "of")
TOKEN = re.compile(r"[A-Za-z][A-Za-z0-9']*")
_SYMBOLS = ("°C", "°F", "Nm", "rpm", "%", "m/min", "A", "g", "kW", "mV")


def grounded_vocabulary(analysis: Analysis, hits: Iterable[Hit], plant: PlantModel) -> tuple[set[str], set[str]]:
    """(words, numbers with their unit) a text about this window may use: the words of the analysis, its
    findings and the SOP sections plus common words, less the names of machines the evidence does not involve,
    the change verbs that go against the allowed actions (all of them when no change is allowed), and the
    words the safety rules read as open-ended; numbers only the evidence's and the actions', as written."""
    hits = list(hits)
    words_to_machine = machine_words(plant, analysis.line_id)
    machines = involved_machines(analysis, hits, words_to_machine)
    own = [analysis.title, analysis.summary, analysis.root_cause_text, *analysis.steps, *analysis.safety_notes,
           *(f.description for f in analysis.findings if f.id in analysis.cited or not analysis.cited)]
    words: set[str] = set()
    for text in own:
        words.update(TOKEN.findall(text))
    for hit in hits:  # the SOP's letters only: its zone numbers and ids are other zones' and documents'
        words.update(w for w in TOKEN.findall(hit.section.text) if w.isalpha())
    words.update(COMMON_WORDS)
    directions = {a.direction for a in analysis.actions}

    def allowed(word: str) -> bool:
        low = word.lower()
        stem = low[:-1] if low.endswith("s") else low
        if low in EXCLUDED_WORDS or (words_to_machine.get(low) or words_to_machine.get(stem, "")) not in (
                "", *machines):
            return False
        if UP.fullmatch(low) and "increase" not in directions:
            return False
        if (DOWN.fullmatch(low) or low == "lower") and "decrease" not in directions:
            return False
        return not RAW_UNIT.search(f"1 {word}")

    numbers: set[str] = set()
    for text in [*own, *(f"{a.current:g} {a.value:g}" for a in analysis.actions)]:
        for match in NUMBER.finditer(CLOCK.sub(" ", text)):
            unit = match.group(2) or ""
            if unit in ("C", "F"):
                unit = f"°{unit}"
            numbers.add(match.group(0).strip() if unit in _SYMBOLS else match.group(1))
            if text[match.end():match.end() + 1] == "%":  # "69.0%": no word boundary after % for NUMBER
                numbers.add(match.group(1) + "%")
    kept = {w for w in words if allowed(w)}
    if "lower" not in kept:
        kept.add("lower than")  # a comparison, not a change: the check lets it pass, so may the grammar
    return kept, numbers


def _trie_regex(words: Iterable[str]) -> str:
    """One regex alternation as a prefix tree: a grammar built from it keeps few states per character."""
    trie: dict[str, dict] = {}
    for word in words:
        node = trie
        for char in word:
            node = node.setdefault(char, {})
        node[""] = {}

    def emit(node: dict[str, dict]) -> str:
        parts = []
        for char in sorted(k for k in node if k):
            # a special character as a class: llama.cpp's converter copies "\\." into GBNF, which refuses it
            parts.append((f"[{char}]" if char in ".()*+?|$" else char) + emit(node[char]))
        end = "" in node
        if not parts:
            return ""
        body = parts[0] if len(parts) == 1 else "(" + "|".join(parts) + ")"
        return f"({body})?" if end else body

    return emit(trie)


def text_pattern(words: set[str], numbers: set[str], min_words: int, max_words: int) -> str:
    """A JSON-schema `pattern` for one operator text: chunks of words and numbers from the vocabulary separated by
    a space, a comma or a full stop; a number never right after one of TARGET_WORDS (a chunk that starts with one
    of them ends with another word)."""
    vocabulary = set(words) | {w[0].upper() + w[1:] for w in words} | {w.lower() for w in words if w.isalpha()}
    targets = {w for w in vocabulary if w.lower() in TARGET_WORDS}
    plain = _trie_regex(sorted(vocabulary - targets))
    chunk = plain
    if targets:
        chunk = f"({_trie_regex(sorted(targets))} )+{plain}"
        chunk = f"({plain}|{chunk})"
    if numbers:
        chunk = f"({chunk}|{_trie_regex(sorted(numbers))})"
    return f"^{chunk}((, |[.] | ){chunk}){{{max(0, min_words - 1)},{max_words - 1}}}[.]?$"
