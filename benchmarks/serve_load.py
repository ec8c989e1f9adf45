"""Load test of the real Triton server: N concurrent gRPC clients for a fixed time.

Reports throughput, p50/p99 latency and errors, overall and per requested ρ (each
request picks its ρ in turn from --rhos, so the per-ρ latencies are measured side by
side under the same load). Everything stays on 127.0.0.1 and stops by itself.

    python benchmarks/serve_load.py [MODEL.keras] [--clients 8] [--seconds 60] [--rhos 1.0 0.9]
                                    [--height 360 --width 480] [--json OUT]
"""

import argparse
import json
import os
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", nargs="?", default="runs/demo/model.keras")
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--seconds", type=float, default=60)
    p.add_argument("--rhos", type=float, nargs="+", default=[1.0, 0.9])
    p.add_argument("--height", type=int, default=360)
    p.add_argument("--width", type=int, default=480)
    p.add_argument("--instances", type=int, default=2, help="Triton model instances (CPU)")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)

    import keras

    import keras_lc  # noqa: F401
    from keras_lc.data import synthetic_arrays
    from keras_lc.serving import TritonClient, TritonServer, write_triton_repository

    if not Path(args.model).is_file():
        raise SystemExit(f"model not found: {args.model} (run `make demo` first, or pass a .keras file)")
    model = keras.models.load_model(args.model)
    images, _ = synthetic_arrays(4, args.height, args.width, model.num_classes, seed=1000)
    with tempfile.TemporaryDirectory() as repo:
        write_triton_repository(model, repo, "lc", 1, instances=args.instances)
        server = TritonServer(repo, http_port=_free_port(), grpc_port=_free_port())
        server.start(timeout_s=180)
        try:
            warm = TritonClient(f"127.0.0.1:{server.grpc_port}", "lc")
            for r in args.rhos:
                for _ in range(3):
                    warm.predict(images[:1], rho=r)
            results = []  # (rho, seconds, ok)
            lock = threading.Lock()
            deadline = time.time() + args.seconds

            def client_loop(k):
                client = TritonClient(f"127.0.0.1:{server.grpc_port}", "lc", timeout_s=60)
                i = k
                while time.time() < deadline:
                    rho = args.rhos[i % len(args.rhos)]
                    image = images[i % len(images)][None]
                    t = time.perf_counter()
                    try:
                        client.predict(image, rho=rho)
                        ok = True
                    except Exception:
                        ok = False
                    with lock:
                        results.append((rho, time.perf_counter() - t, ok))
                    i += 1

            threads = [threading.Thread(target=client_loop, args=(k,)) for k in range(args.clients)]
            start = time.time()
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            wall = time.time() - start
        finally:
            server.stop()

    def stats(rows):
        lat = np.array([s for _, s, ok in rows if ok]) * 1000
        return {
            "requests": len(rows),
            "errors": sum(1 for *_, ok in rows if not ok),
            "throughput_per_s": len(lat) / wall,
            "p50_ms": float(np.percentile(lat, 50)) if len(lat) else None,
            "p99_ms": float(np.percentile(lat, 99)) if len(lat) else None,
        }

    report = {
        "clients": args.clients,
        "seconds": wall,
        "image": [args.height, args.width],
        "instances": args.instances,
        "all": stats(results),
        "per_rho": {str(r): stats([row for row in results if row[0] == r]) for r in args.rhos},
    }
    print(f"{args.clients} clients, {wall:.0f} s, {args.height}x{args.width} images, {args.instances} instances")
    print("| requests | ρ | throughput (req/s) | p50 (ms) | p99 (ms) | p99/p50 | errors |")
    print("|---|---|---|---|---|---|---|")
    for name, s in [("all", report["all"]), *report["per_rho"].items()]:
        ratio = s["p99_ms"] / s["p50_ms"] if s["p50_ms"] else float("nan")
        print(
            f"| {s['requests']} | {name} | {s['throughput_per_s']:.2f} | {s['p50_ms']:.1f} | {s['p99_ms']:.1f} | "
            f"{ratio:.2f} | {s['errors']} |"
        )
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
