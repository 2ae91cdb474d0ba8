"""What a person reads: Markdown reports and PNG plots.

- :mod:`deft.report.common`: Markdown tables, number formatting, atomic PNG saves.
- :mod:`deft.report.prune`: the prune report (score distribution with strata, coverage, score agreement, costs).
- :mod:`deft.report.experiment`: the experiment report (verdict, quality and cost, bootstrap, ledger, plots).
- :mod:`deft.report.tuning`: the λ-tuning plot (validation quality against λ).

Every function takes plain data (numpy arrays, DataFrames, dicts), writes at most one file, and returns a
Markdown snippet or a table.
"""

from deft.report.common import fmt, markdown_table, save_figure, spearman
from deft.report.experiment import (
    comparison_table,
    experiment_table,
    plot_cost_by_arm,
    plot_metric_by_arm,
    plot_metric_by_budget,
    selection_images,
    status_lines,
    verdict,
    write_experiment_report,
)
from deft.report.prune import (
    coverage_table,
    plot_coverage,
    plot_score_agreement,
    plot_score_distribution,
    plot_stage_costs,
    popularity_deciles,
    prune_report_markdown,
    score_agreement,
    write_prune_report,
)

__all__ = [
    "comparison_table", "coverage_table", "experiment_table", "fmt", "markdown_table", "plot_cost_by_arm",
    "plot_coverage", "plot_metric_by_arm", "plot_metric_by_budget", "plot_score_agreement", "plot_score_distribution", "plot_stage_costs",
    "popularity_deciles", "prune_report_markdown", "save_figure", "score_agreement", "selection_images", "spearman", "status_lines",
    "verdict", "write_experiment_report", "write_prune_report",
]
