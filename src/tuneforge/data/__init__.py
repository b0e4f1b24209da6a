"""The data stage: raw files in, a validated, deduplicated, PII-scrubbed, split dataset out."""

from tuneforge.data._html import render_html
from tuneforge.data._inspect import Inspection, Sample, inspect_dataset
from tuneforge.data._prepare import PreparedDataset, prepare
from tuneforge.data._render import Rendered, render_chat, render_row
from tuneforge.data._types import REASONS, RejectReason

__all__ = [
    "REASONS",
    "Inspection",
    "PreparedDataset",
    "RejectReason",
    "Rendered",
    "Sample",
    "inspect_dataset",
    "prepare",
    "render_chat",
    "render_html",
    "render_row",
]
