"""`rlp view`: a run as one self-contained HTML page (page.py writes and serves it; data.py reads
the run directory and cuts it to a page-sized budget; assets/ holds the template, the script and
the vendored Chart.js)."""

from rl_pipeline.view.page import serve, write_page

__all__ = ["serve", "write_page"]
