"""`failclosed reproduce`: the documented experiment grid (baselines, the method's, the paper's and this
project's recipes; several training seeds; validation measurements that choose the default recipe; audits
and attacks), run resumably into small JSON results files, and the results page generated from those files."""

from failclosed_interp.reproduce.grid import Experiment, GridConfig, build_grid
from failclosed_interp.reproduce.page import render_results, write_results_page
from failclosed_interp.reproduce.runner import format_status, grid_status, run_grid

__all__ = ["Experiment", "GridConfig", "build_grid", "format_status", "grid_status", "render_results", "run_grid", "write_results_page"]
