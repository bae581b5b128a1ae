"""One self-contained HTML page: every image embedded as a data URI, written atomically."""

from __future__ import annotations

import base64
import html
import os
import platform
from pathlib import Path
from typing import Any

from lapo.checkpoint import atomic_write_bytes


def data_uri(path: Path) -> str:
    """``data:`` URI of an image file (png or gif)."""
    mime = "image/gif" if str(path).endswith(".gif") else "image/png"
    return f"data:{mime};base64," + base64.b64encode(Path(path).read_bytes()).decode()


def machine() -> str:
    """One line describing where this ran."""
    import torch

    cpu = platform.processor() or platform.machine()
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return (
        f"{platform.system()} {platform.machine()} ({cpu}), {os.cpu_count()} CPU cores, {gpu}; "
        f"Python {platform.python_version()}, torch {torch.__version__}"
    )


def table(rows: list[list[Any]], header: list[str]) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>" for r in rows
    )
    return f"<table><tr>{head}</tr>{body}</table>"


CSS = """
body { font-family: system-ui, sans-serif; max-width: 1100px; margin: 2em auto; color: #222; }
h1 { font-size: 1.6em; } h2 { border-bottom: 1px solid #ccc; padding-bottom: .2em; }
table { border-collapse: collapse; margin: .5em 0 1em; }
td, th { border: 1px solid #ccc; padding: .25em .6em; text-align: left; font-size: .92em; }
th { background: #f3f3f3; } img { max-width: 100%; } .note { color: #555; font-size: .92em; }
pre { background: #f7f7f7; padding: .6em; overflow-x: auto; font-size: .85em; }
"""


def write_html(path: Path, title: str, sections: list[tuple[str, str]]) -> None:
    """Write ``sections`` (heading, HTML body) as one page; atomically."""
    parts = [
        f"<h2 id='{h.lower().replace(' ', '-')}'>{html.escape(h)}</h2>\n{b}" for h, b in sections
    ]
    doc = (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"<style>{CSS}</style></head><body><h1>{html.escape(title)}</h1>\n"
        + "\n".join(parts)
        + "</body></html>\n"
    )
    atomic_write_bytes(Path(path), doc.encode())


def img(uri: str, alt: str) -> str:
    return f"<img src='{uri}' alt='{html.escape(alt)}'>"
