"""Write MAN-CONV-006.pdf, the cooling conveyor manual, with a minimal PDF writer (no dependencies).

Run `python examples/cookie-line/docs/make_pdf.py` after editing the text below. The PDF uses the standard
Helvetica fonts (no embedding), one text line per `Tj`, so any PDF reader (and pypdf's text extraction) reads it.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

DOC_ID = "MAN-CONV-006"
TITLE = "Cooling conveyor: operation, stops and chiller faults"

# (heading, paragraphs); the heading's number is the section id the retriever cites.
SECTIONS: list[tuple[str, list[str]]] = [
    ("1. Description", [
        "The cooling conveyor (urn:ngsi-ld:Machine:line1-cooling-conveyor) carries cookies from the oven exit to the "
        "cookie detector over 9 m at 3 m/min (about 3 minutes). A chiller blows conditioned air over the belt; the "
        "air setpoint is 19 C and the normal air temperature range is 15-25 C. The belt speed setpoint may be set "
        "between 2 and 4 m/min in steps of at most 0.5 m/min.",
    ]),
    ("2. Conveyor stop and drive trip", [
        "When the drive trips (motor overload, a jam at the transfer plate, an open guard interlock) the conveyor "
        "state becomes fault, the belt speed falls to 0 m/min and a critical 'stopped' alarm is raised. Cookies "
        "leaving the oven are diverted to the scrap bin, so none reach the detector: the detector goes silent, "
        "items_per_minute falls to zero and packaging makes no packs.",
        "A stopped conveyor is the root cause of a silent detector. Do not change oven or mixer setpoints.",
    ]),
    ("3. Restarting after a trip", [
        "1. Lock out and tag out the conveyor drive (LOTO) before reaching into the conveyor.",
        "2. Check the transfer plates and the belt for a jam, broken product or a foreign body; close every guard.",
        "3. Reset the motor overload relay at the conveyor panel.",
        "4. Remove the lockout and start the conveyor again through the line controller (start command).",
        "5. Confirm that cookies reach the detector again within 4 minutes and that the stopped alarm clears.",
    ]),
    ("4. Chiller over-cooling and cracked cookies", [
        "If the chiller's control fails cold, the air over the belt falls well below 15 C (to about 5 C). Cookies "
        "cooled that fast crack from thermal shock: cracked cookies rise at the detector from below 1% to most of "
        "the product. No line setpoint compensates for it: the oven and mixer settings are not the cause.",
        "Call maintenance to reset the chiller to its 19 C air setpoint and check the expansion valve and the "
        "air temperature sensor. Refrigerant circuits are serviced by certified technicians only.",
    ]),
    ("5. Food safety", [
        "Product diverted during a stop or cracked by over-cooling must not be packed. Record the stop, its cause "
        "and the quantity scrapped in the shift log.",
    ]),
]


def _escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")


def _lines() -> list[tuple[str, str]]:
    """(font, text) per output line."""
    out: list[tuple[str, str]] = [("F2", f"{DOC_ID} {TITLE}"), ("F1", "")]
    for heading, paragraphs in SECTIONS:
        out.append(("F2", heading))
        for paragraph in paragraphs:
            out += [("F1", line) for line in textwrap.wrap(paragraph, 95)]
            out.append(("F1", ""))
    return out


def build_pdf() -> bytes:
    lines = _lines()
    per_page = 60
    pages = [lines[i:i + per_page] for i in range(0, len(lines), per_page)]
    objects: list[bytes] = []

    def add(body: bytes) -> int:
        objects.append(body)
        return len(objects)

    catalog = add(b"")  # filled below
    pages_id = add(b"")
    font_regular = add(b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica /Encoding /WinAnsiEncoding >>")
    font_bold = add(b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica-Bold /Encoding /WinAnsiEncoding >>")
    kids = []
    for page_lines in pages:
        ops = ["BT", "/F1 10 Tf", "13 TL", "50 800 Td"]
        for font, text in page_lines:
            ops.append(f"/{font} {11 if font == 'F2' else 10} Tf ({_escape(text)}) Tj T*")
        ops.append("ET")
        stream = "\n".join(ops).encode("latin-1")
        content = add(b"<< /Length %d >>\nstream\n" % len(stream) + stream + b"\nendstream")
        kids.append(add(
            b"<< /Type /Page /Parent %d 0 R /MediaBox [0 0 595 842] /Contents %d 0 R "
            b"/Resources << /Font << /F1 %d 0 R /F2 %d 0 R >> >> >>" % (pages_id, content, font_regular, font_bold)))
    objects[catalog - 1] = b"<< /Type /Catalog /Pages %d 0 R >>" % pages_id
    objects[pages_id - 1] = b"<< /Type /Pages /Kids [%s] /Count %d >>" % (
        b" ".join(b"%d 0 R" % k for k in kids), len(kids))
    info = add(b"<< /Title (%s) /Subject (%s) >>" % (_escape(f"{DOC_ID} {TITLE}").encode("latin-1"),
                                                      DOC_ID.encode()))
    out = bytearray(b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % number + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % o for o in offsets)
    out += b"trailer\n<< /Size %d /Root %d 0 R /Info %d 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (
        len(objects) + 1, catalog, info, xref)
    return bytes(out)


if __name__ == "__main__":
    target = Path(__file__).with_name(f"{DOC_ID}.pdf")
    target.write_bytes(build_pdf())
    print(target, target.stat().st_size, "bytes")
