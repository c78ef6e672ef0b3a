"""The registration form bundled with each unit (PDF): what the policy's hardware data is for.

It carries the VPNID in large type and as a QR code, the model, the motherboard serial, the MAC
address, the boot and rip drive serials and the manufacturing date, all from the enrolment.  The
dealer's and the owner's fields are left blank: they are filled in on paper and the registry
never stores them (the policy: "432 EVO will not ... store this data in a central database").
"""

from __future__ import annotations

import io
import json
from collections.abc import Sequence
from typing import Any

from evo_registry.db import Row, parse_utc

_BLANKS = ("Dealer", "Dealer address", "Date of sale", "Owner", "Owner address",
           "Owner e-mail", "Signature")


def _value(value: Any) -> str:
    return str(value) if value not in (None, "") else "-"


def render(device: Row) -> bytes:
    """Return the PDF of one enrolled device's registration form."""
    return render_batch([device], f"432 EVO registration form {device['vpnid']}")


def render_batch(devices: Sequence[Row], title: str) -> bytes:
    """Return one PDF holding the registration forms of several devices, a page each."""
    from reportlab.lib.pagesizes import A4
    from reportlab.pdfgen import canvas

    buf = io.BytesIO()
    pdf = canvas.Canvas(buf, pagesize=A4, pageCompression=1, invariant=1)
    pdf.setTitle(title)
    pdf.setAuthor("432 EVO")
    for device in devices:
        _page(pdf, device)
    pdf.save()
    return buf.getvalue()


def _page(pdf: Any, device: Row) -> None:
    """Draw one device's form on the next page."""
    from reportlab.graphics import renderPDF
    from reportlab.graphics.barcode.qr import QrCodeWidget
    from reportlab.graphics.shapes import Drawing
    from reportlab.lib.pagesizes import A4
    from reportlab.lib.units import mm

    report = json.loads(device["enrolment_report"])
    hw = report.get("hardware") or {}
    vpnid = str(device["vpnid"])
    width, height = A4
    left = 20 * mm
    y = height - 25 * mm
    pdf.setFont("Helvetica-Bold", 16)
    pdf.drawString(left, y, "432 EVO - Registration form")
    y -= 22 * mm
    pdf.setFont("Helvetica-Bold", 34)
    pdf.drawString(left, y, vpnid)
    pdf.setFont("Helvetica", 9)
    pdf.drawString(left, y - 6 * mm, "VPNID (serial number: also on the product and its box)")

    # The QR code holds the VPNID alone, so a phone or a scanner reads back exactly the serial.
    size = 45 * mm
    qr = QrCodeWidget(vpnid, barLevel="M")
    x0, y0, x1, y1 = qr.getBounds()
    drawing = Drawing(size, size, transform=[size / (x1 - x0), 0, 0, size / (y1 - y0), 0, 0])
    drawing.add(qr)
    renderPDF.draw(drawing, pdf, width - left - size, height - 20 * mm - size)

    y -= 22 * mm
    made = parse_utc(str(device["manufactured_at"])).strftime("%Y-%m-%d")
    rows = [
        ("Model", _value(device.get("model") or "432 EVO")),
        ("Motherboard", _value(" ".join(str(v) for v in (
            (hw.get("motherboard") or {}).get("vendor"),
            (hw.get("motherboard") or {}).get("model")) if v))),
        ("Motherboard serial", _value((hw.get("motherboard") or {}).get("serial"))),
        ("MAC address", _value(hw.get("mac_address"))),
        ("Boot drive serial", _value((hw.get("boot_drive") or {}).get("serial"))),
        ("Rip drive serial", _value((hw.get("rip_drive") or {}).get("serial"))),
        ("Manufacturing date", made),
        ("PSU", _value(device.get("psu_variant"))),
    ]
    for label, value in rows:
        pdf.setFont("Helvetica", 11)
        pdf.drawString(left, y, f"{label}:")
        pdf.setFont("Helvetica-Bold", 11)
        pdf.drawString(left + 45 * mm, y, value[:80])
        y -= 8 * mm
    y -= 6 * mm
    pdf.setFont("Helvetica-Bold", 12)
    pdf.drawString(left, y, "To be filled in by the dealer and the owner (not stored by 432 EVO)")
    y -= 10 * mm
    pdf.setFont("Helvetica", 11)
    for label in _BLANKS:
        pdf.drawString(left, y, f"{label}:")
        pdf.line(left + 40 * mm, y - 1 * mm, width - left, y - 1 * mm)
        y -= 11 * mm
    pdf.setFont("Helvetica", 8)
    pdf.drawString(left, 15 * mm, "Keep this form: it is needed for support and warranty claims.")
    pdf.showPage()
