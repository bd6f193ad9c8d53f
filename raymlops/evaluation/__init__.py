"""Model evaluation and validation: metrics per split and slice, and checks that a package runs in a fresh process.

``raymlops.evaluation.evaluate`` predicts with a loaded package on Ray Data (or in-process for small tables) and
scores the predictions with ``raymlops.core.metrics``; ``raymlops.evaluation.infra_check`` loads a package in a
separate Python process and reports load time, peak memory and whether it predicts with the expected shape. The
blessing decision itself is pure: ``raymlops.core.blessing.bless``.
"""
