import json

import keras
import numpy as np
import pytest
from conftest import SMALL

from keras_lc import build_model
from keras_lc.analysis import boundary_mask, difficulty_split, stage_share_ratios
from keras_lc.benchmark import (
    benchmark_cascade,
    blob_region,
    crossover_from_ratios,
    format_benchmark,
    measure_crossover,
    stage_times,
)
from keras_lc.cli import main
from keras_lc.viz import DARK_EARLIER, GREY_FORWARDED, cascade_panel_array, palette


def test_boundary_mask():
    truth = np.zeros((1, 6, 6), int)
    truth[0, :, 3:] = 1
    b = boundary_mask(truth, width=1)[0]
    assert b[:, 2:4].all() and not b[:, :2].any() and not b[:, 4:].any()
    assert boundary_mask(truth, width=2)[0][:, 1:5].all()


def test_difficulty_split_known_case():
    truth = np.array([[[0, 0, 0, 1, 1, 1]]])
    pred = np.array([[[0, 0, 1, 1, 0, 1]]])
    conf = np.array([[[0.99, 0.5, 0.99, 0.97, 0.2, 0.99]]])
    r = difficulty_split(conf, pred, truth, num_classes=2, threshold=0.95, boundary_width=1)
    # class 0: easy (0), moderate (1), extremely hard (2: wrong but sure); class 1: easy 3 and 5, moderate 4
    assert r["counts"] == {"easy": [1, 2], "moderate": [1, 1], "extremely_hard": [1, 0]}
    assert r["share"]["easy"] == pytest.approx([1 / 3, 2 / 3])
    assert r["total_share"]["extremely_hard"] == pytest.approx(1 / 6)
    assert r["hard_on_boundary"] == 1.0  # pixel 2 is next to the 0|1 change
    assert r["pixels_on_boundary"] == pytest.approx(2 / 6)


def test_difficulty_split_ignores_void():
    truth = np.array([[[0, 9, 9]]])
    r = difficulty_split(np.ones((1, 1, 3)), np.zeros((1, 1, 3), int), truth, num_classes=2, ignore_class=9)
    assert r["counts"]["easy"] == [1, 0] and r["hard_on_boundary"] is None


def test_stage_share_ratios():
    r = stage_share_ratios({"a": [0.5, 0.25, 0.25], "b": [1.0, 0.0, 0.0]})
    assert r["a"] == {"stage2_over_stage1": 0.5, "stage3_over_stage2": 1.0}
    assert r["b"] == {"stage2_over_stage1": 0.0, "stage3_over_stage2": None}


def test_panel_greys_out_undecided_pixels():
    k = 3
    stage = np.array([[1, 2], [3, 3]], np.uint8)
    probs = np.zeros((2, 2, k), np.float32)
    probs[..., 2] = 1.0
    outputs = {"stage": stage, "labels": np.full((2, 2), 2), "stage1": probs, "stage2": probs, "stage3": probs}
    tiles = dict(cascade_panel_array(np.zeros((2, 2, 3), np.uint8), outputs, k, truth=np.zeros((2, 2), int)))
    s1, s2, s3 = tiles["stage 1 (25.0% decided)"], tiles["stage 2 (25.0% decided)"], tiles["stage 3 (50.0% decided)"]
    colour2 = palette(k)[2]
    assert (s1[0, 0] == colour2).all() and (s1[1, 1] == GREY_FORWARDED).all()
    assert (s2[0, 0] == DARK_EARLIER).all() and (s2[0, 1] == colour2).all() and (s2[1, 0] == GREY_FORWARDED).all()
    assert (s3[1, 0] == colour2).all() and (s3[0, 1] == DARK_EARLIER).all()
    assert "ground truth" in tiles and "deciding stage" in tiles


def test_benchmark_and_stage_times_shapes(small_model, images):
    r = benchmark_cascade(small_model, images, rhos=[1.0, 1e-6], repeats=1, warmup=1)
    assert r["dense"]["images_per_s"] == pytest.approx(2 / r["dense"]["seconds"])  # images has a batch of 2
    assert [c["rho"] for c in r["cascade"]] == [1.0, 1e-6]
    assert r["cascade"][0]["stage_share"] == pytest.approx([0, 0, 1])
    assert r["cascade"][1]["stage_share"] == pytest.approx([1, 0, 0])
    assert "vs dense" in format_benchmark(r) and "ideal" in format_benchmark(r)
    # ρ ≈ 0 decides everything at stage 1: its ideal is the whole dense time over stage 1's, more than ρ = 1's
    assert r["cascade"][1]["ideal_speedup"] > r["cascade"][0]["ideal_speedup"]
    assert "ideal" not in format_benchmark(benchmark_cascade(small_model, images, rhos=[1.0], repeats=1, ideal=False))
    t = stage_times(small_model, images, rho=1e-6, repeats=1, warmup=0)
    assert t["stage_share"] == pytest.approx([1, 0, 0])
    # ρ as a tensor (the SavedModel path): one graph, the same decisions as Python ρ
    rt = benchmark_cascade(small_model, images, rhos=[1.0, 1e-6], repeats=1, warmup=0, ideal=False, tensor_rho=True)
    assert [c["stage_share"] for c in rt["cascade"]] == [c["stage_share"] for c in r["cascade"]]
    assert "as a tensor" in format_benchmark(rt) and "Python number" in format_benchmark(r)
    with pytest.raises(ValueError, match="rho"):
        benchmark_cascade(small_model, images, rhos=[0.0])


def test_benchmark_counts_the_cells_a_halo_computes(small_model, images):
    from keras_lc.layers.region_index import grow_region

    rho = 0.5  # the untrained model forwards about a third of the cells at this ρ: regions a halo grows
    halo = small_model.halo
    try:
        r0 = benchmark_cascade(small_model, images, rhos=[rho], repeats=1, warmup=0)
        regions = small_model.forward_details(images, rho=rho, dense=False)["regions"]
        reach = [float(np.mean(regions[k])) for k in (1, 2)]
        small_model.halo = 1
        r1 = benchmark_cascade(small_model, images, rhos=[rho], repeats=1, warmup=0)
        regions = small_model.forward_details(images, rho=rho, dense=False)["regions"]  # stage 2 differs with a halo
        grown = [float(np.mean(grow_region(regions[k], 1))) for k in (1, 2)]
    finally:
        small_model.halo = halo
    assert 0 < reach[1] < 1 and grown[0] > reach[0]
    assert r0["cascade"][0]["computed"] == pytest.approx(reach, abs=1e-6)
    assert r1["cascade"][0]["computed"] == pytest.approx(grown, abs=1e-6)
    assert r0["cascade"][0]["ideal_halo_speedup"] == pytest.approx(r0["cascade"][0]["ideal_speedup"])
    assert r1["cascade"][0]["ideal_halo_speedup"] < r1["cascade"][0]["ideal_speedup"]
    assert "ideal halo" in format_benchmark(r1) and "ideal halo" not in format_benchmark(r0)


def test_visualize_analyze_bench_cli(tmp_path, capsys):
    model = build_model("tiny", num_classes=3, rho=0.6, ignore_class=3, **SMALL)
    path = tmp_path / "m.keras"
    model.save(path)
    main(["visualize", str(path), "--out", str(tmp_path / "vis"), "--num-images", "2", "--image-size", "32",
          "--tensorboard", str(tmp_path / "tb")])
    pngs = list((tmp_path / "vis").glob("*.png"))
    assert len(pngs) == 2 and all(p.stat().st_size > 1000 for p in pngs)
    assert any((tmp_path / "tb").rglob("*tfevents*"))
    main(["analyze", str(path), "--out", str(tmp_path / "ana"), "--num-images", "4", "--image-size", "32",
          "--rhos", "1.0", "0.5", "--repeats", "1"])
    for name in ("fig1b_difficulty", "fig5_stage_share", "fig7a_tradeoff", "fig7b_stage_time"):
        assert (tmp_path / "ana" / f"{name}.png").stat().st_size > 1000
    result = json.loads((tmp_path / "ana" / "analysis.json").read_text())
    assert [p["rho"] for p in result["fig7a"]["points"]] == [1.0, 0.5]
    assert set(result["fig5"]["ratios"]) == {"background", "ellipse", "box"}
    main(["bench", str(path), "--height", "32", "--width", "32", "--rho", "1.0", "0.5", "--repeats", "1",
          "--json", str(tmp_path / "b.json")])
    assert "vs dense" in capsys.readouterr().out
    assert set(json.loads((tmp_path / "b.json").read_text())) >= {"dense", "cascade"}


def test_ideal_speedup_and_crossover_of_hand_built_tables():
    from keras_lc.benchmark import ideal_speedup

    stages = {"stage1": 0.2, "stage2": 0.3, "stage3": 0.5}  # a dense pass of 1.0 s
    assert ideal_speedup(stages, [0.0, 0.0, 1.0]) == pytest.approx(1.0)
    assert ideal_speedup(stages, [1.0, 0.0, 0.0]) == pytest.approx(5.0)
    assert ideal_speedup(stages, [0.5, 0.25, 0.25]) == pytest.approx(1 / (0.2 + 0.5 * 0.3 + 0.25 * 0.5))
    # with a halo the cells computed replace the shares reaching stages 2-3
    assert ideal_speedup(stages, [0.5, 0.25, 0.25], computed=[0.8, 0.6]) == pytest.approx(
        1 / (0.2 + 0.8 * 0.3 + 0.6 * 0.5))
    # stage times that sum to more than a dense pass (each a separate call) give the same ratios: ρ = 1 is 1
    slow = {k: 1.4 * v for k, v in stages.items()}
    assert ideal_speedup(slow, [0.0, 0.0, 1.0]) == pytest.approx(1.0)
    assert ideal_speedup(slow, [0.5, 0.25, 0.25]) == pytest.approx(ideal_speedup(stages, [0.5, 0.25, 0.25]))
    assert crossover_from_ratios([0.3, 0.5, 0.7, 1.0], [0.5, 0.8, 1.2, 1.5]) == pytest.approx(0.6)
    assert crossover_from_ratios([0.3, 0.5], [1.1, 1.3]) == 0.3  # never wins: the smallest fraction
    assert crossover_from_ratios([0.3, 1.0], [0.4, 0.9]) == 1.0  # always wins


def test_blob_regions_cover_the_fraction_per_image():
    region = blob_region((3, 40, 50), 0.3, seed=1)
    assert region.shape == (3, 40, 50) and region.dtype == bool
    np.testing.assert_allclose(region.mean(axis=(1, 2)), 0.3, atol=0.01)
    assert not (region[0] == region[1]).all()  # each image its own blob
    assert blob_region((1, 4, 4), 1.0).all()


def test_measure_crossover_and_the_threshold_it_sets(small_model, images, tmp_path, capsys):
    r = measure_crossover(small_model, images, fractions=(0.5, 0.25, 1.0), repeats=1, warmup=0)
    assert r["fractions"] == [0.25, 0.5, 1.0] and len(r["ratio"]) == 3
    # each stage's ratio is judged against fraction + 0.1 from 30% up, and not below
    for k in ("stage2", "stage3"):
        ratios, within = r["stage_ratio"][k], r["within_target"][k]
        assert within[0] is None and within[1:] == [ratios[1] <= 0.6, ratios[2] <= 1.1]
    assert r["crossover"] == crossover_from_ratios(r["fractions"], r["ratio"])
    with pytest.raises(ValueError, match="fractions"):
        measure_crossover(small_model, images, fractions=(0.0,))
    # the threshold only picks a compute path: outputs are the same whatever it is
    before = small_model.dense_threshold
    try:
        outputs = []
        for threshold in (None, 0.01, r["crossover"]):
            small_model.dense_threshold = threshold
            outputs.append(small_model.predict(images, verbose=0)["probs"])
        np.testing.assert_allclose(outputs[1], outputs[0], atol=1e-5)
        np.testing.assert_allclose(outputs[2], outputs[0], atol=1e-5)
        with pytest.raises(ValueError, match="dense_threshold"):
            small_model.dense_threshold = 1.5
    finally:
        small_model.dense_threshold = before

    model = build_model("tiny", num_classes=3, rho=0.6, ignore_class=3, **SMALL)
    path, saved = tmp_path / "m.keras", tmp_path / "calibrated.keras"
    model.save(path)
    main(["bench", str(path), "--crossover", "--height", "32", "--width", "32", "--repeats", "1",
          "--save", str(saved), "--json", str(tmp_path / "c.json")])
    assert "crossover" in capsys.readouterr().out
    crossover = json.loads((tmp_path / "c.json").read_text())["crossover"]
    assert keras.models.load_model(saved).dense_threshold == pytest.approx(crossover)
    with pytest.raises(SystemExit, match="--crossover"):
        main(["bench", str(path), "--save", str(saved)])
    with pytest.raises(SystemExit, match=".keras"):
        main(["bench", str(path), "--crossover", "--save", str(tmp_path / "x.h5")])
