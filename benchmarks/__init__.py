"""TextKD benchmarks, outside the library: ``tools/benchmark.py`` and the tests import them
(the repository root on ``sys.path``, as ``tools/benchmark.py`` and ``tests/conftest.py`` put it).

* :mod:`benchmarks.measure`: timing (``torch.utils.benchmark``), memory, the loss
  micro-benchmarks, tables and the JSON report layout of ``tools/benchmark.py``;
* :mod:`benchmarks.reference`: the loop reference implementations of IFVD, CIRKD, SKD and the
  LAD label noising that the tests and the micro-benchmarks compare the vectorised losses with.
"""
