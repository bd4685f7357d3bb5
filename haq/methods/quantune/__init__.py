"""``quantune``: an XGBoost surrogate over quantization configurations (Quantune).

* :mod:`.method` - the search loop on a real model and its ``SPEC``.
* :mod:`.space` - the configuration space and its one-hot encoding.
* :mod:`.arch` - the 8 architecture features of a model.
* :mod:`.surrogate` - the XGBoost surrogate and the selection rule.
* :mod:`.table` - the format of measured-configuration tables (warm starts).
* :mod:`.published` - the paper's experiment rerun on its measured table (reproduction).
"""

from haq.methods.quantune.method import SPEC, QuantuneOptions, run_quantune

__all__ = ["SPEC", "QuantuneOptions", "run_quantune"]
