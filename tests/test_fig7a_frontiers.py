"""benchmarks/fig7a_frontiers.py: speeds from one peer run replace each analysis' own."""

import importlib.util
import json
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "fig7a_frontiers.py"


def _script():
    spec = importlib.util.spec_from_file_location("fig7a_frontiers", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_speeds_from_one_peer_run(tmp_path):
    fig = _script()
    analysis = tmp_path / "analysis.json"
    points = [{"rho": 1.0, "miou": 0.6, "images_per_s": 20.0}, {"rho": 0.985, "miou": 0.59, "images_per_s": 22.0},
              {"rho": 0.9, "miou": 0.55, "images_per_s": 25.0}]
    analysis.write_text(json.dumps({"fig7a": {"points": points, "dense_images_per_s": 19.0}}))
    peer = tmp_path / "peer.json"
    peer.write_text(json.dumps({"rows": [
        {"model": "keras-hub DeepLabV3+ (ResNet-18-like)", "images_per_s": 3.0},
        {"model": "m.keras dense", "images_per_s": 10.0}, {"model": "m.keras rho 1", "images_per_s": 10.5},
        {"model": "m.keras rho 0.985", "images_per_s": 11.0}]}))
    (own,) = fig.frontier_curves([f"A={analysis}"])
    assert [q["images_per_s"] for q in own[1]] == [20.0, 22.0, 25.0] and own[2] == 19.0 and own[3] == 0.6
    timed = {r["model"]: r["images_per_s"] for r in json.loads(peer.read_text())["rows"]}
    (one_run,) = fig.frontier_curves([f"A={analysis}@m.keras"], timed)
    # the peer run's images/s; ρ 0.9, not timed in that run, is left out; the dense mIoU stays ρ 1's
    assert [(q["rho"], q["images_per_s"]) for q in one_run[1]] == [(1.0, 10.5), (0.985, 11.0)]
    assert one_run[2] == 10.0 and one_run[3] == 0.6
    with pytest.raises(ValueError, match=r"m\.keras"):
        fig.frontier_curves([f"A={analysis}"], timed)  # no @ROW
    assert fig.main([f"A={analysis}@m.keras", "--speeds", str(peer), "--out", str(tmp_path / "f.png")]) == 0
    assert (tmp_path / "f.png").stat().st_size > 1000
