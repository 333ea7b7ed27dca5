"""A built-in demo data set: synthetic chest radiographs with matching radiology reports.

Nothing is downloaded or read: item i is a pure function of (seed, offset + i). Images follow
the radiological convention: the patient's right is on the image's left (columns < W/2) and
the patient's left on the image's right. "Left" and "right" in a report always mean the
patient's side. Every finding named in a report is drawn in the image.
"""

from vlp.data.demo.dataset import DemoDataset, demo_reports
from vlp.data.demo.findings import (
    NORMAL_FRACTION,
    SIDES,
    ZONES,
    Device,
    Effusion,
    Findings,
    Nodule,
    Opacity,
    sample_findings,
)
from vlp.data.demo.render import render_chest
from vlp.data.demo.reports import write_report

__all__ = ["NORMAL_FRACTION", "SIDES", "ZONES", "DemoDataset", "Device", "Effusion", "Findings",
           "Nodule", "Opacity", "demo_reports", "render_chest", "sample_findings",
           "write_report"]
