"""The module paths of the layout before issue 14 keep working for one release: each old path is
the new module itself (same classes, same registries) and warns once (FutureWarning).
move_layout: keep (this file names the old paths on purpose)."""

import subprocess
import sys

CODE = """
import warnings
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    import textkd.modeling.heads as old_heads
    from textkd.modeling import segmentor as old_segmentor
    from textkd.modeling.segmentor import build_segmentor
    import textkd.modeling.heads  # a second import does not warn again
import textkd.models.heads
import textkd.models.segmentor
assert old_heads is textkd.models.heads
assert old_segmentor is textkd.models.segmentor
assert build_segmentor is textkd.models.segmentor.build_segmentor
msgs = [str(w.message) for w in caught if issubclass(w.category, FutureWarning)]
for name in ("textkd.modeling.heads", "textkd.modeling.segmentor"):
    assert sum(m.startswith(name + " is deprecated") for m in msgs) == 1, msgs
assert any("import textkd.models.heads" in m for m in msgs), msgs
assert "detectron2" not in sys.modules
"""


def test_old_core_paths_alias_the_new_modules():
    proc = subprocess.run(
        [sys.executable, "-c", "import sys\n" + CODE], capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
