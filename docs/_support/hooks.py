"""MkDocs hooks: settings for the examples executed while the site is built.

The worked examples and the guide's code blocks run (markdown-exec) in the process that builds
the site. Before the first page is rendered, this sets what their printed output depends on:
pandas' display width (tables print whole rather than elided with ``...``), matplotlib's
non-interactive backend, and a filter for PyTensor's BLAS notice. Nothing else: the examples
use the package's defaults, including its compile cache (``PYMC_MIXVCOV_CACHE``).
"""

from __future__ import annotations

import time
import warnings

_START = time.perf_counter()


def on_startup(**kwargs) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import pandas as pd

    pd.set_option("display.width", 160)
    pd.set_option("display.max_columns", 30)
    pd.set_option("display.max_colwidth", 60)
    warnings.filterwarnings("ignore", message="PyTensor could not link to a BLAS")


_page_start: dict[str, float] = {}


def on_page_markdown(markdown, page, **kwargs):
    _page_start[page.file.src_uri] = time.perf_counter()
    return markdown


def on_page_content(html, page, **kwargs):
    """Log the pages whose executed examples take a while (markdown-exec runs while they render)."""
    import logging

    seconds = time.perf_counter() - _page_start.pop(page.file.src_uri, time.perf_counter())
    if seconds >= 2.0:
        logging.getLogger("mkdocs").info("pymc_mixvcov docs: %s rendered in %.0f s", page.file.src_uri, seconds)
    return html


def on_post_build(config, **kwargs) -> None:
    import logging

    logging.getLogger("mkdocs").info("pymc_mixvcov docs: built in %.0f s", time.perf_counter() - _START)
