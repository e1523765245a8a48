"""Evaluation: score files of predictions, whoever made them (never imports coders or training).

* :mod:`metrics` - every metric, defined once, over a sparse :class:`ScoreMatrix`;
* :mod:`thresholds` - global / per-code thresholds tuned on validation;
* :mod:`bootstrap` - paired bootstrap over notes between two coders;
* :mod:`analysis` - error analysis (per-code table, missed / spurious codes, near misses);
* :mod:`report` - Markdown + self-contained HTML comparison of runs;
* :mod:`protocol` - ``evaluate`` / ``evaluate_files``: the one entry that ties them together.
"""

from icdcoder.evaluation.analysis import error_analysis, relation
from icdcoder.evaluation.bootstrap import paired_bootstrap
from icdcoder.evaluation.metrics import ScoreMatrix, all_metrics, pr_curve
from icdcoder.evaluation.protocol import (align, build_matrix, evaluate, evaluate_files, evaluate_matrix,
                                          stored_thresholds, tune_thresholds)
from icdcoder.evaluation.report import RunData, compare, compare_runs
from icdcoder.evaluation.thresholds import Thresholds, tune_global, tune_per_code

__all__ = [
    "RunData", "ScoreMatrix", "Thresholds", "align", "all_metrics", "build_matrix", "compare", "compare_runs",
    "error_analysis", "evaluate", "evaluate_files", "evaluate_matrix", "paired_bootstrap", "pr_curve", "relation",
    "stored_thresholds", "tune_global", "tune_per_code", "tune_thresholds",
]
