"""The same recipe under `accelerate launch` with 2 CPU processes (gloo) trains with the same global batch
and lands where one process does.

Tolerance: final validation loss within 0.05 and accuracy within 2 of 24 examples. The two runs see the
same global batches in the same order from the same initial weights; they differ only in dropout masks
(each process draws its own) and floating-point summation order, so the curves track closely but not
bit-for-bit.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.slow


def test_two_processes_match_one(tmp_path, make_recipe):
    from tuneforge.recipe import resolved_dict

    recipe = make_recipe()
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(resolved_dict(recipe)))
    bindir = Path(sys.executable).parent
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    one = subprocess.run([str(bindir / "tuneforge"), "run", str(path), "name=one"], capture_output=True,
                         text=True, env=env, timeout=600)
    assert one.returncode == 0, one.stderr[-3000:]
    # --multi_gpu selects torchrun; on a machine without CUDA every process runs on CPU over gloo
    two = subprocess.run([str(bindir / "accelerate"), "launch", "--multi_gpu", "--num_processes", "2",
                          "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                          "-m", "tuneforge.cli", "run", str(path), "name=two"],
                         capture_output=True, text=True, env=env, timeout=600)
    assert two.returncode == 0, two.stderr[-3000:]
    runs = recipe.output_dir
    m1 = json.loads((runs / "one" / "result.json").read_text())
    m2 = json.loads((runs / "two" / "result.json").read_text())
    assert json.loads((runs / "two" / "manifest.json").read_text())["hardware"]["world_size"] == 2
    assert "global batch 16 x 1 accumulation, 2 process(es)" in two.stderr
    assert m1["global_step"] == m2["global_step"] == 36
    last1, last2 = m1["history"][-1], m2["history"][-1]
    assert abs(last1["loss"] - last2["loss"]) < 0.05
    assert abs(last1["accuracy"] - last2["accuracy"]) <= 2 / 24 + 1e-9
