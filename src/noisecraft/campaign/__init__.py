"""Campaigns: on-brand pictures and layouts made from a CSV plan, signed when asked, with a contact sheet.

    maker = Maker(pipe, kit=load_kit("trattoria/"), sign=True)
    outcome = run_campaign("week.csv", "campaign/", maker)

    plan.py    the CSV plan's rows
    making.py  Maker: one picture or layout, on brand, written (and signed)
    run.py     the runner: resume, manifest.json, contact sheet, ZIP
    sheet.py   the contact sheet
"""

from .making import Maker, Piece, compose_piece, needs_redraw, piece_bytes, request_for, slot_size, write_piece
from .plan import Item, read_plan
from .run import Outcome, make_item, run_campaign
from .sheet import contact_sheet

__all__ = ["Item", "Maker", "Outcome", "Piece", "compose_piece", "needs_redraw", "piece_bytes", "contact_sheet", "make_item", "read_plan", "request_for", "run_campaign", "slot_size",
           "write_piece"]
